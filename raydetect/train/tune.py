"""Ray Tune sweeps, Train V2 style: each trial is a driver *function* that runs one `TorchTrainer` per fold
with `TuneReportCallback`, so every epoch's validation metrics reach Tune as they happen.

The objective is the mean cross-validated F1 (`objective`): each report carries the mean of the finished
folds' best F1 and the current fold's best so far, so ASHA can stop weak trials early (time attribute:
reported epochs, summed over folds). With `cv=1` the objective is the single validation fold's best F1.
All trials share the same fold assignment. Results: the best config (JSON, and YAML usable as
`raydetect train --config`), a leaderboard (CSV + printed table), and an MLflow run per trial.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from raydetect import storage
from raydetect.cluster import connect
from raydetect.config import Settings
from raydetect.train.trainer import labelled_rows, storage_root, unique_name

OBJECTIVE = "objective"
SEARCHED = ("backbone", "input_filter", "lr", "weight_decay", "augment_strength", "epochs")
LEADERBOARD_COLUMNS = [
    "rank",
    "trial",
    "objective",
    "objective_std",
    "folds_done",
    "complete",
    *SEARCHED,
    "epochs_run",
    "wall_s",
]


@dataclass
class TuneOutcome:
    best_config: dict[str, Any]
    best_objective: float
    leaderboard: pd.DataFrame
    output: str
    experiment_path: str
    wall_s: float


def search_space(
    backbones: list[str] | None = None,
    lr: tuple[float, float] = (1e-4, 3e-3),
    weight_decay: tuple[float, float] = (1e-6, 1e-2),
    augment: tuple[float, float] = (0.0, 1.0),
    epochs: list[int] | None = None,
    input_filters: list[str] | None = None,
) -> dict[str, Any]:
    """Tune's search space over learning rate, weight decay, backbone, input filter (none | npr; dire when
    asked for),
    augmentation strength and epochs."""
    from ray import tune

    from raydetect.models.filters import TUNE_FILTERS, check_input_filter

    backbones = backbones or ["efficientnet_lite0", "resnet18"]
    epochs = epochs or [3, 5, 8]
    input_filters = [check_input_filter(f) for f in (input_filters or TUNE_FILTERS)]
    return {
        "backbone": tune.choice(backbones),
        "input_filter": tune.choice(input_filters) if len(input_filters) > 1 else input_filters[0],
        "lr": tune.loguniform(*lr) if lr[0] < lr[1] else lr[0],
        "weight_decay": tune.loguniform(*weight_decay) if weight_decay[0] < weight_decay[1] else weight_decay[0],
        "augment_strength": tune.uniform(*augment) if augment[0] < augment[1] else augment[0],
        "epochs": tune.choice(epochs),
    }


def trial_settings(settings: Settings, config: dict[str, Any]) -> Settings:
    """`settings` with the trial's sampled values in the train section."""
    train = {k: config[k] for k in SEARCHED if k in config}
    if "epochs" in train:
        train["epochs"] = int(train["epochs"])
    if not settings.train.torch_threads:  # trials share nodes: each worker keeps to its CPU reservation
        train["torch_threads"] = max(1, int(settings.train.cpus_per_worker))
    return settings.model_copy(update={"train": settings.train.model_copy(update=train)})


