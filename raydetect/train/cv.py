"""k-fold cross-validation and the whole `raydetect train` flow (folds -> Ray Train runs -> table -> model).

Folds come from the data layer (`assign_folds`: stratified on the label, grouped so that a photo and its AI
counterparts never sit on both sides); ROOT/folds.parquet is used when it holds the same number of folds.
A single-fold run (`--fold K`) validates on fold K of a 5-fold split.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from raydetect.config import Settings
from raydetect.evaluate.metrics import CONDITION_METRICS, condition_metrics
from raydetect.models.bundle import CV_PREDICTIONS_FILE, GENERALISATION_FILE, save_beside_model
from raydetect.models.views import sigmoid
from raydetect.train.trainer import (
    CALIBRATION_COLUMNS,
    FoldRun,
    export_model,
    fit_fold,
    labelled_rows,
    unique_name,
)

HOLDOUT_K = 5  # a single-fold run holds out 1/5 of the groups
TABLE_METRICS = ("loss", "accuracy", "precision", "recall", "f1", "auc", *CONDITION_METRICS)
CARRIED = ("category", "generator", "processing", "group", "width", "height")  # joined to the OOF rows


@dataclass
class TrainOutcome:
    """What `train_detector` did: the fold runs, their table, the exported model and the CV summary."""

    runs: list[FoldRun]
    table: pd.DataFrame
    folds: pd.DataFrame  # the manifest rows with their `fold`
    model_uri: str | None
    best_fold: int | None
    f1_mean: float
    f1_std: float
    wall_s: float
    mlflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None  # out-of-fold validation rows (`out_of_fold`)
    generalisation: pd.DataFrame | None = None  # leave-one-generator-out (`generalisation_table`)


def fold_assignment(df: pd.DataFrame, k: int, settings: Settings, root: str | None = None) -> pd.DataFrame:
    """`df` with a `fold` column: ROOT/folds.parquet when it has k folds, else a fresh seeded assignment."""
    from raydetect.data.folds import assign_folds, with_folds

    root = root or df.attrs.get("root")
    if root is not None:
        try:
            stored = with_folds(df, root, settings)
            if stored["fold"].nunique() == k:
                return stored
        except (FileNotFoundError, ValueError):
            pass
    return assign_folds(df, k=k, seed=settings.seed)


def out_of_fold(runs: list[FoldRun], assigned: pd.DataFrame) -> pd.DataFrame | None:
    """Every fold's validation predictions (path, fold, label, logit, prob_ai) with the rows' `CARRIED` columns;
    sets each run's `conditions` (F1 as generated, processed real photos correct). None without predictions."""
    frames = []
    columns = ["path", *[c for c in CARRIED if c in assigned.columns]]
    for run in runs:
        if run.predictions is None:
            continue
        frame = run.predictions.merge(assigned[columns], on="path", how="left").assign(fold=run.fold)
        frame["prob_ai"] = sigmoid(frame["logit"].to_numpy(dtype=float))
        run.conditions = condition_metrics(frame)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None


def held_out(train: pd.Series, val: pd.Series, frame: pd.DataFrame, generator: str | None):
    """Leave-`generator`-out masks over `frame`: train without its AI images, validate on the real images and
    its AI images only (a train-on-others / test-on-one split). None: the masks as they are."""
    if generator is None:
        return train, val
    if "generator" not in frame.columns:
        raise ValueError("leave-one-generator-out needs a `generator` column in the training rows")
    held = frame["generator"].eq(generator) & frame["label"].eq(1)
    return train & ~held, val & (held | frame["label"].eq(0))


def training_generators(df: pd.DataFrame) -> list[str]:
    """The generators of the labelled AI training rows (what leave-one-generator-out iterates over)."""
    if "generator" not in df.columns:
        raise ValueError("leave-one-generator-out needs a `generator` column in the training rows")
    generators = sorted(df.loc[df["label"].eq(1), "generator"].dropna().astype(str).unique())
    if len(generators) < 2:
        raise ValueError(f"leave-one-generator-out needs AI images of two generators or more, not {generators}")
    return generators


