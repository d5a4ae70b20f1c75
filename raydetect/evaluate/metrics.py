"""Detection metrics (scikit-learn) and per-group breakdowns (fairlearn), as plain functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

HEADLINE = ("accuracy", "precision", "recall", "f1", "auc_roc", "average_precision",
            "false_positive_rate", "false_negative_rate")  # fmt: skip


def _ratio(num: float, den: float, empty: float = 0.0) -> float:
    return float(num / den) if den else empty


def binary_metrics(labels: np.ndarray, prob_ai: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 at `threshold`, and threshold-free AUC-ROC / average precision."""
    labels = np.asarray(labels, dtype=int)
    prob_ai = np.asarray(prob_ai, dtype=float)
    predicted = prob_ai >= threshold
    positive = labels == 1
    tp, fp = int((predicted & positive).sum()), int((predicted & ~positive).sum())
    fn, tn = int(positive.sum()) - tp, int((~positive).sum()) - fp
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)),
        "accuracy": _ratio(tp + tn, len(labels)),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auc_roc": float(skm.roc_auc_score(labels, prob_ai)) if both_classes else float("nan"),
        "average_precision": float(skm.average_precision_score(labels, prob_ai)) if both_classes else float("nan"),
        "false_positive_rate": _ratio(fp, fp + tn, float("nan")),
        "false_negative_rate": _ratio(fn, fn + tp, float("nan")),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def weighted_metrics(labels: np.ndarray, prob_ai: np.ndarray, weights: np.ndarray, threshold: float = 0.5) -> dict:
    """The headline metrics of `binary_metrics` for many weightings of the same images at once: `weights` is
    (R, n), row r counting how often each image is drawn; returns each metric as an (R,) array. AUC-ROC counts
    ties as half (scikit-learn's), average precision is scikit-learn's step sum over distinct scores."""
    labels = np.asarray(labels, dtype=bool)
    prob_ai = np.asarray(prob_ai, dtype=float)
    w = np.asarray(weights, dtype=float)
    flagged = prob_ai >= threshold
    tp, fp = w[:, flagged & labels].sum(1), w[:, flagged & ~labels].sum(1)
    pos, neg = w[:, labels].sum(1), w[:, ~labels].sum(1)
    fn, tn = pos - tp, neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "accuracy": (tp + tn) / (pos + neg),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0),
            "recall": np.where(pos > 0, tp / np.maximum(pos, 1e-300), 0.0),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), 0.0),
            "false_positive_rate": fp / neg,
            "false_negative_rate": fn / pos,
        }
        # per distinct score, descending: weighted positives / negatives at that score
        scores, group = np.unique(-prob_ai, return_inverse=True)
        wp = np.zeros((len(w), len(scores)))
        wn = np.zeros((len(w), len(scores)))
        np.add.at(wp.T, group[labels], w[:, labels].T)
        np.add.at(wn.T, group[~labels], w[:, ~labels].T)
        neg_above = np.cumsum(wn, 1) - wn  # negatives scored strictly higher
        out["auc_roc"] = 1 - (wp * (neg_above + 0.5 * wn)).sum(1) / (pos * neg)
        ctp, cfp = np.cumsum(wp, 1), np.cumsum(wn, 1)
        precision_k = np.where(ctp + cfp > 0, ctp / np.maximum(ctp + cfp, 1e-300), 0.0)
        out["average_precision"] = (wp / pos[:, None] * precision_k).sum(1)
    one_class = (pos == 0) | (neg == 0)
    out["auc_roc"][one_class] = np.nan
    out["average_precision"][one_class] = np.nan
    return out


