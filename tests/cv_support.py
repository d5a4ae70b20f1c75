"""Checks shared by the cross-validation tests of both training recipes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from raydetect.models.bundle import CV_PREDICTIONS_FILE, GENERALISATION_FILE
from raydetect.train.cv import format_cv_table, format_generalisation


def assert_out_of_fold(outcome) -> None:
    """The CV's out-of-fold rows: each training row once, in its own fold, reproducing each fold's metrics and
    per-condition figures; written beside the exported model."""
    oof = outcome.predictions
    assert sorted(oof["path"]) == sorted(outcome.folds["path"])
    folds = outcome.folds.set_index("path")["fold"]
    assert (oof["fold"].to_numpy() == folds.loc[oof["path"]].to_numpy()).all()
    table = outcome.table.set_index("fold")
    for run in outcome.runs:
        rows = oof[oof["fold"] == run.fold]
        correct = (rows["prob_ai"] >= 0.5) == (rows["label"] == 1)
        assert float(correct.mean()) == pytest.approx(run.best_metrics["val_accuracy"])
        untouched = rows[rows["processing"] == "none"]
        real_processed = rows[(rows["processing"] != "none") & (rows["label"] == 0)]
        expected = float((real_processed["prob_ai"] < 0.5).mean())
        assert table.loc[run.fold, "real_processed_acc"] == pytest.approx(expected, nan_ok=True)
        assert 0 <= table.loc[run.fold, "f1_as_generated"] <= 1 or untouched["label"].nunique() < 2
    assert "real_processed_acc" in format_cv_table(outcome.table)
    saved = pd.read_parquet(Path(outcome.model_uri) / CV_PREDICTIONS_FILE)
    assert len(saved) == len(oof) and {"fold", "logit", "prob_ai", "processing", "generator"} <= set(saved.columns)



def assert_leave_generator_out(outcome, generators: list[str]) -> None:
    """One row per held-out generator, validated on the real images and that generator's AI images only (every
    fold's), saved beside the model and printable."""
    table = outcome.generalisation.set_index("generator")
    assert list(table.index) == generators and (table["folds"] == len(outcome.runs)).all()
    rows = outcome.folds
    for generator in generators:
        expected = int((rows["label"].eq(0) | rows["generator"].eq(generator)).sum())
        assert table.loc[generator, "n_val"] == expected
        assert 0 <= table.loc[generator, "ai_caught"] <= 1 and 0 <= table.loc[generator, "real_passed"] <= 1
    saved = pd.read_csv(Path(outcome.model_uri) / GENERALISATION_FILE)
    assert saved["generator"].tolist() == generators
    assert "leave one generator out" in format_generalisation(outcome.generalisation)
