"""The model stage of batch scoring: a callable class for `Dataset.map_batches(compute=ActorPoolStrategy)`.

Each actor loads its model(s) once, through a `loader` given to its constructor (default
`bundle.load_detector`: a CNN `Detector` or a `DireDetector`, by the card's kind, so a DIRE actor computes
each view's reconstruction-error map and classifies it; tests pass their own), sets its torch thread
count (Ray sets OMP_NUM_THREADS to the actor's
fractional num_cpus, which would otherwise mean one thread), scores each image from the uint8 views the CPU
stage made with the member's view policy (`Detector.predict_images`: normalised on the model's device,
packed into forward passes of at most `batch_size` views of one shape, the views' logits aggregated by the
policy), averages the weighted P(AI) of an ensemble's members, and decides with the (combined) model card.
Rows whose decoding failed are not sent to the model: they come out with `error` set and null `prob_ai` /
`decision`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from raydetect.config import StorageSettings
from raydetect.data.images import decode_jpegs
from raydetect.models.bundle import ModelCard, load_detector
from raydetect.models.views import VIEWS_PREFIX, ViewPolicy, device_views, read_views
from raydetect.score.decision import combine_cards, decide_all, normalized_weights
from raydetect.score.decode import ERROR, HEIGHT, JPEG, VIEWS, WIDTH

# The output contract (DESIGN §3), in this order; columns carried from the manifest follow.
CONTRACT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("prob_ai", pa.float64()),
        ("decision", pa.string()),
        ("threshold", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("views", pa.int32()),
    ]
)
CONTRACT_COLUMNS = tuple(CONTRACT_SCHEMA.names)


class DetectorLike(Protocol):
    card: ModelCard
    policy: ViewPolicy

    def predict_images(self, images: list[np.ndarray], max_batch: int | None = None) -> np.ndarray: ...


Loader = Callable[[str], DetectorLike]


def output_schema(carried: pa.Schema | None = None) -> pa.Schema:
    """The contract's columns, then the manifest's carried columns (never one that shadows the contract)."""
    fields = list(CONTRACT_SCHEMA)
    for f in carried or []:
        if f.name not in CONTRACT_COLUMNS and not f.name.startswith("_"):
            fields.append(f)
    return pa.schema(fields)


def auto_threads(max_actors: int, cpu_count: int | None = None) -> int:
    """Torch threads per actor: the node's cores shared by the pool's actors. Actors reserve only a fraction
    of a CPU (so read tasks are never starved), and Ray then sets one thread, which leaves cores idle."""
    import os

    return max(1, (cpu_count or os.cpu_count() or 1) // max(1, max_actors))


class Predictor:
    """`map_batches(Predictor, batch_format="pyarrow", compute=ActorPoolStrategy(...), fn_constructor_kwargs=...)`.

    members: model URIs; weights: one per member (None = equal); loader: URI -> detector (has `.card`,
    `.policy` and `.predict_images(views) -> P(AI)`), default `load_detector(uri, device, view_mode,
    precision, storage_settings)`; storage_settings: the config's `storage:` (as the decode stage's); view_mode:
    None (each card's policy), `native` or `resize`; precision: the setting (auto | fp32 | bf16 | fp16) the
    default loader passes on; num_threads: torch threads (0 = this node's cores /
    pool_size, the actor pool's maximum size); max_batch: views per forward pass (None: the detector's
    `forward_batch`, by device); schema: the output schema
    (from `output_schema`), so every block has the same types.
    """

    def __init__(
        self,
        members: Sequence[str],
        weights: Sequence[float] | None = None,
        loader: Loader | None = None,
        storage_settings: StorageSettings | None = None,
        device: str = "auto",
        precision: str = "auto",
        num_threads: int = 0,
        schema: pa.Schema | None = None,
        pool_size: int = 1,
        view_mode: str | None = None,
        max_batch: int | None = None,
    ):
        torch.set_num_threads(num_threads if num_threads > 0 else auto_threads(pool_size))
        loader = loader or partial(load_detector, device=device, view_mode=view_mode, precision=precision,
                                   storage_settings=storage_settings)
        self.max_batch = max_batch
        self.detectors = [loader(uri) for uri in members]
        self.weights = normalized_weights(weights, len(self.detectors))
        self.card = combine_cards([d.card for d in self.detectors], self.weights)
        self.schema = schema

    def device_images(self, table: pa.Table) -> tuple[dict[int, Any], dict[int, str]]:
        """The rows whose JPEG the CPU stage left to this actor (`score.preprocess_on`), decoded on the
        model's device: (3, H, W) uint8 tensors by row, and the error of each row whose JPEG failed."""
        if JPEG not in table.column_names:
            return {}, {}
        blobs = table.column(JPEG).to_pylist()
        errors = table.column(ERROR).to_pylist()
        rows = [i for i, b in enumerate(blobs) if b and errors[i] is None]
        if not rows:
            return {}, {}
        sizes = [(table.column(WIDTH)[i].as_py(), table.column(HEIGHT)[i].as_py()) for i in rows]
        device = getattr(self.detectors[0], "device", "cpu")
        decoded = dict(zip(rows, decode_jpegs([blobs[i] for i in rows], sizes, device), strict=True))
        failed = {i: image for i, image in decoded.items() if isinstance(image, str)}
        return {i: image for i, image in decoded.items() if i not in failed}, failed

    def probabilities(
        self, table: pa.Table, on_device: dict[int, Any] | None = None, failed: dict[int, str] | None = None
    ) -> np.ndarray:
        """Weighted P(AI) for the rows without an error (NaN for the others). `on_device` / `failed`: what
        `device_images` gave for this table (computed here when not given)."""
        if on_device is None or failed is None:
            on_device, failed = self.device_images(table)
        n = table.num_rows
        errors = table.column(ERROR).to_pylist() if ERROR in table.column_names else [None] * n
        valid = np.array([e is None and i not in failed for i, e in enumerate(errors)], dtype=bool)
        probs = np.full(n, np.nan, dtype=np.float64)
        if not valid.any():
            return probs
        total = np.zeros(int(valid.sum()), dtype=np.float64)
        rows = np.flatnonzero(valid)
        for detector, weight in zip(self.detectors, self.weights, strict=True):
            views = read_views(table, detector.policy)
            images = [device_views(detector, on_device[i]) if i in on_device else views[i] for i in rows]
            p = detector.predict_images(images, self.max_batch)
            total += weight * np.asarray(p, dtype=np.float64).reshape(-1)
        probs[valid] = total
        return probs

    def __call__(self, table: pa.Table) -> pa.Table:
        on_device, failed = self.device_images(table)
        probs = self.probabilities(table, on_device, failed)
        n = table.num_rows
        now = datetime.now(UTC)
        columns: dict[str, Any] = {
            "prob_ai": pa.array(probs, type=pa.float64(), from_pandas=True),  # NaN -> null
            "decision": pa.array(decide_all(self.card, probs), type=pa.string()),
            "threshold": pa.array([float(self.card.threshold)] * n, type=pa.float64()),
            "model_name": pa.array([self.card.name] * n, type=pa.string()),
            "model_version": pa.array([str(self.card.version)] * n, type=pa.string()),
            "scored_at": pa.array([now] * n, type=pa.timestamp("us", tz="UTC")),
        }
        if failed:  # a JPEG this actor could not decode: its error, and no size or views, like the CPU stage's rows
            columns[ERROR] = pa.array([failed.get(i, e) for i, e in enumerate(table.column(ERROR).to_pylist())],
                                      type=pa.string())  # fmt: skip
            for name in (WIDTH, HEIGHT, VIEWS):
                values = table.column(name).to_pylist()
                columns[name] = pa.array([None if i in failed else v for i, v in enumerate(values)], type=pa.int32())
        base = table.drop_columns([c for c in table.column_names if c.startswith(VIEWS_PREFIX) or c == JPEG])
        schema = self.schema or output_schema(base.schema)
        arrays = []
        for field in schema:
            if field.name in columns:
                arrays.append(columns[field.name])
            elif field.name in base.column_names:
                arrays.append(base.column(field.name).cast(field.type))
            else:
                arrays.append(pa.nulls(n, type=field.type))
        return pa.Table.from_arrays(arrays, schema=schema)
