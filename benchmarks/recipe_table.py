"""The recipe comparison of issue 17 from the models' own cross-validation: one row per model directory (its
`cv_predictions.parquet`, the out-of-fold rows `raydetect train --cv K` writes beside the model) and a row for
the mean-P(AI) ensemble of them all, on the same grouped folds.

    python benchmarks/recipe_table.py NAME=MODEL_DIR [NAME=MODEL_DIR ...] [--ensemble a,b] [--weighted]
        [--html table.html]

Per row: F1 and AUC (mean ± std over the folds), accuracy, F1 on the images left as generated, and the share of
the processed real photos (resized / blurred / re-compressed, hard negatives) called real — the figures where the
"soft means AI" shortcut shows. `--weighted` adds the weighted mean-P(AI) ensemble, each fold scored with the
weights (a 0.05 grid) that give the best mean F1 on the other folds. Threshold 0.5 on each fold's uncalibrated
P(AI) (what the CV table reports).
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from raydetect.evaluate.metrics import binary_metrics, condition_metrics
from raydetect.models.bundle import CV_PREDICTIONS_FILE

COLUMNS = ("f1", "auc_roc", "accuracy", "f1_as_generated", "real_processed_acc")


def read_oof(model_dir: str) -> pd.DataFrame:
    frame = pd.read_parquet(Path(model_dir) / CV_PREDICTIONS_FILE)
    return frame.sort_values("path").reset_index(drop=True)


def fold_figures(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per fold: the `COLUMNS` of its out-of-fold rows."""
    rows = []
    for fold, rows_of_fold in frame.groupby("fold"):
        figures = binary_metrics(rows_of_fold["label"].to_numpy(), rows_of_fold["prob_ai"].to_numpy())
        rows.append({"fold": fold, **figures, **condition_metrics(rows_of_fold)})
    return pd.DataFrame(rows)


def ensemble(frames: dict[str, pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Mean P(AI) per image over the members (weighted: what `raydetect score --model a,b --weights` computes);
    they must share the images and the folds."""
    first = next(iter(frames.values()))
    for name, frame in frames.items():
        same = frame["path"].tolist() == first["path"].tolist() and (frame["fold"] == first["fold"]).all()
        if not same:
            raise SystemExit(f"{name}: not the same images/folds as the other models; retrain with the same --cv")
    out = first.drop(columns=["logit"], errors="ignore").copy()
    out["prob_ai"] = np.average([f["prob_ai"].to_numpy() for f in frames.values()], axis=0, weights=weights)
    return out


def weight_grid(members: int, step: float = 0.05) -> list[tuple[float, ...]]:
    """Every weighting of `members` models on a `step` grid of the simplex (weights sum to 1)."""
    from itertools import product

    ticks = round(1 / step)
    return [tuple(t / ticks for t in (*w, ticks - sum(w))) for w in product(range(ticks + 1), repeat=members - 1)
            if sum(w) <= ticks]  # fmt: skip


def best_weights(frames: dict[str, pd.DataFrame], folds: Sequence[int]) -> tuple[float, ...]:
    """The grid weighting with the best mean F1 over `folds` (ties, common at a fixed threshold: the lower
    log loss)."""
    from sklearn.metrics import log_loss

    rows = {name: frame[frame["fold"].isin(folds)] for name, frame in frames.items()}

    def score(w: tuple[float, ...]) -> tuple[float, float]:
        mixed = ensemble(rows, w)
        loss = log_loss(mixed["label"], mixed["prob_ai"].clip(1e-6, 1 - 1e-6), labels=[0, 1])
        return round(fold_figures(mixed)["f1"].mean(), 12), -loss

    return max(weight_grid(len(frames)), key=score)


def weighted_ensemble(frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[int, tuple[float, ...]]]:
    """Each fold's rows from the weighting chosen on the *other* folds' out-of-fold rows, so the figures of a
    fold never saw the rows they are measured on (choosing weights on all rows would flatter the ensemble)."""
    first = ensemble(frames)  # checks the members share images and folds
    folds = sorted(first["fold"].unique())
    chosen = {k: best_weights(frames, [f for f in folds if f != k]) for k in folds}
    parts = []
    for k, w in chosen.items():
        part = ensemble(frames, w)
        parts.append(part[part["fold"] == k])
    return pd.concat(parts).sort_values("path").reset_index(drop=True), chosen


def best_ensemble(frames: dict[str, pd.DataFrame]) -> dict[str, object]:
    """The mean-P(AI) ensemble of the subset (two members or more) with the highest mean F1 over the folds."""
    from itertools import combinations

    subsets = [c for n in range(2, len(frames) + 1) for c in combinations(frames, n)]
    score = {s: fold_figures(ensemble({m: frames[m] for m in s}))["f1"].mean() for s in subsets}
    chosen = max(score, key=score.get)
    return summary_row("best ensemble(" + "+".join(chosen) + ")", ensemble({m: frames[m] for m in chosen}))


def summary_row(name: str, frame: pd.DataFrame) -> dict[str, object]:
    folds = fold_figures(frame)
    row: dict[str, object] = {"recipe": name, "folds": len(folds), "n": len(frame)}
    for column in COLUMNS:
        values = folds[column].to_numpy(dtype=float)
        row[column] = f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}" if len(values) > 1 else (
            f"{values[0]:.3f}")  # the population std over folds, as `raydetect train` prints it
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL_DIR (a model directory written by raydetect train --cv)")
    parser.add_argument("--ensemble", default=None, help="comma-separated NAMEs to average (default: all of them)")
    parser.add_argument("--best", action="store_true", help="also the subset of 2+ models with the best mean F1")
    parser.add_argument("--weighted", action="store_true",
                        help="also the weighted ensemble, each fold's weights chosen on the other folds")
    parser.add_argument("--html", default=None, help="also write the table as a single-file HTML page")
    args = parser.parse_args(argv)
    frames = {}
    for item in args.models:
        name, _, path = item.partition("=")
        frames[name] = read_oof(path or name)
    rows = [summary_row(name, frame) for name, frame in frames.items()]
    members = args.ensemble.split(",") if args.ensemble else list(frames)
    member_frames = {m: frames[m] for m in members}
    if len(members) > 1:
        rows.append(summary_row("ensemble(" + "+".join(members) + ")", ensemble(member_frames)))
    if args.best and len(frames) > 2:
        rows.append(best_ensemble(frames))
    if args.weighted and len(members) > 1:
        frame, chosen = weighted_ensemble(member_frames)
        rows.append(summary_row("weighted(" + "+".join(members) + ")", frame))
        print("weights chosen on the other folds, per held-out fold:",
              {k: dict(zip(members, w, strict=True)) for k, w in chosen.items()})
        final = best_weights(member_frames, sorted(chosen))
        print("weights chosen on all folds (for `raydetect score --weights`):", ",".join(f"{w:g}" for w in final))
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    if args.html:
        body = table.to_html(index=False, escape=True)
        Path(args.html).write_text(f"<!doctype html><meta charset=utf-8><title>{html.escape('recipes')}</title>"
                                   f"<h1>Recipes, grouped {rows[0]['folds']}-fold CV</h1>{body}")  # fmt: skip
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
