"""Linear probes on frozen backbone features: the UnivFD recipe (Ojha et al., CVPR 2023) as a training recipe.

`raydetect train ROOT --recipe probe --backbone clip_vit_b16 --cv 5`:
1. features: every labelled image is cut into its views by the model's view policy (the scoring pipeline's
   own decode stage, `score.decode.decode_batch`) and run once through the frozen backbone on Ray Data
   (`FeatureExtractor` actors); a view's feature is what enters the backbone's classification head, an
   image's feature the mean over its views. Cached under <workdir>/features/ (keyed by backbone, weights,
   input filter, view policy, precision and the files' sha256), so other probe settings reuse them. The
   forward pass runs at `precision` resolved for a CPU (bf16 autocast where the CPU has native bf16), as
   the exported model is scored.
2. per fold: scikit-learn `StandardScaler` + `LogisticRegression(C=train.probe_c)` fitted on the training
   folds, scored on the held-out fold (the same grouped folds as fine-tuning, the same metrics table).
3. the model: the probe of the best fold, folded into the backbone's own head (scaler and logistic
   regression are one affine map), saved as an ordinary model directory, so score, Serve, evaluate and
   Grad-CAM load it like any other; calibrated on that fold's held-out logits (`calibration:` settings).
   Averaging view features and averaging view logits agree for a linear head, so the probe needs the
   `mean` view aggregation.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from raydetect import storage
from raydetect.config import Settings
from raydetect.evaluate.calibration import calibrate_with
from raydetect.models.backbones import build_backbone, default_normalization, head_module
from raydetect.models.precision import autocast, resolve_precision
from raydetect.models.views import ViewPolicy, map_views, normalize, read_views, sigmoid

FEATURE_COLUMN = "features"


# --- the core (no Ray) --------------------------------------------------------------------------------------


@torch.inference_mode()
def head_inputs(
    model: nn.Module, views: np.ndarray, mean: Sequence[float], std: Sequence[float], precision: str = "fp32"
) -> np.ndarray:
    """What the model's classification head receives for each uint8 NHWC view: (N, D) float32; the forward
    pass under `precision`'s autocast (a resolved precision, models/precision.py), as scoring runs it."""
    head = head_module(model)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear classification head to probe")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        x = normalize(views, mean, std, device).contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            model(x)
    finally:
        handle.remove()
    return captured[0].float().reshape(len(views), -1).cpu().numpy()


def image_features(
    model: nn.Module, images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], max_batch: int = 32,
    precision: str = "fp32",
) -> np.ndarray:
    """One feature vector per image: the mean of its views' head inputs."""
    per_view = map_views(lambda v: head_inputs(model, v, mean, std, precision), images, max_batch)
    return np.stack([f.mean(axis=0) for f in per_view]).astype(np.float32)


def fit_probe(features: np.ndarray, labels: np.ndarray, c: float, seed: int = 0):
    """StandardScaler + LogisticRegression, fitted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    return probe.fit(features, labels.astype(int))


def affine(probe) -> tuple[np.ndarray, float]:
    """The fitted probe as one affine map of the raw features: logit = w . x + b."""
    scaler, logistic = probe[0], probe[-1]
    w = logistic.coef_.reshape(-1) / scaler.scale_
    b = float(logistic.intercept_[0] - np.dot(w, scaler.mean_))
    return w, b


def set_head(model: nn.Module, weight: np.ndarray, bias: float) -> nn.Module:
    """Write the probe into the model's (one-logit, linear) classification head."""
    head = head_module(model)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype).reshape_as(head.weight))
        head.bias.fill_(bias)
    return model


# --- features on Ray Data ---------------------------------------------------------------------------------


class FeatureExtractor:
    """`map_batches` callable: the decode stage's views -> `features` (list<float32>), per row."""

    def __init__(self, backbone: str, weights: str, input_filter: str, policy: dict, threads: int = 1,
                 precision: str = "fp32"):
        torch.set_num_threads(max(1, threads))
        self.model = build_backbone(backbone, weights, input_filter).eval().to(memory_format=torch.channels_last)
        self.precision = precision
        self.mean, self.std = default_normalization(backbone)
        self.policy = ViewPolicy(**policy)

    def __call__(self, table: pa.Table) -> pa.Table:
        errors = table.column("error").to_pylist()
        views = read_views(table, self.policy)
        ok = [i for i, e in enumerate(errors) if e is None]
        feats = image_features(
            self.model, [views[i] for i in ok], self.mean, self.std, precision=self.precision) if ok else None
        rows: list[list[float] | None] = [None] * table.num_rows
        for k, i in enumerate(ok):
            rows[i] = feats[k].tolist()
        keep = table.select(["path", "sha256", "error"])
        return keep.append_column(FEATURE_COLUMN, pa.array(rows, type=pa.list_(pa.float32())))


