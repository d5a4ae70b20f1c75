"""benchmarks/train_cv_inmemory.py: the same folds and loop as `raydetect train --cv`, without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raydetect.config import load_settings
from raydetect.data.manifest import read_manifest
from raydetect.train.cv import fold_assignment
from raydetect.train.trainer import labelled_rows
from tests.datasets import make_kaggle_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_cv_inmemory.py"
TINY = ["--set", "images.size=32", "--set", "train.batch_size=8", "--set", "train.lr=3e-3"]


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_kaggle_dataset(tmp_path_factory.mktemp("inmem") / "data", n_pairs=20, size=32)


def test_parallel_variants_cover_every_image_once_in_the_trainers_folds(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    done = run_script(
        str(dataset), "--cv", "3", "--out", str(out), *TINY, "--set", "train.epochs=6",
        "--variant", "whole=train.backbone=tinycnn,train.weights=none",
        "--variant", "crops=train.backbone=tinycnn,train.weights=none,train.crop_size=24,train.augment_views=3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== whole" in done.stdout and "== crops" in done.stdout and "mean ± std over 3 folds" in done.stdout
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.loc[["whole", "crops"], "folds"].tolist() == [3, 3]
    auc_mean, _, auc_std = summary.loc["whole", "auc"].split()
    assert float(auc_mean) > 0.8 and float(auc_std) >= 0  # the checker pattern is learnt: the loop really trains

    settings = load_settings(None, ["images.size=32"])
    expected = fold_assignment(labelled_rows(read_manifest(dataset, "train", settings)), 3, settings, str(dataset))
    for name in ("whole", "crops"):
        oof = pd.read_parquet(out / f"oof_{name}.parquet")
        assert sorted(oof["file_name"]) == sorted(expected["file_name"])  # every image scored exactly once
        assert oof.groupby("group")["fold"].nunique().max() == 1  # no photo on both sides of a split
        assert dict(zip(oof["file_name"], oof["fold"], strict=True)) == dict(
            zip(expected["file_name"], expected["fold"], strict=True)
        )
        assert oof["prob"].between(0, 1).all()
        runs = json.loads((out / f"{name}.json").read_text())["runs"]
        assert [run["fold"] for run in runs] == [0, 1, 2]
        assert all(1 <= run["best_epoch"] <= len(run["history"]) <= 6 for run in runs)
        # the reported fold F1 is the best epoch's, recomputed from the saved out-of-fold probabilities
        for run in runs:
            part = oof[oof["fold"] == run["fold"]]
            tp = int(((part["prob"] >= 0.5) & (part["label"] == 1)).sum())
            f1 = 2 * tp / (int((part["prob"] >= 0.5).sum()) + int(part["label"].sum()))
            assert f1 == pytest.approx(run["best_metrics"]["val_f1"], abs=1e-6)


def test_deadline_cuts_folds_and_leaves_them_out_of_the_mean(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    done = run_script(
        str(dataset), "--cv", "3", "--out", str(out), *TINY, "--set", "train.epochs=400",
        "--set", "train.patience=400", "--deadline-s", "0.5",
        "--variant", "slow=train.backbone=tinycnn,train.weights=none",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((out / "slow.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["params"]["cut_by_deadline"] and len(runs[0]["history"]) < 400
    assert "cut by the deadline (not in the mean): folds [0]" in done.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert summary["folds"].tolist() == [0] and summary["f1"].isna().all()  # "n/a": no folds finished


def test_bad_variant_is_a_clear_usage_error(dataset: Path, tmp_path: Path) -> None:
    done = run_script(str(dataset), "--out", str(tmp_path), "--variant", "nosettings")
    assert done.returncode == 2 and "NAME=KEY=VALUE" in done.stderr


def test_a_failing_variant_fails_the_run_and_the_others_are_still_reported(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    done = run_script(
        str(dataset), "--cv", "2", "--out", str(out), *TINY, "--set", "train.epochs=1",
        "--variant", "good=train.backbone=tinycnn,train.weights=none",
        "--variant", "bad=train.backbone=nosuchnet,train.weights=none",
    )  # fmt: skip
    assert done.returncode == 1 and "variants that failed: bad" in done.stderr
    assert "unknown backbone 'nosuchnet'" in done.stderr
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.loc["good", "folds"] == 2 and summary.loc["bad", "folds"] == 0
