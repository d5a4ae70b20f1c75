"""The model stage of batch scoring: a callable class for `Dataset.map_batches(compute=ActorPoolStrategy)`.

Each actor loads its model(s) once, through a `loader` given to its constructor (default
`Detector.load`; tests pass their own), sets its torch thread count (Ray sets OMP_NUM_THREADS to the actor's
fractional num_cpus, which would otherwise mean one thread), normalises the uint8 crops of the CPU stage on
the model's device, averages the weighted P(AI) of an ensemble's members, and decides with the (combined)
model card. Rows whose decoding failed are not sent to the model: they come out with `error` set and null
`prob_ai` / `decision`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from raydetect.models.bundle import Detector, ModelCard
from raydetect.score.decision import combine_cards, decide_all, normalized_weights
from raydetect.score.decode import ERROR, IMAGE_PREFIX, image_column

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
    ]
)
CONTRACT_COLUMNS = tuple(CONTRACT_SCHEMA.names)


class DetectorLike(Protocol):
    card: ModelCard

    def predict(self, batch: np.ndarray | torch.Tensor) -> np.ndarray: ...


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


def normalize_batch(
    images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 NHWC crops -> float32 NCHW, `(x / 255 - mean) / std` on `device`: the arithmetic of
    `transforms.preprocess`, so the tensors are bit-identical to it on CPU."""
    x = torch.as_tensor(images).to(device, non_blocking=True).to(torch.float32) / 255.0
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    return ((x - m) / s).permute(0, 3, 1, 2).contiguous()


def tensor_column(table: pa.Table, name: str) -> np.ndarray:
    """A Ray tensor column of a pyarrow batch as one ndarray (zero-copy when it is one chunk)."""
    chunks = [c.to_numpy() for c in table.column(name).chunks]
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks) if chunks else np.zeros((0,), dtype=np.uint8)


class Predictor:
    """`map_batches(Predictor, batch_format="pyarrow", compute=ActorPoolStrategy(...), fn_constructor_kwargs=...)`.

    members: model URIs; weights: one per member (None = equal); loader: URI -> detector (has `.card` and
    `.predict(NCHW float) -> P(AI)`), default `Detector.load(uri, device, precision)`; precision: the setting
    (auto | fp32 | bf16 | fp16) the default loader passes on; num_threads: torch threads
    (0 = this node's cores / pool_size, the actor pool's maximum size); schema: the output schema (from
    `output_schema`), so every block has the same types.
    """

    def __init__(
        self,
        members: Sequence[str],
        weights: Sequence[float] | None = None,
        loader: Loader | None = None,
        device: str = "auto",
        precision: str = "auto",
        num_threads: int = 0,
        schema: pa.Schema | None = None,
        pool_size: int = 1,
    ):
        torch.set_num_threads(num_threads if num_threads > 0 else auto_threads(pool_size))
        loader = loader or partial(Detector.load, device=device, precision=precision)
        self.detectors = [loader(uri) for uri in members]
        self.weights = normalized_weights(weights, len(self.detectors))
        self.card = combine_cards([d.card for d in self.detectors], self.weights)
        self.schema = schema

    def probabilities(self, table: pa.Table) -> np.ndarray:
        """Weighted P(AI) for the rows without an error; NaN for the others."""
        n = table.num_rows
        errors = table.column(ERROR).to_pylist() if ERROR in table.column_names else [None] * n
        valid = np.array([e is None for e in errors], dtype=bool)
        probs = np.full(n, np.nan, dtype=np.float64)
        if not valid.any():
            return probs
        total = np.zeros(int(valid.sum()), dtype=np.float64)
        cache: dict[int, np.ndarray] = {}
        for detector, weight in zip(self.detectors, self.weights, strict=True):
            card = detector.card
            if card.image_size not in cache:
                cache[card.image_size] = tensor_column(table, image_column(card.image_size))[valid]
            device = getattr(detector, "device", "cpu")
            x = normalize_batch(cache[card.image_size], card.mean, card.std, device)
            total += weight * np.asarray(detector.predict(x), dtype=np.float64).reshape(-1)
        probs[valid] = total
        return probs

    def __call__(self, table: pa.Table) -> pa.Table:
        probs = self.probabilities(table)
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
        base = table.drop_columns([c for c in table.column_names if c.startswith(IMAGE_PREFIX)])
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
