"""The retraining trigger: re-evaluate the serving model on the newest labelled data and say "retrain" when

- a metric (`monitor.metrics`) falls more than `monitor.max_metric_drop` (a fraction, 5 %) below the value
  registered for the version (its evaluation's, else its card's);
- the scores or inputs drifted from a reference (`monitor drift`'s test: a scoring run, or a dataset such as
  the training data), when one is given;
- the labelled data holds a `generator` value the version's training data did not (`train.generators`).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from raydetect.config import Settings


def metric_reasons(current: dict[str, float], registered: dict[str, float], settings: Settings) -> list[str]:
    limit = settings.monitor.max_metric_drop
    reasons = []
    for metric in settings.monitor.metrics:
        if metric in registered and metric in current and registered[metric] > 0:
            drop = 1 - current[metric] / registered[metric]
            if drop > limit:
                reasons.append(f"{metric} {current[metric]:.4f} is {drop:.1%} below the registered "
                               f"{registered[metric]:.4f} (limit {limit:.0%})")
    return reasons


def generator_reasons(labelled: pd.DataFrame, tags: dict[str, str]) -> list[str]:
    if "generator" not in labelled or "train.generators" not in tags:
        return []
    seen = set(json.loads(tags["train.generators"]))
    new = sorted(set(labelled["generator"].dropna().astype(str)) - seen)
    return [f"generator never seen in training: {g}" for g in new]


def labelled_predictions(data: str, split: str, predictions: str | None, model_ref: str, settings: Settings):
    """The labelled manifest of `data` and its scored rows: `predictions` (a run), else a fresh scoring run
    of the serving model (Ray Data, resumable)."""
    from raydetect.data.manifest import read_manifest
    from raydetect.evaluate.metrics import join_predictions
    from raydetect.evaluate.report import load_predictions

    labelled = read_manifest(data, split=split, settings=settings)
    if predictions is None:
        from raydetect.evaluate.cli import score_for_evaluation

        predictions = score_for_evaluation(data, model_ref, split, settings)
    return labelled, predictions, join_predictions(load_predictions(predictions), labelled)


def check(settings: Settings, data: str, *, split: str = "test", predictions: str | None = None,
          reference: str | None = None) -> dict[str, Any]:
    """The trigger's verdict (`decision`: retrain | ok) with its reasons and figures."""
    from raydetect import registry
    from raydetect.evaluate.metrics import binary_metrics
    from raydetect.models.bundle import load_card

    ref = f"models:/{settings.registry.model_name}@{settings.registry.alias}"
    resolved = registry.resolve_model(ref, settings)
    tags = registry.version_tags(settings, resolved.version)
    labelled, run, joined = labelled_predictions(data, split, predictions, ref, settings)
    if joined.empty:
        raise ValueError(f"no scored row of {run} matches a labelled image of {data}")
    threshold = load_card(resolved.uri, settings.storage).threshold
    current = binary_metrics(joined["label"].astype(int).to_numpy(), joined["prob_ai"].to_numpy(float), threshold)
    registered = registry.figures(tags).metrics
    reasons = metric_reasons(current, registered, settings) + generator_reasons(labelled, tags)
    drift = None
    if reference is not None:
        from raydetect.monitor.drift import drift_between

        drift = drift_between(reference, run, settings).to_dict()
        reasons += [f"drift: {r}" for r in drift["reasons"]]
    return {"decision": "retrain" if reasons else "ok", "reasons": reasons, "version": resolved.version,
            "model_uri": resolved.uri, "predictions": run, "metrics": current,
            "registered": {k: registered[k] for k in settings.monitor.metrics if k in registered}, "drift": drift}
