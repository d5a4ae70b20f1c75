"""Detection metrics (scikit-learn) and per-group breakdowns (fairlearn), as plain functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def binary_metrics(labels: np.ndarray, prob_ai: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 at `threshold`, and threshold-free AUC-ROC / average precision."""
    labels = np.asarray(labels, dtype=int)
    prob_ai = np.asarray(prob_ai, dtype=float)
    predicted = (prob_ai >= threshold).astype(int)
    both_classes = len(np.unique(labels)) == 2
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "auc_roc": float(skm.roc_auc_score(labels, prob_ai)) if both_classes else float("nan"),
        "average_precision": float(skm.average_precision_score(labels, prob_ai)) if both_classes else float("nan"),
        "false_positive_rate": float(fp / (fp + tn)) if fp + tn else float("nan"),
        "false_negative_rate": float(fn / (fn + tp)) if fn + tp else float("nan"),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


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
