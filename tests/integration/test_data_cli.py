"""`raydetect data verify` and `raydetect data folds` through the real CLI (in-process, shared Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from raydetect.cli import app
from raydetect.data.folds import read_folds
from tests.datasets import make_kaggle_dataset
from tests.integration.test_data_verify import make_format_shortcut_dataset

pytestmark = [pytest.mark.ray]
runner = CliRunner()


def test_verify_clean_dataset_exits_0_and_writes_json(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=8, size=32, n_test=2)
    report_path = tmp_path / "out" / "report.json"
    result = runner.invoke(app, ["data", "verify", str(root), "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "RESULT: PASS" in result.output and "Shortcut audit" in result.output
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["n_files"] == 18 and report["options"]["auc_threshold"] == 0.9


def test_verify_shortcut_dataset_exits_1(tmp_path: Path, ray_cluster: None):
    root = make_format_shortcut_dataset(tmp_path / "ds", n_pairs=8)
    groups = tmp_path / "groups.csv"
    result = runner.invoke(app, ["data", "verify", str(root), "--groups-out", str(groups)])
    assert result.exit_code == 1, result.output
    assert "RESULT: FAIL" in result.output and "'format' alone separates" in result.output
    assert list(pd.read_csv(groups).columns) == ["file_name", "group"]


def test_verify_bad_manifest_exits_1_with_the_reason(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=2, size=16, n_test=0)
    (root / "train.csv").write_text("file_name,label\ntrain_data/0000_0.png,7\n")
    result = runner.invoke(app, ["data", "verify", str(root)])
    assert result.exit_code == 1 and "label must be 0 (real) or 1" in result.output


def test_folds_keep_groups_whole(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=10, size=16, n_test=0)
    result = runner.invoke(app, ["data", "folds", str(root), "--k", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "grouped by the `group` column" in result.output and "folds.parquet" in result.output
    folds = read_folds(str(root))
    assert len(folds) == 20 and folds.groupby("group")["fold"].nunique().max() == 1
    assert folds.groupby("fold")["label"].mean().tolist() == [0.5] * 5


def test_folds_without_group_column_use_near_duplicates(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=10, size=32, n_test=0)
    pd.read_csv(root / "train.csv").drop(columns="group").to_csv(root / "train.csv", index=False)
    result = runner.invoke(app, ["data", "folds", str(root), "--k", "4"])
    assert result.exit_code == 0, result.output
    assert "near-duplicate clusters (10 clusters, 20 images)" in result.output
    folds = read_folds(str(root))
    pair = folds["file_name"].str.extract(r"(\d{4})_")[0]
    assert folds.groupby(pair)["fold"].nunique().max() == 1  # each real photo + its AI counterpart together
    result = runner.invoke(app, ["data", "folds", str(root), "--k", "4", "--no-near-dups"])
    assert result.exit_code == 0 and "one group per image" in result.output


def test_folds_report_bad_input(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=2, size=16, n_test=0)
    result = runner.invoke(app, ["data", "folds", str(root), "--k", "5"])
    assert result.exit_code == 1 and "need at least 5 groups" in result.output