def generalisation_table(runs_by_generator: dict[str, list[FoldRun]]) -> pd.DataFrame:
    """One row per held-out generator: mean F1 and AUC over the folds (validation: the real images and that
    generator's AI images, never trained on), the share of its AI images caught and of the real ones passed."""
    rows = []
    for generator, runs in runs_by_generator.items():
        pooled = pd.concat([run.predictions for run in runs if run.predictions is not None], ignore_index=True)
        labels = pooled["label"].to_numpy(dtype=int)
        called_ai = pooled["logit"].to_numpy(dtype=float) >= 0.0  # P(AI) >= 0.5
        rows.append({"generator": generator, "folds": len(runs), "n_val": len(pooled),
                     "f1": statistics.fmean(r.f1 for r in runs),
                     "auc": statistics.fmean(r.best_metrics.get("val_auc", math.nan) for r in runs),
                     "ai_caught": float(called_ai[labels == 1].mean()),
                     "real_passed": float((~called_ai[labels == 0]).mean())})  # fmt: skip
    return pd.DataFrame(rows)


def format_generalisation(table: pd.DataFrame) -> str:
    """The generalisation table as the CLI prints it."""
    title = "leave one generator out (trained on the others; validated on it and the real images)"
    return title + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def leave_generator_out(df: pd.DataFrame, settings: Settings, k: int, folds: list[int] | None,
                        name: str) -> pd.DataFrame:  # fmt: skip
    """`generalisation_table` of the recipe in `settings`: for each training generator, the folds trained
    without it (the probe extracts its features once; fine-tuning trains every fold again)."""
    generators = training_generators(labelled_rows(df))
    if settings.train.recipe == "probe":
        from raydetect.train.probe import probe_leave_out

        return generalisation_table(probe_leave_out(df, settings, k, folds, generators, name))
    runs = {g: cross_validate(df, settings, k, folds=folds, name=f"{name}-no-{g}", leave_out=g)[0]
            for g in generators}  # fmt: skip
    return generalisation_table(runs)


def cv_table(runs: list[FoldRun]) -> pd.DataFrame:
    """One row per fold (best-epoch validation metrics), then `mean` and `std` rows."""
    rows = pd.DataFrame([run.summary() for run in runs])
    if rows.empty:
        return rows
    metrics = [m for m in TABLE_METRICS if m in rows.columns]
    mean = {"fold": "mean", **{m: rows[m].mean() for m in metrics}}
    std = {"fold": "std", **{m: rows[m].std(ddof=0) for m in metrics}}
    table = pd.concat([rows.astype({"fold": object}), pd.DataFrame([mean, std])], ignore_index=True)
    return table


def format_cv_table(table: pd.DataFrame, title: str = "") -> str:
    """Plain-text table with a final `mean ± std` line (what the CLI and the logs print)."""
    if table.empty:
        return "(no folds)"
    per_fold = table[~table["fold"].isin(["mean", "std"])]
    columns = ["fold", *[m for m in TABLE_METRICS if m in table.columns], "best_epoch", "epochs_run",
               *CALIBRATION_COLUMNS[:3], "wall_s"]  # fmt: skip
    columns = [c for c in columns if c in per_fold.columns]
    text = per_fold[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}")
    if len(per_fold) > 1:
        mean = table[table["fold"] == "mean"].iloc[0]
        std = table[table["fold"] == "std"].iloc[0]
        summary = "  ".join(f"{m} {mean[m]:.4f} ± {std[m]:.4f}" for m in TABLE_METRICS if m in table.columns)
        text += f"\nmean ± std over {len(per_fold)} folds: {summary}"
    return (title + "\n" if title else "") + text


