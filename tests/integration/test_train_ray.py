"""Ray Train on the shared local cluster: learning, k-fold CV, checkpoints on (moto) S3, MLflow runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raydetect.config import Settings, load_settings
from raydetect.data.folds import assign_folds
from raydetect.data.images import decode_image
from raydetect.models.bundle import GENERALISATION_FILE, Detector
from raydetect.models.filters import NPRFilter
from raydetect.train.cv import format_cv_table, train_detector
from tests.cv_support import assert_out_of_fold
from tests.datasets import make_kaggle_dataset

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def tiny_settings(tmp_path: Path, **train: object) -> Settings:
    """tinycnn on 32 px images, no augmentation, MLflow in a SQLite file of this test."""
    return load_settings(
        None,
        {
            "workdir": str(tmp_path / "work"),
            "images": {"size": 32},
            "tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-train"},
            "train": {
                "backbone": "tinycnn",
                "weights": "none",
                "epochs": 3,
                "batch_size": 8,
                "lr": 3e-3,
                "augment_strength": 0.0,
                "patience": 5,
                **train,
            },
        },
    )


def _val_probs(outcome, fold: int, detector) -> tuple[np.ndarray, np.ndarray]:
    """P(AI) of the validation fold as scoring and Serve compute it (the model card's view policy)."""
    val = outcome.folds[outcome.folds["fold"] == fold]
    probs = [detector.predict_image(decode_image(Path(p).read_bytes())) for p in val["path"]]
    return np.array(probs), val["label"].astype(int).to_numpy()


@pytest.mark.s3
def test_fold_learns_checkpoints_to_s3_and_logs_to_mlflow(ray_cluster, s3_bucket: str, tmp_path: Path) -> None:
    import mlflow

    root = make_kaggle_dataset(tmp_path / "data", n_pairs=32, size=32)
    settings = tiny_settings(tmp_path, epochs=5, storage_path=f"{s3_bucket}/runs")
    settings.calibration.min_samples = 8  # the validation fold has ~13 images: calibrate it anyway
    outcome = train_detector(str(root), settings, cv=1, fold=0, output=f"{s3_bucket}/models/tiny")
    (run,) = outcome.runs

    # It learns: the training loss falls and validation accuracy beats chance (classes are balanced).
    losses = [h["train_loss"] for h in run.history]
    assert losses[-1] < losses[0], losses
    assert run.best_metrics["val_accuracy"] > 0.5, run.history
    assert {"val_loss", "val_precision", "val_recall", "val_f1", "val_auc"} <= set(run.best_metrics)

    # The best checkpoint lives on the S3 server, is a model directory, and reproduces the validation
    # metrics the worker reported for it: same predictions after the round trip. Its card carries the
    # calibration fitted on that epoch's validation logits, and the detector applies it: its P(AI) has the
    # calibrated NLL, the raw logits the uncalibrated loss the loop reported; a temperature keeps every
    # image on its side of 0.5, so the accuracy at 0.5 is the loop's.
    assert run.checkpoint_uri.startswith(f"{s3_bucket}/runs/"), run.checkpoint_uri
    detector = Detector.load(run.checkpoint_uri, device="cpu")
    assert detector.policy.mode == "native" and detector.card.views is not None  # validated as it is scored
    probs, y = _val_probs(outcome, 0, detector)
    eps = 1e-7
    loss = float(np.mean(-(y * np.log(probs + eps) + (1 - y) * np.log(1 - probs + eps))))
    cal = detector.card.calibration
    assert cal["fitted_on"] == "validation fold 0" and cal["n"] == len(y) and "skipped" not in cal
    assert loss == pytest.approx(cal["nll_after"], rel=1e-3, abs=1e-4)
    assert cal["nll_before"] == pytest.approx(detector.card.metrics["val_loss"], rel=1e-3, abs=1e-4)
    assert detector.card.threshold == cal["threshold"] and detector.card.review_band == cal["review_band"]
    assert float(np.mean((probs >= 0.5) == y)) == pytest.approx(detector.card.metrics["val_accuracy"])
    # The exported model (--output on S3) is the same network with the CV summary in its card.
    exported = Detector.load(outcome.model_uri, device="cpu")
    np.testing.assert_array_equal(_val_probs(outcome, 0, exported)[0], probs)
    assert exported.card.metrics["cv_f1_mean"] == pytest.approx(run.f1)
    assert exported.card.backbone == "tinycnn" and exported.card.image_size == 32
    assert exported.card.calibration == cal

    # MLflow holds the run: params, a nested fold run with one point per epoch, the model as an artifact.
    client = mlflow.MlflowClient(settings.mlflow_uri())
    parent = client.get_run(outcome.mlflow_run_id)
    assert parent.data.params["backbone"] == "tinycnn"
    assert parent.data.metrics["cv_f1_mean"] == pytest.approx(run.f1)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 1
    assert len(client.get_metric_history(children[0].info.run_id, "val_f1")) == len(run.history)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "model")} == {
        "model/model.json",
        "model/weights.pt",
    }


