"""Calibration: temperature scaling, expected calibration error, and the decision rules of a model card.

All plain NumPy/SciPy on validation logits and 0/1 labels, no torch, no Ray:
- `fit_temperature`: the T > 0 minimising the validation NLL of sigmoid(logit / T) (Guo et al., 2017). One
  scalar, so the ranking (AUC, the ROC) is unchanged and only the confidence moves.
- `expected_calibration_error` / `reliability_bins`: P(AI) in equal-width bins; ECE is the share-weighted
  mean |observed AI rate - mean P(AI)| over the bins.
- `choose_threshold`: `max_f1` (the validation score with the highest F1 of `P(AI) >= t`, the lowest of
  ties), `target_fpr` (the lowest score whose false-positive rate is at most `target_fpr`) or `fixed`.
- `choose_review_band`: `[low, high)` around the threshold, the band where precision falls below
  `review_precision`: `high` is the lowest validation score >= threshold at which the `ai` decisions
  (P(AI) >= high) are at least `review_precision` precise, `low` the highest score <= threshold at which the
  `real` decisions (P(AI) < low) are (negative predictive value); 1.0 / 0.0 when no score reaches it.
- `calibrate`: all of it on one validation fold -> the dict recorded as `ModelCard.calibration`, with the
  rule, its targets and the values it gave.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULT_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def logit(p: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logits / temperature), computed from the logits (stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z)) if len(z) else float("nan")


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL (bounded search over log T in TEMPERATURE_RANGE)."""
    from scipy.optimize import minimize_scalar

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(lambda s: nll(logits, labels, math.exp(s)), bounds=(low, high), method="bounded")
    return float(math.exp(found.x))


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Per equal-width P(AI) bin: count, mean P(AI) and observed AI rate (NaN for empty bins)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    index = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, weights=probs, minlength=n_bins) / count
        rate = np.bincount(index, weights=labels, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "mean_prob": mean_prob, "rate": rate}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    bins = reliability_bins(labels, probs, n_bins)
    filled = bins["count"] > 0
    if not filled.any():
        return float("nan")
    gaps = np.abs(bins["rate"][filled] - bins["mean_prob"][filled])
    return float(np.sum(bins["count"][filled] * gaps) / bins["count"].sum())


def _counts_at(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """tp / fp / fn / tn of the decision `P(AI) >= t` for each t (vectorised)."""
    labels = np.asarray(labels, dtype=bool)
    flagged = np.asarray(probs)[None, :] >= np.asarray(thresholds)[:, None]
    tp = (flagged & labels).sum(1)
    fp = (flagged & ~labels).sum(1)
    return {"tp": tp, "fp": fp, "fn": labels.sum() - tp, "tn": (~labels).sum() - fp}


def choose_threshold(
    labels: np.ndarray, probs: np.ndarray, rule: str = "max_f1", target_fpr: float = 0.05, fixed: float = 0.5
) -> float:
    """The decision threshold by `rule` (see the module docstring); candidates are the validation scores."""
    if rule == "fixed":
        return float(fixed)
    candidates = np.unique(np.asarray(probs, dtype=np.float64))
    c = _counts_at(labels, probs, candidates)
    if rule == "max_f1":
        f1 = 2 * c["tp"] / np.maximum(2 * c["tp"] + c["fp"] + c["fn"], 1)
        return float(candidates[int(np.argmax(f1))])
    if rule == "target_fpr":
        fpr = c["fp"] / max(int(c["fp"][0] + c["tn"][0]), 1)
        ok = np.flatnonzero(fpr <= target_fpr)
        return float(candidates[ok[0]]) if len(ok) else 1.0
    raise ValueError(f"unknown threshold rule {rule!r} (max_f1, target_fpr or fixed)")


def choose_review_band(
    labels: np.ndarray, probs: np.ndarray, threshold: float, review_precision: float = 0.95
) -> list[float]:
    """`[low, high)`: outside it both decisions reach `review_precision` on these labels (module docstring)."""
    labels = np.asarray(labels, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    scores = np.unique(probs)
    above = scores[scores >= threshold]
    high = 1.0
    if len(above):
        c = _counts_at(labels, probs, above)
        precision = c["tp"] / np.maximum(c["tp"] + c["fp"], 1)
        ok = np.flatnonzero((precision >= review_precision) & (c["tp"] + c["fp"] > 0))
        high = float(above[ok[0]]) if len(ok) else 1.0
    below = np.append(scores[scores < threshold], threshold)
    c = _counts_at(labels, probs, below)
    npv = c["tn"] / np.maximum(c["tn"] + c["fn"], 1)
    ok = np.flatnonzero(npv >= review_precision)
    low = float(below[ok[-1]]) if len(ok) else 0.0
    return [min(low, threshold), max(high, threshold)]


def decision_summary(labels: np.ndarray, probs: np.ndarray, threshold: float, band: list[float]) -> dict[str, float]:
    """Share sent to review and the precision of the `ai` / `real` decisions outside the band."""
    labels = np.asarray(labels, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    low, high = band
    review = (probs >= low) & (probs < high) & (low < high)
    ai, real = ~review & (probs >= threshold), ~review & (probs < threshold)
    return {
        "review_share": float(review.mean()) if len(probs) else float("nan"),
        "precision_ai": float(labels[ai].mean()) if ai.any() else float("nan"),
        "npv_real": float((~labels[real]).mean()) if real.any() else float("nan"),
    }


def calibrate_with(logits: np.ndarray, labels: np.ndarray, settings, fitted_on: str = "validation") -> dict[str, Any]:
    """`calibrate` with the `calibration:` settings (config.CalibrationSettings)."""
    return calibrate(
        logits, labels, threshold_rule=settings.threshold_rule, target_fpr=settings.target_fpr,
        fixed_threshold=settings.fixed_threshold, review_precision=settings.review_precision, bins=settings.bins,
        min_samples=settings.min_samples, fitted_on=fitted_on,
    )  # fmt: skip


def calibrate(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    threshold_rule: str = "max_f1",
    target_fpr: float = 0.05,
    fixed_threshold: float = 0.5,
    review_precision: float = 0.95,
    bins: int = DEFAULT_BINS,
    min_samples: int = 20,
    fitted_on: str = "validation",
) -> dict[str, Any]:
    """Temperature, threshold and review band fitted on one validation set: the card's `calibration`.

    With fewer than `min_samples` rows or a single class, nothing is fitted: temperature 1 and the
    default threshold / band, with `skipped` saying why."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).astype(int).reshape(-1)
    rule = {"method": "temperature", "threshold_rule": threshold_rule, "target_fpr": target_fpr,
            "review_precision": review_precision, "bins": bins, "fitted_on": fitted_on,
            "n": int(len(labels))}  # fmt: skip
    if len(labels) < min_samples or len(np.unique(labels)) < 2:
        why = f"{len(labels)} validation rows" if len(labels) < min_samples else "one class only"
        return {**rule, "temperature": 1.0, "threshold": 0.5, "review_band": [0.4, 0.6], "skipped": why}
    temperature = fit_temperature(logits, labels)
    before, after = sigmoid(logits), sigmoid(logits / temperature)
    threshold = choose_threshold(labels, after, threshold_rule, target_fpr, fixed_threshold)
    band = choose_review_band(labels, after, threshold, review_precision)
    return {
        **rule,
        "temperature": temperature,
        "threshold": threshold,
        "review_band": band,
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
        "ece_before": expected_calibration_error(labels, before, bins),
        "ece_after": expected_calibration_error(labels, after, bins),
        **decision_summary(labels, after, threshold, band),
    }