def cross_validate(
    df: pd.DataFrame,
    settings: Settings,
    k: int,
    folds: list[int] | None = None,
    name: str | None = None,
    tracker: Any = None,
    callbacks_for_fold: Any = None,
    leave_out: str | None = None,
) -> tuple[list[FoldRun], pd.DataFrame]:
    """Run the given folds (default: all k) one after the other; returns the runs and the fold assignment.

    `callbacks_for_fold(fold)` may return Ray Train callbacks (Tune uses it); `tracker` logs a nested
    MLflow run per fold; `leave_out`: a generator never trained on (`held_out`)."""
    if "fold" in df.columns and df["fold"].nunique() == k:  # already assigned (Tune shares one assignment)
        assigned = labelled_rows(df)
    else:
        assigned = fold_assignment(labelled_rows(df), k, settings, root=df.attrs.get("root"))
    assigned.attrs.update(df.attrs)
    folds = list(range(k)) if folds is None else list(folds)
    name = name or unique_name(f"{settings.train.backbone}-cv{k}")
    runs: list[FoldRun] = []
    for position, fold in enumerate(folds):
        train, val = held_out(assigned["fold"] != fold, assigned["fold"] == fold, assigned, leave_out)
        train_df, val_df = assigned[train], assigned[val]
        run = fit_fold(
            train_df,
            val_df,
            settings,
            # Unique per call: Ray Train reloads the checkpoints of an existing run directory of the same name.
            name=f"{name}-fold{fold}-{uuid.uuid4().hex[:6]}",
            fold=fold,
            prior_f1s=[r.f1 for r in runs],
            last_fold=position == len(folds) - 1,
            callbacks=callbacks_for_fold(fold) if callbacks_for_fold else None,
            version=name,
        )
        runs.append(run)
        if tracker is not None:
            with tracker.run(f"fold{fold}", params={**run.params, "run_path": run.path}, nested=True):
                tracker.log_history(run.history)
                tracker.log_metrics({f"best_{k2}": v for k2, v in run.best_metrics.items() if k2.startswith("val_")})
    return runs, assigned


def train_detector(
    data: str | pd.DataFrame,
    settings: Settings,
    *,
    cv: int | None = None,
    fold: int | None = None,
    output: str | None = None,
    track: bool = True,
    name: str | None = None,
) -> TrainOutcome:
    """`raydetect train`: one fold (`cv=1`, validating on `fold` of a 5-fold split) or k-fold CV (`cv=k`),
    logged to MLflow; the best fold's best checkpoint is exported to `output` (default
    <workdir>/models/<run name>) as a model directory with the CV mean/std in its card."""
    from raydetect.data.manifest import read_manifest
    from raydetect.tracking import Tracker

    start = time.perf_counter()
    df = read_manifest(data, split="train", settings=settings) if isinstance(data, str) else data
    cv = settings.train.cv if cv is None else cv
    fold = settings.train.fold if fold is None else fold
    k = cv if cv > 1 else HOLDOUT_K
    folds = None if cv > 1 else [fold]
    if fold >= k:
        raise ValueError(f"fold {fold} does not exist with {k} folds (0..{k - 1})")
    name = name or unique_name(f"{settings.train.backbone}-{'cv' + str(cv) if cv > 1 else 'fold' + str(fold)}")
    tracker = Tracker(settings) if track else None
    run_params = {
        **settings.train.model_dump(),
        "seed": settings.seed,
        "cv": cv,
        "data": data if isinstance(data, str) else "<frame>",
    }

    def body(run_id: str | None) -> TrainOutcome:
        outcome = fit_recipe(run_id)
        if settings.train.leave_generator_out:
            outcome.generalisation = leave_generator_out(df, settings, k, folds, name)
            save_beside_model(outcome.generalisation, outcome.model_uri, GENERALISATION_FILE, settings.storage)
        return outcome

    def fit_recipe(run_id: str | None) -> TrainOutcome:
        if settings.train.recipe == "probe":
            from raydetect.train.probe import train_probe

            outcome = train_probe(df, settings, k, folds, name, output)
            save_beside_model(outcome.predictions, outcome.model_uri, CV_PREDICTIONS_FILE, settings.storage)
            outcome.mlflow_run_id = run_id
            if tracker is not None:
                tracker.log_metrics({"cv_f1_mean": outcome.f1_mean, "cv_f1_std": outcome.f1_std})
                tracker.log_model_dir(outcome.model_uri)
            return outcome
        runs, assigned = cross_validate(df, settings, k, folds=folds, name=name, tracker=tracker)
        predictions = out_of_fold(runs, assigned)
        table = cv_table(runs)
        f1s = [r.f1 for r in runs]
        f1_mean = statistics.fmean(f1s)
        f1_std = statistics.pstdev(f1s) if len(f1s) > 1 else 0.0
        best = max(runs, key=lambda r: r.f1 if not math.isnan(r.f1) else -1.0)
        model_uri = None
        if best.checkpoint_uri is not None:
            target = output or str(settings.workdir_path / "models" / name)
            cv_metrics = {"cv_f1_mean": f1_mean, "cv_f1_std": f1_std, "cv_folds": float(len(runs))}
            model_uri = export_model(best.checkpoint_uri, target, cv_metrics, settings.storage, version=name)
            save_beside_model(predictions, model_uri, CV_PREDICTIONS_FILE, settings.storage)
        if tracker is not None:
            tracker.log_metrics({"cv_f1_mean": f1_mean, "cv_f1_std": f1_std})
            for metric in TABLE_METRICS:
                if metric in table.columns:
                    tracker.log_metrics({f"cv_{metric}_mean": table.loc[table["fold"] == "mean", metric].iloc[0]})
            if model_uri is not None:
                tracker.log_model_dir(model_uri)
                tracker.set_tags({"model_uri": model_uri})
        return TrainOutcome(
            runs=runs,
            table=table,
            folds=assigned,
            model_uri=model_uri,
            best_fold=best.fold,
            f1_mean=f1_mean,
            f1_std=f1_std,
            wall_s=time.perf_counter() - start,
            mlflow_run_id=run_id,
            predictions=predictions,
        )

    if tracker is None:
        return body(None)
    from raydetect.registry import auto_register

    with tracker.run(name, params=run_params, tags={"kind": "train"}) as run_id:
        outcome = body(run_id)
        version = auto_register(settings, outcome.model_uri, run_id, labelled_rows(df))
        if version is not None:
            tracker.set_tags({"registry_version": version})
            outcome.extra["registry_version"] = version
        return outcome


