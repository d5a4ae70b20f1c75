"""The linear-probe recipe on the shared Ray cluster: features on Ray Data, grouped CV, an ordinary model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raydetect import registry
from raydetect.config import load_settings
from raydetect.data.images import decode_image
from raydetect.models.bundle import Detector
from raydetect.train.cv import format_cv_table, train_detector
from raydetect.train.probe import FEATURE_COLUMN, extract_features
from tests.cv_support import assert_leave_generator_out, assert_out_of_fold
from tests.datasets import make_kaggle_dataset

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_probe_cv_exports_a_model_that_scores_like_its_probe(ray_cluster, tmp_path: Path) -> None:
    root = make_kaggle_dataset(tmp_path / "data", n_pairs=12, size=48, processed_every=3,
                               generators=("checker", "stripes"))
    settings = load_settings(None, {
        "workdir": str(tmp_path / "work"), "images": {"size": 32},
        "tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-probe"},
        "train": {"recipe": "probe", "backbone": "efficientnet_lite0", "weights": "imagenet", "probe_c": 1.0,
                  "leave_generator_out": True},
        "score": {"max_actors": 1},
    })  # fmt: skip
    outcome = train_detector(str(root), settings, cv=3)

    assert [run.fold for run in outcome.runs] == [0, 1, 2]
    assert "mean ± std over 3 folds" in format_cv_table(outcome.table)
    assert all(run.n_train + run.n_val == 24 for run in outcome.runs)
    detector = Detector.load(outcome.model_uri, device="cpu")
    card = detector.card
    assert card.params["recipe"] == "probe" and card.views["mode"] == "native" and card.metrics["cv_folds"] == 3
    # registered on the way (registry.auto_register): the directory, its data and its generators
    assert outcome.extra["registry_version"] == "1"
    registered = registry.client(settings).get_model_version("raydetect", "1")
    assert registered.source == outcome.model_uri and registered.run_id == outcome.mlflow_run_id
    assert json.loads(registered.tags["train.generators"]) == ["checker", "real", "stripes"]
    assert registered.tags["data_fingerprint"] and registered.tags["metric.cv_folds"] == "3.0"
    # The exported model reproduces the best fold's held-out metrics through the scoring path (48 px images:
    # four 32 px native tiles each, whose features the probe averaged).
    val = outcome.folds[outcome.folds["fold"] == outcome.best_fold]
    probs = np.array([detector.predict_image(decode_image(Path(p).read_bytes())) for p in val["path"]])
    labels = val["label"].astype(int).to_numpy()
    assert float(np.mean((probs >= 0.5) == labels)) == pytest.approx(card.metrics["val_accuracy"])
    assert_out_of_fold(outcome)
    assert_leave_generator_out(outcome, ["checker", "stripes"])
    # Features are cached: a second extraction reads them back, one vector per image.
    features = extract_features(outcome.folds, settings, detector.policy)
    assert len(features) == 24 and len(features[FEATURE_COLUMN].iloc[0]) == 1280
    assert any((tmp_path / "work" / "features").glob("*.parquet"))