def extraction_precision(settings: Settings) -> str:
    """The precision the features are extracted at: `precision` resolved for the CPU actors, the same
    resolution the exported model gets when it is scored on a CPU."""
    return resolve_precision(settings.precision, "cpu")


def _cache_uri(settings: Settings, policy: ViewPolicy, paths: Sequence[str]) -> str:
    t = settings.train
    digest = hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:16]
    name = (f"{t.backbone}-{t.weights.replace('/', '_')}-{t.input_filter}-{policy.key}-"
            f"{extraction_precision(settings)}-{digest}.parquet")
    return str(settings.workdir_path / "features" / name)


def extract_features(df: pd.DataFrame, settings: Settings, policy: ViewPolicy) -> pd.DataFrame:
    """`path, sha256, error, features` for every row of `df` (cached per backbone, policy and file list)."""
    import pyarrow.parquet as pq
    import ray

    from raydetect.data.images import DecodeLimits
    from raydetect.data.ray_io import manifest_dataset
    from raydetect.score.decode import decode_batch

    cache = _cache_uri(settings, policy, df["path"].tolist())
    if storage.exists(cache):
        return pq.read_table(cache).to_pandas()
    t, sc = settings.train, settings.score
    ds = manifest_dataset(df[["path"]], rows_per_block=sc.read_block_rows).map_batches(
        decode_batch,
        fn_kwargs={"policies": [policy], "limits": DecodeLimits.from_settings(settings.images),
                   "storage_settings": settings.storage},
        batch_size=None, batch_format="pyarrow", num_cpus=sc.decode_num_cpus,
    )  # fmt: skip
    ds = ds.map_batches(
        FeatureExtractor,
        fn_constructor_kwargs={"backbone": t.backbone, "weights": t.weights, "input_filter": t.input_filter,
                               "policy": policy.to_dict(), "threads": t.torch_threads or _threads(sc.max_actors),
                               "precision": extraction_precision(settings)},
        batch_size=sc.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=sc.max_actors), num_cpus=sc.actor_num_cpus,
    )  # fmt: skip
    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    storage.makedirs(cache.rsplit("/", 1)[0])
    pq.write_table(table.replace_schema_metadata(None), cache)
    return table.to_pandas()