def test_cv_trains_every_fold_without_sharing_groups(ray_cluster, tmp_path: Path) -> None:
    root = make_kaggle_dataset(tmp_path / "data", n_pairs=12, size=32, processed_every=3)
    # two data-parallel workers (DDP over gloo), trained on 24 px native crops, validated on whole 32 px images
    settings = tiny_settings(tmp_path, epochs=1, workers=2, crop_size=24)
    outcome = train_detector(str(root), settings, cv=3)

    assert [run.fold for run in outcome.runs] == [0, 1, 2]
    folds = outcome.folds
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert folds.groupby("group")["fold"].nunique().max() == 1  # a photo and its AI twin share a fold
    for run in outcome.runs:
        assert run.n_val == int((folds["fold"] == run.fold).sum())
        assert run.n_train + run.n_val == len(folds)
        assert run.checkpoint_uri is not None
    table = outcome.table
    assert list(table["fold"]) == [0, 1, 2, "mean", "std"]
    assert outcome.f1_mean == pytest.approx(np.mean([run.f1 for run in outcome.runs]))
    text = format_cv_table(table)
    assert "mean ± std over 3 folds" in text and "f1" in text
    card = Detector.load(outcome.model_uri, device="cpu").card
    assert card.metrics["cv_folds"] == 3
    assert card.image_size == 32 and card.params["crop_size"] == 24  # scoring sees the whole image
    assert_out_of_fold(outcome)  # each checkpoint's validation predictions, joined back to their rows by path


def test_train_cli_writes_a_model_that_raydetect_score_loads(ray_cluster, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from raydetect.cli import app

    root = make_kaggle_dataset(tmp_path / "data", n_pairs=8, size=32, generators=("checker", "stripes"))
    model_dir = tmp_path / "model"
    args = [
        "train", str(root), "--backbone", "tinycnn", "--weights", "none", "--input-filter", "npr", "--epochs", "1",
        "--cv", "1", "--fold", "1", "--batch-size", "8", "--output", str(model_dir), "--leave-generator-out",
        "--set", f"workdir={tmp_path / 'work'}", "--set", "images.size=32", "--set", "train.augment_strength=0",
        "--set", f"tracking.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tinycnn (none): fold 1" in result.output and "wall time" in result.output
    detector = Detector.load(str(model_dir), device="cpu")
    assert detector.card.params["fold"] == 1 and detector.card.params["epochs"] == 1
    # --leave-generator-out: fold 1 trained again without each generator's AI images, validated on them
    assert "leave one generator out" in result.output
    table = pd.read_csv(model_dir / GENERALISATION_FILE)
    rows = assign_folds(pd.read_csv(root / "train.csv"), k=5, seed=0)  # the split the CLI used (no folds.parquet)
    assert table["generator"].tolist() == ["checker", "stripes"] and (table["folds"] == 1).all()
    for generator, n_val in zip(table["generator"], table["n_val"], strict=True):
        assert n_val == int(((rows["fold"] == 1) & (rows["label"].eq(0) | rows["generator"].eq(generator))).sum())
    # the input filter is part of the network, so every loader of the directory rebuilds it
    assert detector.card.input_filter == "npr"
    assert any(isinstance(m, NPRFilter) for m in detector.model.modules())
    # `raydetect score --model DIR` takes the directory as it is (size and normalisation from its card).
    scored = CliRunner().invoke(
        app, ["score", str(root), "--model", str(model_dir), "--output", str(tmp_path / "preds"), "--split", "test"]
    )
    assert scored.exit_code == 0, scored.output
    predictions = pd.read_parquet(next((tmp_path / "preds").glob("run=*")))
    assert len(predictions) == 4 and predictions["error"].isna().all()
    assert predictions["prob_ai"].between(0, 1).all() and set(predictions["model_name"]) == {"raydetect"}
