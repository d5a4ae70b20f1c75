"""Ray Tune (Train V2 driver functions + TuneReportCallback + ASHA) on the shared local cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from raydetect.config import load_settings
from raydetect.train.tune import OBJECTIVE, format_leaderboard, search_space, tune_detector
from tests.datasets import make_kaggle_dataset
from tests.integration.test_train_ray import tiny_settings

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_trials_complete_and_the_best_is_picked(ray_cluster, tmp_path: Path) -> None:
    import mlflow

    root = make_kaggle_dataset(tmp_path / "data", n_pairs=16, size=32)
    settings = tiny_settings(tmp_path)
    space = search_space(
        backbones=["tinycnn"], lr=(1e-4, 5e-3), weight_decay=(1e-5, 1e-3), augment=(0.0, 0.5), epochs=[1, 2]
    )
    out = tmp_path / "tune"
    outcome = tune_detector(str(root), settings, num_samples=2, cv=1, space=space, output=str(out))

    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 2
    assert board["error"].isna().all()
    assert board[OBJECTIVE].notna().all()
    # The best is the highest reported objective among the trials that ran to the end (ASHA may stop one).
    finished = board[board["complete"]]
    assert not finished.empty
    best_row = finished.loc[finished[OBJECTIVE].idxmax()]
    assert outcome.best_objective == pytest.approx(best_row[OBJECTIVE])
    assert outcome.best_config["lr"] == pytest.approx(best_row["lr"])
    assert outcome.best_config["backbone"] == "tinycnn"
    summary = json.loads((out / "best_config.json").read_text())
    assert summary["best_objective"] == pytest.approx(outcome.best_objective)
    # best_config.yaml is a config file `raydetect train --config` accepts.
    best = load_settings(out / "best_config.yaml")
    assert best.train.lr == pytest.approx(best_row["lr"]) and best.train.epochs == int(best_row["epochs"])
    assert best.train.input_filter == best_row["input_filter"] in ("none", "npr")  # searched too
    assert "objective" in format_leaderboard(outcome.leaderboard)

    # MLflow: one sweep run with a nested run per trial.
    client = mlflow.MlflowClient(settings.mlflow_uri())
    experiment = client.get_experiment_by_name("test-train")
    runs = client.search_runs([experiment.experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("kind") == "tune"]
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(sweeps) == 1 and len(trials) == 2
    assert sweeps[0].data.metrics["best_objective"] == pytest.approx(outcome.best_objective)
    assert all(t.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id for t in trials)
