"""Promotion gates: plain functions over a version's figures (no MLflow here; `registry.promote` calls them).

A version's *figures* are what the registry holds for it: its metrics (from an evaluation report when one
is attached, else its model card's validation metrics), the data they were measured on, and, from an
evaluation report, the fairness gap between categories and the robustness drop on processed images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from raydetect.config import GateSettings


@dataclass(frozen=True)
class Figures:
    metrics: dict[str, float] = field(default_factory=dict)
    data: str | None = None  # what the metrics were measured on (evaluation data, or training fingerprint)
    source: str = "card"  # evaluation | card
    fairness_gap: float | None = None
    robustness_drop: float | None = None


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fairness_gap(summary: dict[str, Any]) -> float | None:
    """The fairness gap of an evaluation summary: its own `fairness_gap`, else the equalized-odds difference
    across `category` (`fairness.equalized_odds_difference`, when the report computes it), else the largest
    accuracy gap between `category` groups."""
    if _finite(summary.get("fairness_gap")) is not None:
        return float(summary["fairness_gap"])
    fairness = summary.get("fairness") or {}
    if isinstance(fairness, dict) and _finite(fairness.get("equalized_odds_difference")) is not None:
        return float(fairness["equalized_odds_difference"])
    rows = [r for r in summary.get("groups", {}).get("category", []) if _finite(r.get("accuracy")) is not None]
    if len(rows) < 2:
        return None
    accuracies = [float(r["accuracy"]) for r in rows]
    return max(accuracies) - min(accuracies)


def robustness_drop(summary: dict[str, Any]) -> float | None:
    """The robustness drop of an evaluation summary: its own `robustness_drop`, else the largest
    `accuracy_drop` of its perturbation sweep (`robustness` rows, when the report runs one), else accuracy
    on unprocessed images minus that on processed ones (n-weighted `processing` groups)."""
    if _finite(summary.get("robustness_drop")) is not None:
        return float(summary["robustness_drop"])
    sweep = [_finite(r.get("accuracy_drop")) for r in summary.get("robustness") or []]
    if any(d is not None for d in sweep):
        return max(d for d in sweep if d is not None)
    rows = [r for r in summary.get("groups", {}).get("processing", []) if _finite(r.get("accuracy")) is not None]
    clean = [r for r in rows if str(r.get("processing")) == "none"]
    processed = [r for r in rows if str(r.get("processing")) != "none"]
    n_processed = sum(int(r.get("n", 0)) for r in processed)
    if not clean or not n_processed:
        return None
    processed_acc = sum(float(r["accuracy"]) * int(r.get("n", 0)) for r in processed) / n_processed
    return float(clean[0]["accuracy"]) - processed_acc


def _floor_gates(candidate: Figures, floors: dict[str, float]) -> list[Gate]:
    gates = []
    for metric, floor in floors.items():
        value = _finite(candidate.metrics.get(metric))
        if value is None:
            gates.append(Gate(f"min_{metric}", False, f"no {metric} recorded (attach an evaluation report)"))
        else:
            gates.append(Gate(f"min_{metric}", value >= floor, f"{metric} {value:.4f} (floor {floor:.4f}, "
                                                                f"{candidate.source})"))
    return gates


def _drop_gates(candidate: Figures, production: Figures | None, limits: dict[str, float]) -> list[Gate]:
    if production is None:
        return [Gate("max_drop", True, "no production model to compare with")]
    if candidate.data is None or candidate.data != production.data:
        return [Gate("max_drop", True, f"not compared: measured on different data ({candidate.data} vs "
                                       f"{production.data})")]
    gates = []
    for metric, limit in limits.items():
        new, old = _finite(candidate.metrics.get(metric)), _finite(production.metrics.get(metric))
        if new is None or old is None:
            gates.append(Gate(f"max_drop_{metric}", True, f"not compared: {metric} missing on one side"))
            continue
        drop = old - new
        gates.append(Gate(f"max_drop_{metric}", drop <= limit,
                          f"{metric} {new:.4f} vs production {old:.4f}: drop {drop:+.4f} (limit {limit:.4f})"))
    return gates


def _limit_gate(name: str, value: float | None, limit: float | None) -> list[Gate]:
    if limit is None:
        return []
    if value is None:
        return [Gate(name, True, "not measured (no such groups in the evaluation)")]
    return [Gate(name, value <= limit, f"{value:.4f} (limit {limit:.4f})")]


def check_gates(candidate: Figures, production: Figures | None, gates: GateSettings) -> list[Gate]:
    """Every configured gate for `candidate` (against `production`, the current holder, when there is one)."""
    return [
        *_floor_gates(candidate, gates.min_metrics),
        *_drop_gates(candidate, production, gates.max_drop),
        *_limit_gate("max_fairness_gap", candidate.fairness_gap, gates.max_fairness_gap),
        *_limit_gate("max_robustness_drop", candidate.robustness_drop, gates.max_robustness_drop),
    ]