def _trial(
    config: dict[str, Any],
    frame: pd.DataFrame,
    settings_data: dict[str, Any],
    k: int,
    folds: list[int],
    experiment: str,
) -> None:
    """One trial: k-fold CV of the sampled config, every fold a TorchTrainer reporting to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydetect.config import Settings
    from raydetect.train.cv import cross_validate

    settings = trial_settings(Settings.model_validate(settings_data), config)
    name = f"{experiment}-{tune.get_context().get_trial_id()}"
    cross_validate(frame, settings, k, folds=folds, name=name, callbacks_for_fold=lambda fold: [TuneReportCallback()])


def _max_concurrent(settings: Settings) -> int:
    """Trials that fit at once: each needs its workers' CPUs (+ GPUs), a decode actor and one CPU of headroom
    (so Ray Data never waits on a CPU held by another trial: on small clusters trials run one by one)."""
    import ray

    if settings.train.tune_max_concurrent:
        return settings.train.tune_max_concurrent
    resources = ray.cluster_resources()
    train = settings.train
    per_trial_cpu = train.workers * train.cpus_per_worker + train.decode_num_cpus + 1.0
    by_cpu = int(resources.get("CPU", 1) // max(per_trial_cpu, 0.5))
    gpus = resources.get("GPU", 0)
    by_gpu = int(gpus // train.workers) if gpus and train.use_gpu is not False else by_cpu
    return max(1, min(by_cpu, by_gpu))


def _leaderboard(result_grid: Any, k_run: int) -> pd.DataFrame:
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        config = result.config or {}
        history = result.metrics_dataframe
        row = {
            "trial": _trial_id(result),
            "objective": float(metrics.get(OBJECTIVE, float("nan"))),
            "objective_std": float(metrics.get("objective_std", float("nan"))),
            "folds_done": int(metrics.get("folds_done", 0) or 0),
            "complete": bool(metrics.get("cv_complete", 0.0)) and result.error is None,
            **{key: config.get(key) for key in SEARCHED},
            "epochs_run": int(len(history)) if history is not None else 0,
            "wall_s": float(metrics.get("time_total_s", float("nan"))),
            "error": None if result.error is None else str(result.error).splitlines()[0][:200],
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # Finished trials first (ASHA-stopped ones only saw part of the folds), then by objective.
    table["_sort"] = table["objective"].fillna(-1.0)
    table = table.sort_values(["complete", "_sort"], ascending=[False, False]).drop(columns="_sort")
    table.insert(0, "rank", range(1, len(table) + 1))
    extra = [c for c in table.columns if c not in LEADERBOARD_COLUMNS]
    return table[[c for c in LEADERBOARD_COLUMNS if c in table.columns] + extra].reset_index(drop=True)


def format_leaderboard(table: pd.DataFrame, top: int = 20) -> str:
    if table.empty:
        return "(no trials)"
    shown = table.head(top).drop(columns=[c for c in ("error",) if c in table.columns and table[c].isna().all()])
    return shown.to_string(
        index=False,
        float_format=lambda v: f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}",
    )


def tune_detector(
    data: str | pd.DataFrame,
    settings: Settings,
    *,
    num_samples: int | None = None,
    cv: int = 1,
    fold: int = 0,
    space: dict[str, Any] | None = None,
    output: str | None = None,
    name: str | None = None,
    grace_period: int | None = None,
    track: bool = True,
) -> TuneOutcome:
    """`raydetect tune`: a Ray Tune search with ASHA; writes best_config.{json,yaml} + leaderboard.csv to
    `output` (default <workdir>/tune/<name>) and returns them."""
    connect()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from raydetect.data.manifest import read_manifest
    from raydetect.tracking import wandb_tune_callbacks
    from raydetect.train.cv import HOLDOUT_K, fold_assignment

    start = time.perf_counter()
    df = read_manifest(data, split="train", settings=settings) if isinstance(data, str) else data
    k = cv if cv > 1 else HOLDOUT_K
    folds = list(range(k)) if cv > 1 else [fold]
    assigned = fold_assignment(labelled_rows(df), k, settings, root=df.attrs.get("root"))
    space = space or search_space()
    num_samples = num_samples or settings.train.tune_num_samples
    name = name or unique_name("tune")
    output = storage.normalize(output or str(settings.workdir_path / "tune" / name))

    epochs_choices = _choices(space.get("epochs"), settings.train.epochs)
    max_t = len(folds) * max(epochs_choices)
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=max(1, min(grace_period or min(epochs_choices), max_t)),
        reduction_factor=2,
    )
    trainable = tune.with_parameters(
        _trial,
        frame=assigned,
        settings_data=settings.model_dump(),
        k=k,
        folds=folds,
        experiment=name,
    )
    # The trial is only a driver: its TorchTrainer workers reserve the real CPUs/GPUs.
    trainable = tune.with_resources(trainable, {"CPU": 0.01})
    storage_uri = storage_root(settings)
    filesystem, fs_path = storage.pyarrow_fs(storage_uri, settings.storage)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="max",
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=_max_concurrent(settings),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=fs_path,
            storage_filesystem=filesystem,
            callbacks=wandb_tune_callbacks(settings.tracking.experiment),
        ),
    )
    grid = tuner.fit()
    table = _leaderboard(grid, len(folds))
    finished = table[table["complete"]] if not table.empty else table
    pool = finished if not finished.empty else table
    if pool.empty or pool["objective"].isna().all():
        raise RuntimeError(f"tune run {name}: no trial reported an objective ({len(table)} trials)")
    best_row = pool.loc[pool["objective"].idxmax()]
    best_config = {key: _plain(best_row[key]) for key in SEARCHED if key in best_row}
    best_objective = float(best_row["objective"])
    _write_outputs(output, table, best_config, best_objective, cv, name)
    if track:
        _track(settings, name, grid, table, best_config, best_objective, cv, output)
    return TuneOutcome(
        best_config=best_config,
        best_objective=best_objective,
        leaderboard=table,
        output=output,
        experiment_path=storage.join(storage_uri, name),
        wall_s=time.perf_counter() - start,
    )


def _trial_id(result: Any) -> str:
    metrics = result.metrics or {}
    return str(metrics.get("trial_id") or (result.path or "").rstrip("/").split("/")[-1])


def _choices(value: Any, default: int) -> list[int]:
    categories = getattr(value, "categories", None)
    if categories:
        return [int(c) for c in categories]
    if isinstance(value, int | float):
        return [int(value)]
    return [int(default)]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and not math.isnan(value):
        return value
    return value


def _write_outputs(
    output: str, table: pd.DataFrame, best: dict[str, Any], objective: float, cv: int, name: str
) -> None:
    storage.makedirs(output)
    storage.write_text(storage.join(output, "leaderboard.csv"), table.to_csv(index=False))
    summary = {
        "experiment": name,
        "objective": "mean CV F1" if cv > 1 else "F1",
        "cv": cv,
        "best_objective": objective,
        "best_config": best,
    }
    storage.write_text(storage.join(output, "best_config.json"), json.dumps(summary, indent=2))
    train_section = {**best, "epochs": int(best["epochs"])} if "epochs" in best else dict(best)
    storage.write_text(
        storage.join(output, "best_config.yaml"),
        f"# best of tune run {name}: {'mean CV F1' if cv > 1 else 'F1'} {objective:.4f}\n"
        + yaml.safe_dump({"train": train_section}, sort_keys=False),
    )


def _track(
    settings: Settings,
    name: str,
    grid: Any,
    table: pd.DataFrame,
    best: dict[str, Any],
    objective: float,
    cv: int,
    output: str,
) -> None:
    """A parent MLflow run for the sweep, a nested run per trial with its per-report history."""
    from raydetect.tracking import Tracker

    tracker = Tracker(settings)
    with tracker.run(name, params={"cv": cv, "num_trials": len(table)}, tags={"kind": "tune"}):
        tracker.log_metrics({"best_objective": objective})
        tracker.log_params({f"best_{k}": v for k, v in best.items()})
        for result in grid:
            config = {k: (result.config or {}).get(k) for k in SEARCHED}
            trial = f"trial-{_trial_id(result)}"
            with tracker.run(trial, params=config, nested=True, tags={"kind": "trial"}):
                history = result.metrics_dataframe
                if history is not None and not history.empty:
                    records = history.to_dict("records")
                    keep = (
                        "train_loss",
                        "val_loss",
                        "val_accuracy",
                        "val_precision",
                        "val_recall",
                        "val_f1",
                        "val_auc",
                        OBJECTIVE,
                    )
                    tracker.log_history(
                        [
                            {"step": r.get("training_iteration", i + 1), **{k: r.get(k) for k in keep if k in r}}
                            for i, r in enumerate(records)
                        ],
                        step_key="step",
                    )
        if storage.is_s3(output):
            return
        tracker.log_file(storage.join(output, "leaderboard.csv"))
        tracker.log_file(storage.join(output, "best_config.yaml"))
