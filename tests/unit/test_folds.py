"""Fold assignment: stratified, groups never split, deterministic, stored beside train.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raydetect.data.folds import assign_folds, fold_summary, read_folds, with_folds, write_folds
from raydetect.data.manifest import read_manifest
from tests.datasets import make_kaggle_dataset


def _frame(n_groups: int = 60, seed: int = 0) -> pd.DataFrame:
    """Groups of 1-4 rows, 30 % AI overall, labels mixed inside some groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for j in range(int(rng.integers(1, 5))):
            rows.append({"file_name": f"g{g}_{j}.png", "label": int(rng.random() < 0.3), "group": f"g{g}"})
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int64")
    return df


def test_groups_are_never_split_and_folds_are_stratified():
    df = assign_folds(_frame(), k=5, seed=0)
    assert df.groupby("group")["fold"].nunique().max() == 1
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]
    overall = df["label"].mean()
    shares = df.groupby("fold")["label"].mean()
    assert (shares - overall).abs().max() < 0.12
    assert (df["fold_group"] == df["group"]).all()
    summary = fold_summary(df)
    assert summary["rows"].sum() == len(df) and list(summary.columns[:3]) == ["fold", "rows", "groups"]


def test_same_seed_same_folds_other_seed_other_folds():
    df = _frame()
    a, b, c = assign_folds(df, 5, 7), assign_folds(df, 5, 7), assign_folds(df, 5, 8)
    assert a["fold"].tolist() == b["fold"].tolist()
    assert a["fold"].tolist() != c["fold"].tolist()


def test_near_duplicate_groups_used_when_no_group_column():
    df = _frame().drop(columns="group")
    df["near_dup_group"] = [f"n{i // 2}" for i in range(len(df))]
    out = assign_folds(df, 3, 0)
    assert out.groupby("near_dup_group")["fold"].nunique().max() == 1


def test_one_group_per_row_without_group_columns_and_blank_groups():
    df = _frame().drop(columns="group")
    out = assign_folds(df, 4, 0)
    assert out["fold_group"].nunique() == len(df)
    df["group"] = ["x", "x"] + [None] * (len(df) - 2)
    out = assign_folds(df, 4, 0)
    assert out["fold_group"].nunique() == len(df) - 1 and out.loc[0, "fold"] == out.loc[1, "fold"]


def test_bad_inputs_are_explained():
    df = _frame()
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(df, 1)
    with pytest.raises(ValueError, match="need at least 500 groups"):
        assign_folds(df, 500)
    unlabelled = df.copy()
    unlabelled.loc[0, "label"] = pd.NA
    with pytest.raises(ValueError, match="1 row"):
        assign_folds(unlabelled)
    with pytest.raises(ValueError, match="both classes"):
        assign_folds(df[df["label"] == 0])


def test_write_read_and_attach_folds(tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=10, size=16, n_test=0)
    manifest = read_manifest(root)
    folds = assign_folds(manifest, k=5, seed=1)
    uri = write_folds(str(root), folds)
    assert uri == str(root.resolve() / "folds.parquet") and Path(uri).is_file()
    back = read_folds(str(root))
    assert list(back.columns) == ["file_name", "label", "group", "fold_group", "fold"]
    assert back["fold"].tolist() == folds["fold"].tolist() and str(back["label"].dtype) == "Int64"
    attached = with_folds(manifest)
    assert attached["fold"].tolist() == folds["fold"].tolist() and attached.attrs["root"] == manifest.attrs["root"]
    assert attached.groupby("group")["fold"].nunique().max() == 1


def test_read_folds_without_file_says_how_to_make_them(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="raydetect data folds"):
        read_folds(str(tmp_path))
