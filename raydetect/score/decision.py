"""Decisions (real / ai / review) from a model card, and the combined card of a weighted ensemble.

A single model decides with its own card (`ModelCard.decide`: threshold plus the uncertain band sent to
human review). An ensemble averages the members' P(AI) with normalised weights and decides with the same
weighted average of the members' thresholds and review bands; its name and version spell out the members
and weights, so a resumed run never mixes rows of different ensembles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from raydetect.models.bundle import ModelCard


def normalized_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Weights that sum to one (equal weights when `weights` is None)."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights given for {n} models")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero (got {list(weights)})")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def combine_cards(cards: Sequence[ModelCard], weights: Sequence[float] | None = None) -> ModelCard:
    """The decision card of a (weighted) ensemble; a single model's own card when there is one member."""
    if not cards:
        raise ValueError("at least one model is needed")
    if len(cards) == 1:
        return cards[0]
    w = normalized_weights(weights, len(cards))
    threshold = sum(wi * c.threshold for wi, c in zip(w, cards, strict=True))
    low = sum(wi * c.review_band[0] for wi, c in zip(w, cards, strict=True))
    high = sum(wi * c.review_band[1] for wi, c in zip(w, cards, strict=True))
    return ModelCard(
        backbone="ensemble",
        name="+".join(c.name for c in cards),
        version="+".join(f"{c.name}@{c.version}*{wi:.4g}" for wi, c in zip(w, cards, strict=True)),
        image_size=cards[0].image_size,
        threshold=round(threshold, 10),
        review_band=[round(low, 10), round(high, 10)],
        params={
            "members": [
                {"name": c.name, "version": c.version, "backbone": c.backbone, "weight": wi}
                for wi, c in zip(w, cards, strict=True)
            ]
        },
    )


def decide_all(card: ModelCard, probs: np.ndarray) -> list[str | None]:
    """`card.decide` for each probability; None where the probability is NaN (an error row)."""
    return [None if math.isnan(p) else card.decide(p) for p in np.asarray(probs, dtype=np.float64).tolist()]