def compare_variants(
    data: str | pd.DataFrame,
    settings: Settings,
    variants: list[tuple[str, str]],
    cv: int = 5,
    output_dir: str | None = None,
) -> tuple[pd.DataFrame, dict[str, TrainOutcome]]:
    """k-fold CV of several (backbone, weights) variants on the same folds; returns a summary table (one row
    per variant: mean ± std of each metric, wall time) and each variant's outcome. Models go to
    `output_dir/<backbone>-<weights>` when given."""
    from raydetect.data.manifest import read_manifest

    df = read_manifest(data, split="train", settings=settings) if isinstance(data, str) else data
    rows, outcomes = [], {}
    for backbone, weights in variants:
        train = settings.train.model_copy(update={"backbone": backbone, "weights": weights})
        variant_settings = settings.model_copy(update={"train": train})
        key = f"{backbone}-{weights}"
        target = f"{output_dir.rstrip('/')}/{key}" if output_dir else None
        outcome = train_detector(df, variant_settings, cv=cv, output=target)
        outcomes[key] = outcome
        rows.append(summary_row(key, outcome.table, outcome.wall_s))
    return pd.DataFrame(rows), outcomes


def summary_row(variant: str, table: pd.DataFrame, wall_s: float) -> dict[str, Any]:
    """One line of a variant comparison: the number of folds in `table` (a `cv_table`) and each metric as
    'mean ± std' (the mean alone for one fold, 'n/a' for none)."""
    per_fold = table[~table["fold"].isin(["mean", "std"])] if not table.empty else table
    row: dict[str, Any] = {"variant": variant, "folds": len(per_fold)}
    for metric in TABLE_METRICS:
        if per_fold.empty or metric not in table.columns:
            row[metric] = "n/a"
            continue
        mean = table.loc[table["fold"] == "mean", metric].iloc[0]
        std = table.loc[table["fold"] == "std", metric].iloc[0]
        row[metric] = f"{mean:.4f}" + (f" ± {std:.4f}" if len(per_fold) > 1 else "")
    row["wall_s"] = round(wall_s, 1)
    return row
