"""Batch scoring on Ray Data: list → read + decode (CPU tasks) → model (actor pool) → Parquet → `_SUCCESS`.

    manifest = score_run("s3://bucket/images/", "models/resnet18", "s3://bucket/predictions", run_id="nightly")

Stages: the inputs (`inputs.list_inputs`) are split into blocks by the data layer's `manifest_dataset`;
`decode.decode_batch` reads each block's files (byte-capped, concurrent on S3), hashes them, drops the ones
a resumed run already has, decodes them safely and cuts each model's uint8 views (its card's view policy:
native-resolution tiles, or the legacy resize + crop; `score.views` overrides the mode) in plain CPU tasks; the
`predictor.Predictor` actors (`ActorPoolStrategy(min_size, max_size)`, fractional `num_cpus` so reads are
never starved, `num_gpus` when the cluster has GPUs, explicit `batch_size`) normalise, predict and decide;
`write_parquet` writes one file per block under `OUTPUT/run=<run_id>/`. Then `results.consolidate` leaves
exactly one row per input and `_SUCCESS` (JSON with counts) is written last.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pandas as pd
import pyarrow as pa

from raydetect import storage
from raydetect.config import Settings, load_settings
from raydetect.data.images import DecodeLimits, decodes_on_model
from raydetect.models.bundle import ModelCard, load_card, resolved_precision
from raydetect.models.views import ViewPolicy
from raydetect.score import results
from raydetect.score.decision import combine_cards, normalized_weights
from raydetect.score.decode import DONE_SHA, decode_batch
from raydetect.score.inputs import list_inputs
from raydetect.score.predictor import Loader, Predictor, output_schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """The models of a run: URIs, normalised weights, their cards and the combined decision card."""

    uris: list[str]
    weights: list[float]
    cards: list[ModelCard]
    card: ModelCard

    def policies(self, view_mode: str | None = None) -> list[ViewPolicy]:
        """The distinct view policies of the members (the first member's first), `view_mode` applied."""
        out: list[ViewPolicy] = []
        for card in self.cards:
            policy = card.view_policy.with_mode(view_mode)
            if policy not in out:
                out.append(policy)
        return out


def parse_models(
    model: str | Sequence[str] | None,
    weights: str | Sequence[float] | None = None,
    card_loader: Callable[[str], ModelCard] | None = None,
    settings: Settings | None = None,
) -> ModelSpec:
    """`"a,b"` (or a list) and `"2,1"` (or a list) -> a ModelSpec; cards are read (`load_card` with the
    settings' storage by default), weights are not loaded. Each model is a directory or a registry reference
    (`registry.resolve_model_uri`); None: the default."""
    from raydetect.registry import resolve_model_uri

    refs = [None] if model is None else [m for m in (model.split(",") if isinstance(model, str) else model)
                                         if str(m).strip()]  # fmt: skip
    if not refs:
        raise ValueError("--model: at least one model is needed")
    if isinstance(weights, str):
        weights = [float(w) for w in weights.split(",") if w.strip()]
    uris = [resolve_model_uri(None if r is None else str(r), settings) for r in refs]
    w = normalized_weights(list(weights) if weights is not None else None, len(uris))
    card_loader = card_loader or partial(load_card, storage_settings=settings.storage if settings else None)
    cards = [card_loader(u) for u in uris]
    return ModelSpec(uris, w, cards, combine_cards(cards, w))


def parse_actors(text: str | None, settings: Settings) -> tuple[int, int]:
    """`"MIN:MAX"` or `"N"` -> (min, max); None -> the config's score.min_actors / max_actors."""
    if not text:
        return settings.score.min_actors, settings.score.max_actors
    lo, _, hi = str(text).partition(":")
    low, high = int(lo), int(hi or lo)
    if low < 1 or high < low:
        raise ValueError(f"--actors {text!r}: need 1 <= MIN <= MAX")
    return low, high


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def actor_gpus(settings: Settings, num_gpus: float | None = None) -> float:
    """GPUs per model actor: `score.actor_num_gpus` when the cluster (or `num_gpus`) has GPUs, else 0."""
    gpus = cluster_gpus() if num_gpus is None else num_gpus
    return settings.score.actor_num_gpus if gpus > 0 else 0.0


def only_node_is_this_one() -> bool:
    """True when the cluster is a single node and this driver runs on it (a local `raydetect score`)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()


def actor_precision(settings: Settings, num_gpus: float | None = None) -> str:
    """`settings.precision` as the model actors resolve it: in a task on an actor's device, so the summary
    records what the actors run rather than what the driver's own CPU (or lack of GPU) would pick. CPU actors
    on the driver's own single-node cluster run on this CPU: resolved here, without starting a worker (about
    2.5 s of each local run on 2 cores)."""
    import ray

    gpus = actor_gpus(settings, num_gpus)
    if not gpus and settings.device in ("auto", "cpu") and only_node_is_this_one():
        return resolved_precision("cpu", settings.precision)
    probe = ray.remote(resolved_precision).options(
        num_cpus=settings.score.actor_num_cpus, num_gpus=gpus
    )
    return ray.get(probe.remote(settings.device, settings.precision))


def preprocess_on(settings: Settings, per_actor_gpus: float) -> str:
    """Where JPEGs are decoded and cut into views (`score.preprocess_on`): `cpu` or `model`."""
    return "model" if decodes_on_model(settings.score.preprocess_on, per_actor_gpus) else "cpu"


def carried_schema(inputs: pd.DataFrame) -> pa.Schema:
    return pa.Schema.from_pandas(inputs.drop(columns=[DONE_SHA], errors="ignore"), preserve_index=False)


def build_dataset(
    inputs: pd.DataFrame,
    spec: ModelSpec,
    settings: Settings,
    batch_size: int,
    actors: tuple[int, int],
    loader: Loader | None = None,
    num_gpus: float | None = None,
):
    """The lazy Ray dataset of prediction rows for `inputs` (a DataFrame with `path`, optional `_done_sha`,
    and carried columns)."""
    import ray

    from raydetect.data.ray_io import manifest_dataset

    sc = settings.score
    per_actor_gpus = actor_gpus(settings, num_gpus)
    schema = output_schema(carried_schema(inputs))
    ds = manifest_dataset(inputs, rows_per_block=sc.read_block_rows)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "policies": spec.policies(sc.views),
            "limits": DecodeLimits.from_settings(settings.images),
            "storage_settings": settings.storage,
            "defer_jpeg": preprocess_on(settings, per_actor_gpus) == "model",
        },
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=sc.decode_num_cpus,
    )
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "members": spec.uris,
            "weights": spec.weights,
            "loader": loader,
            "storage_settings": settings.storage,
            "device": settings.device,
            "precision": settings.precision,
            "num_threads": sc.torch_threads,
            "pool_size": actors[1],
            "schema": schema,
            "view_mode": sc.views,
            "max_batch": sc.forward_batch,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
        num_cpus=sc.actor_num_cpus,
        num_gpus=per_actor_gpus or None,
    )


def _counts(rows: pd.DataFrame) -> dict[str, int]:
    decisions = rows["decision"].value_counts() if len(rows) else pd.Series(dtype=int)
    return {
        "rows": len(rows),
        "scored": int(rows["error"].isna().sum()) if len(rows) else 0,
        "errors": int(rows["error"].notna().sum()) if len(rows) else 0,
        "real": int(decisions.get("real", 0)),
        "ai": int(decisions.get("ai", 0)),
        "review": int(decisions.get("review", 0)),
    }


def _error_reasons(rows: pd.DataFrame) -> dict[str, int]:
    if not len(rows):
        return {}
    errors = rows["error"].dropna().astype(str)
    return {str(k): int(v) for k, v in errors.str.split(":", n=1).str[0].value_counts().items()}


def score_run(
    input_uri: str,
    model: str | Sequence[str] | None,
    output: str,
    run_id: str | None = None,
    *,
    weights: str | Sequence[float] | None = None,
    batch_size: int | None = None,
    actors: str | tuple[int, int] | None = None,
    split: str = "auto",
    settings: Settings | None = None,
    loader: Loader | None = None,
    card_loader: Callable[[str], ModelCard] | None = None,
    num_gpus: float | None = None,
) -> dict[str, Any]:
    """Score `input_uri` into `output`/run=`run_id`/ and return the `_SUCCESS` manifest (also written).

    Re-running with the same `run_id` scores only inputs without a row for their (path, sha256, model name,
    model version), and the run ends with exactly one row per input. `loader` (URI -> detector) replaces
    `bundle.load_detector` in the actors; `card_loader` reads cards on the driver. Ray must be initialised (the CLI
    and the job do it); the driver does no model work."""
    import ray

    settings = settings or load_settings()
    sset = settings.storage
    spec = parse_models(model, weights, card_loader, settings)
    actor_range = actors if isinstance(actors, tuple) else parse_actors(actors, settings)
    batch = batch_size or settings.score.batch_size
    run_id = run_id or results.default_run_id()
    run = results.run_uri(output, run_id)
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()

    inputs = list_inputs(input_uri, split, settings)
    storage.makedirs(run, sset)
    results.remove_success(run, sset)
    existing, broken = results.read_rows(run, results.KEY_COLUMNS, sset)
    results.delete_parts(broken, run, sset)
    done = results.done_shas(existing, spec.card.name, str(spec.card.version))
    inputs[DONE_SHA] = inputs["path"].map(done).fillna("").astype("string")
    before = set(results.list_parts(run, sset))
    reusable = int(inputs[DONE_SHA].ne("").sum())
    log.info("scoring %d inputs (%d may be reused) into %s", len(inputs), reusable, run)

    per_actor_gpus = actor_gpus(settings, num_gpus)  # asks the cluster once; the same answer below
    precision = actor_precision(settings, per_actor_gpus)
    fs, path = storage.pyarrow_fs(run, sset)
    t_pipeline = time.perf_counter()
    ds = build_dataset(inputs, spec, settings, batch, actor_range, loader=loader, num_gpus=per_actor_gpus)
    ds.write_parquet(
        path,
        filesystem=fs,
        min_rows_per_file=settings.score.rows_per_file,
        ray_remote_args={"num_cpus": settings.score.write_num_cpus},
    )
    pipeline_s = time.perf_counter() - t_pipeline

    new_parts = [p for p in results.list_parts(run, sset) if p not in before]
    written_now = results.count_rows(new_parts, run, sset)
    final, fixes = results.consolidate(run, set(inputs["path"]), sset)
    counts = _counts(final)
    duplicates = int(final["path"].duplicated().sum()) if len(final) else 0
    missing = len(inputs) - final["path"].nunique() if len(final) else len(inputs)
    elapsed = time.perf_counter() - t0
    manifest = {
        "run_id": run_id,
        "output": run,
        "input": storage.normalize(input_uri),
        "split": split,
        "model_name": spec.card.name,
        "model_version": str(spec.card.version),
        "threshold": spec.card.threshold,
        "review_band": list(spec.card.review_band),
        "calibration": spec.card.calibration,  # temperature + rule of a single model's card (None: T = 1)
        "models": [
            {"uri": u, "name": c.name, "version": str(c.version), "backbone": c.backbone, "weight": w}
            for u, c, w in zip(spec.uris, spec.cards, spec.weights, strict=True)
        ],
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "elapsed_s": round(elapsed, 3),
        "pipeline_s": round(pipeline_s, 3),
        "throughput_images_per_s": round(written_now / pipeline_s, 2) if pipeline_s > 0 else None,
        "batch_size": batch,
        "actors": list(actor_range),
        "views": [p.to_dict() for p in spec.policies(settings.score.views)],
        "precision": precision,
        "precision_setting": settings.precision,
        "preprocess_on": preprocess_on(settings, per_actor_gpus),
        "ray": {"cluster_cpus": ray.cluster_resources().get("CPU", 0), "cluster_gpus": cluster_gpus()},
        "counts": {
            "inputs": len(inputs),
            **counts,
            "scored_this_run": written_now,
            "reused": counts["rows"] - min(written_now, counts["rows"]),
            "duplicates": duplicates,
            "missing": missing,
            **fixes,
        },
        "error_reasons": _error_reasons(final),
        "files": sorted(p.rsplit("/", 1)[-1] for p in results.list_parts(run, sset)),
    }
    if duplicates or missing:
        raise RuntimeError(f"run {run_id} is incomplete ({missing} missing, {duplicates} duplicated rows)")
    storage.write_text(storage.join(run, results.SUMMARY), json.dumps(summarize(manifest), indent=2), sset)
    results.write_success(run, manifest, sset)  # last: its presence means the run is complete
    return manifest


def summarize(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run summary a person or a monitor reads: counts, share of ai / review, throughput, errors."""
    counts = manifest["counts"]
    scored = max(1, counts["scored"])
    return {
        "run_id": manifest["run_id"],
        "output": manifest["output"],
        "model": f"{manifest['model_name']}@{manifest['model_version']}",
        "inputs": counts["inputs"],
        "rows": counts["rows"],
        "scored": counts["scored"],
        "scored_this_run": counts["scored_this_run"],
        "reused": counts["reused"],
        "errors": counts["errors"],
        "error_reasons": manifest.get("error_reasons", {}),
        "precision": manifest.get("precision"),
        "preprocess_on": manifest.get("preprocess_on"),
        "decisions": {k: counts[k] for k in ("real", "ai", "review")},
        "share_ai": round(counts["ai"] / scored, 4) if counts["scored"] else None,
        "share_review": round(counts["review"] / scored, 4) if counts["scored"] else None,
        "elapsed_s": manifest["elapsed_s"],
        "throughput_images_per_s": manifest["throughput_images_per_s"],
        "finished_at": manifest["finished_at"],
    }