def bootstrap_intervals(
    labels: np.ndarray, prob_ai: np.ndarray, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of every headline metric: images drawn with replacement (a multinomial
    count per image), the metric recomputed per resample, the (1 - level) / 2 and (1 + level) / 2 quantiles."""
    labels = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    tail = 100 * (1 - level) / 2
    draws: dict[str, list[np.ndarray]] = {name: [] for name in HEADLINE}
    for start in range(0, n_resamples, 250):  # bounded memory: 250 resamples x n images at a time
        counts = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), min(250, n_resamples - start))
        for name, values in weighted_metrics(labels, prob_ai, counts, threshold).items():
            draws[name].append(values)
    out = {}
    for name in HEADLINE:
        values = np.concatenate(draws[name]) if draws[name] else np.zeros(0)
        values = values[~np.isnan(values)]
        out[name] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if len(
            values) else [float("nan"), float("nan")]  # fmt: skip
    return out


def equalized_odds(frame: pd.DataFrame, column: str, threshold: float = 0.5) -> float:
    """fairlearn's equalized-odds difference across the values of `column`: the larger of the gaps in true-
    and false-positive rate between its groups (0 = the detector errs alike on every group)."""
    from fairlearn.metrics import equalized_odds_difference

    return float(equalized_odds_difference(
        frame["label"].astype(int).to_numpy(), (frame["prob_ai"].to_numpy() >= threshold).astype(int),
        sensitive_features=frame[column].astype(str).to_numpy(),
    ))  # fmt: skip


def metrics_by_group(frame: pd.DataFrame, column: str, threshold: float = 0.5) -> pd.DataFrame:
    """Per-value metrics of `column` (e.g. category, generator, processing) with fairlearn's MetricFrame."""
    from fairlearn.metrics import MetricFrame, false_negative_rate, false_positive_rate, selection_rate

    labels = frame["label"].astype(int).to_numpy()
    predicted = (frame["prob_ai"].to_numpy() >= threshold).astype(int)
    metric_frame = MetricFrame(
        metrics={
            "accuracy": skm.accuracy_score,
            "f1": lambda y, p: skm.f1_score(y, p, zero_division=0),
            "false_positive_rate": false_positive_rate,
            "false_negative_rate": false_negative_rate,
            "flagged_as_ai": selection_rate,
            "n": lambda y, p: len(y),
        },
        y_true=labels,
        y_pred=predicted,
        sensitive_features=frame[column].astype(str).to_numpy(),
    )
    table = metric_frame.by_group.reset_index().rename(columns={"sensitive_feature_0": column})
    table["n"] = table["n"].astype(int)
    return table


def join_predictions(predictions: pd.DataFrame, labelled: pd.DataFrame) -> pd.DataFrame:
    """Inner-join scored rows (without errors) to a labelled manifest on `path`."""
    ok = predictions[predictions["error"].isna()] if "error" in predictions else predictions
    keep = [c for c in labelled.columns if c not in ok.columns or c == "path"]
    joined = ok.merge(labelled[keep], on="path", how="inner")
    return joined[joined["label"].notna()].reset_index(drop=True)


CONDITION_METRICS = ("f1_as_generated", "real_processed_acc")


def condition_metrics(frame: pd.DataFrame, threshold: float = 0.5) -> dict[str, float]:
    """The two figures the "soft means AI" shortcut shows in (issue 17): F1 on the images left as generated
    (`processing` none: no label-independent step, no hard-negative step) and the share of the processed real
    photos (resized, blurred, re-compressed, hard negatives) called real. `frame`: label, prob_ai, processing
    (a frame without `processing` gives NaN)."""
    if "processing" not in frame or frame.empty:
        return dict.fromkeys(CONDITION_METRICS, float("nan"))
    untouched = frame["processing"].fillna("none").astype(str).isin(["none", ""]).to_numpy()
    labels = frame["label"].astype(int).to_numpy()
    probs = frame["prob_ai"].to_numpy(dtype=float)
    as_generated = binary_metrics(labels[untouched], probs[untouched], threshold)["f1"] if untouched.any() else np.nan
    real_processed = (labels == 0) & ~untouched
    correct = float(np.mean(probs[real_processed] < threshold)) if real_processed.any() else float("nan")
    return {"f1_as_generated": float(as_generated), "real_processed_acc": correct}