def _threads(actors: int) -> int:
    import os

    return max(1, (os.cpu_count() or 1) // max(1, actors))


# --- cross-validation and export -----------------------------------------------------------------------------


def probe_folds(
    assigned: pd.DataFrame, features: pd.DataFrame, c: float, seed: int, leave_out: str | None = None
) -> list[dict[str, Any]]:
    """Fit and score one probe per fold; rows that could not be decoded count for nothing. `leave_out`: a
    generator never trained on (`cv.held_out`: validation on the real images and that generator's only)."""
    from raydetect.train.cv import held_out
    from raydetect.train.loop import classification_metrics

    frame = assigned.merge(features[["path", FEATURE_COLUMN]], on="path", how="left")
    frame = frame[frame[FEATURE_COLUMN].notna()].reset_index(drop=True)
    x = np.stack(frame[FEATURE_COLUMN].to_numpy()).astype(np.float32)
    y = frame["label"].astype(int).to_numpy()
    out = []
    for fold in sorted(f for f in frame["fold"].unique() if f >= 0):  # -1: trained on, never validated
        start = time.perf_counter()
        train, val = held_out(frame["fold"] != fold, frame["fold"] == fold, frame, leave_out)
        train, val = train.to_numpy(), val.to_numpy()
        probe = fit_probe(x[train], y[train], c, seed)
        logits = probe.decision_function(x[val])
        probs = sigmoid(logits)  # = predict_proba(...)[:, 1] for a binary logistic regression
        eps = 1e-7
        loss = float(np.mean(-(y[val] * np.log(probs + eps) + (1 - y[val]) * np.log(1 - probs + eps))))
        metrics = {f"val_{k}": float(v) for k, v in classification_metrics(y[val], probs).items()}
        out.append({"fold": int(fold), "probe": probe, "metrics": {"val_loss": loss, **metrics},
                    "n_train": int(train.sum()), "n_val": int(val.sum()), "wall_s": time.perf_counter() - start,
                    "labels": y[val], "logits": logits,
                    "predictions": pd.DataFrame({"path": frame["path"].to_numpy()[val], "label": y[val],
                                                 "logit": logits.astype(float)})})
    return out


def _assigned_features(df: pd.DataFrame, settings: Settings, k: int, folds: list[int] | None):
    """(fold assignment, features, view policy); folds not asked for are -1 (trained on, never validated)."""
    from raydetect.train.cv import fold_assignment
    from raydetect.train.trainer import labelled_rows, view_policy

    policy = view_policy(settings)
    if policy.aggregate != "mean":
        raise ValueError("the probe recipe needs images.views.aggregate=mean (it averages view features)")
    assigned = fold_assignment(labelled_rows(df), k, settings, root=df.attrs.get("root"))
    if folds is not None:
        assigned = assigned.assign(fold=np.where(assigned["fold"].isin(folds), assigned["fold"], -1))
    return assigned, extract_features(assigned, settings, policy), policy


def _fold_results(assigned: pd.DataFrame, features: pd.DataFrame, settings: Settings, leave_out: str | None = None):
    """`probe_folds` of the validated folds, each calibrated on its own held-out logits."""
    results = probe_folds(assigned, features, settings.train.probe_c, settings.seed, leave_out)
    for r in results:
        fitted = calibrate_with(r["logits"], r["labels"], settings.calibration, f"validation fold {r['fold']}")
        r["calibration"] = fitted if settings.calibration.enabled else None
    return results


def _fold_runs(results: list[dict[str, Any]], name: str, settings: Settings) -> list:
    from raydetect.train.trainer import FoldRun

    c = settings.train.probe_c
    return [
        FoldRun(name=f"{name}-fold{r['fold']}", fold=r["fold"], path="", checkpoint_uri=None, best_epoch=1,
                best_metrics=r["metrics"], history=[r["metrics"]], n_train=r["n_train"], n_val=r["n_val"],
                wall_s=r["wall_s"], params={"recipe": "probe", "probe_c": c}, calibration=r["calibration"],
                predictions=r["predictions"])
        for r in results
    ]  # fmt: skip


def probe_leave_out(df: pd.DataFrame, settings: Settings, k: int, folds: list[int] | None,
                    generators: list[str], name: str) -> dict[str, list]:  # fmt: skip
    """Leave-one-generator-out with the probe: per generator, the folds' runs never trained on its AI images
    (one feature extraction, cached, for them all)."""
    assigned, features, _ = _assigned_features(df, settings, k, folds)
    return {g: _fold_runs(_fold_results(assigned, features, settings, g), f"{name}-no-{g}", settings)
            for g in generators}  # fmt: skip


def train_probe(df: pd.DataFrame, settings: Settings, k: int, folds: list[int] | None, name: str, output: str | None):
    """The probe recipe of `raydetect train` (see the module docstring); returns a `TrainOutcome`."""
    from raydetect.models.bundle import ModelCard, save_model
    from raydetect.train.cv import TrainOutcome, cv_table, out_of_fold

    start = time.perf_counter()
    t = settings.train
    assigned, features, policy = _assigned_features(df, settings, k, folds)
    results = _fold_results(assigned, features, settings)
    runs = _fold_runs(results, name, settings)
    predictions = out_of_fold(runs, assigned)
    f1s = [run.f1 for run in runs]
    best = results[int(np.nanargmax(f1s))]
    model = set_head(build_backbone(t.backbone, t.weights, t.input_filter).eval(), *affine(best["probe"]))
    mean, std = default_normalization(t.backbone)
    cv_metrics = {"cv_f1_mean": statistics.fmean(f1s), "cv_f1_std": statistics.pstdev(f1s) if len(f1s) > 1 else 0.0,
                  "cv_folds": float(len(runs))}  # fmt: skip
    card = ModelCard(
        backbone=t.backbone, name=t.model_name, input_filter=t.input_filter, version=name,
        image_size=policy.size, mean=list(mean), std=list(std), views=policy.to_dict(),
        metrics={**best["metrics"], **cv_metrics},
        params={"recipe": "probe", "probe_c": t.probe_c, "weights": t.weights, "fold": best["fold"],
                "seed": settings.seed},
    )  # fmt: skip
    if best["calibration"]:
        card = card.calibrated(best["calibration"])
    model_uri = save_model(model, card, output or str(settings.workdir_path / "models" / name), settings.storage)
    return TrainOutcome(runs=runs, table=cv_table(runs), folds=assigned, model_uri=model_uri, best_fold=best["fold"],
                        f1_mean=cv_metrics["cv_f1_mean"], f1_std=cv_metrics["cv_f1_std"],
                        wall_s=time.perf_counter() - start, predictions=predictions)  # fmt: skip
