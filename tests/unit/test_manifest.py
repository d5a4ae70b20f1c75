"""Manifest reading: the Kaggle layout, folder modes, and a clear error for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from raydetect.data.manifest import ManifestError, read_manifest
from tests.datasets import encode, make_kaggle_dataset, smooth_photo


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    return make_kaggle_dataset(tmp_path / "ds", n_pairs=4, size=32, n_test=2)


def _write_csv(root: Path, text: str, name: str = "train.csv") -> None:
    (root / name).write_text(text)


def test_train_manifest_has_typed_columns_and_carries_extras(kaggle: Path):
    df = read_manifest(kaggle, "train")
    assert list(df.columns[:4]) == ["path", "file_name", "label", "split"]
    assert {"group", "category", "generator"} <= set(df.columns)
    assert str(df["label"].dtype) == "Int64" and set(df["label"]) == {0, 1}
    assert (df["split"] == "train").all() and len(df) == 8
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df.loc[0, "path"] == str(kaggle.resolve() / df.loc[0, "file_name"])
    assert df.attrs["root"] == str(kaggle.resolve())
    assert pd.api.types.is_string_dtype(df["group"])  # group ids are kept as strings


def test_unnamed_index_column_is_dropped(kaggle: Path):
    original = pd.read_csv(kaggle / "train.csv")
    original.to_csv(kaggle / "train.csv", index=True)  # pandas writes a leading unnamed index
    df = read_manifest(kaggle)
    assert not any(str(c).startswith("Unnamed") for c in df.columns)
    assert len(df) == len(original)


def test_test_split_is_unlabelled_and_keeps_id(kaggle: Path):
    df = read_manifest(kaggle, "test")
    assert (df["split"] == "test").all() and df["label"].isna().all()
    assert str(df["label"].dtype) == "Int64"
    assert (df["id"] == df["file_name"]).all()


def test_test_labels_are_joined_when_present(kaggle: Path):
    ids = pd.read_csv(kaggle / "test.csv")["id"].tolist()
    pd.DataFrame({"id": ids[:1], "label": [1]}).to_csv(kaggle / "test_labels.csv", index=False)
    df = read_manifest(kaggle, "test")
    assert df["label"].iloc[0] == 1 and df["label"].iloc[1:].isna().all()


def test_test_labels_carry_their_optional_columns(kaggle: Path):
    ids = pd.read_csv(kaggle / "test.csv")["id"].tolist()
    labels = pd.DataFrame({"id": ids, "label": [0, 1] * (len(ids) // 2), "category": "human", "generator": "esrgan"})
    labels.to_csv(kaggle / "test_labels.csv", index=False)
    df = read_manifest(kaggle, "test")
    assert (df["category"] == "human").all() and (df["generator"] == "esrgan").all()
    assert df["label"].tolist() == labels["label"].tolist()


def test_missing_column_is_named(kaggle: Path):
    _write_csv(kaggle, "file_name,target\ntrain_data/0000_0.png,0\n")
    with pytest.raises(ManifestError, match=r"missing required column\(s\) 'label'"):
        read_manifest(kaggle)


@pytest.mark.parametrize("bad", ["2", "-1", "0.5", "cat", ""])
def test_label_outside_0_1_is_rejected_with_line(kaggle: Path, bad: str):
    _write_csv(kaggle, f"file_name,label\ntrain_data/0000_0.png,0\ntrain_data/0000_1.png,{bad}\n")
    with pytest.raises(ManifestError, match=r"label must be 0 \(real\) or 1.*line 3"):
        read_manifest(kaggle)


def test_float_labels_zero_one_are_fine(kaggle: Path):
    _write_csv(kaggle, "file_name,label\ntrain_data/0000_0.png,0.0\ntrain_data/0000_1.png,1.0\n")
    assert read_manifest(kaggle)["label"].tolist() == [0, 1]


@pytest.mark.parametrize("bad", ["../outside.png", "train_data/../../x.png", "/etc/passwd", "s3://b/k.png", ""])
def test_path_escaping_root_is_rejected(kaggle: Path, bad: str):
    _write_csv(kaggle, f"file_name,label\ntrain_data/0000_0.png,0\n{bad},1\n")
    with pytest.raises(ManifestError, match=r"relative to the dataset root.*line 3"):
        read_manifest(kaggle)


def test_inner_dotdot_that_stays_inside_is_fine(kaggle: Path):
    _write_csv(kaggle, "file_name,label\ntest_data_v2/../train_data/0000_0.png,0\n")
    df = read_manifest(kaggle)
    assert df.loc[0, "path"] == str(kaggle.resolve() / "train_data/0000_0.png")


def test_missing_file_is_named_unless_kept(kaggle: Path):
    (kaggle / "train_data/0001_1.png").unlink()
    with pytest.raises(ManifestError, match=r"1 listed file\(s\) do not exist.*0001_1.png"):
        read_manifest(kaggle)
    assert len(read_manifest(kaggle, missing="keep")) == 8


def test_empty_and_headerless_csvs(kaggle: Path):
    _write_csv(kaggle, "file_name,label\n")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(kaggle)
    _write_csv(kaggle, "")
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(kaggle)


def test_plain_folder_is_unlabelled(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "sub/b.PNG", "c.webp"):
        (tmp_path / name).write_bytes(encode(smooth_photo(__import__("numpy").random.default_rng(0), 16)))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    df = read_manifest(tmp_path, "auto")
    assert sorted(df["file_name"]) == ["a.jpg", "c.webp", "sub/b.PNG"]
    assert df["label"].isna().all() and (df["split"] == "folder").all()


def test_real_ai_folders_are_labelled(tmp_path: Path):
    import numpy as np

    for name in ("real/x.png", "real/deep/y.png", "ai/z.png", "other/w.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encode(smooth_photo(np.random.default_rng(0), 16)))
    for split in ("train", "auto", "folder"):
        df = read_manifest(tmp_path, split).set_index("file_name")
        assert df["label"].to_dict() == {"ai/z.png": 1, "real/deep/y.png": 0, "real/x.png": 0}
        assert (df["split"] == "train").all()


def test_bad_roots(tmp_path: Path):
    with pytest.raises(ManifestError, match="not a directory"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no train.csv"):
        read_manifest(tmp_path, "train")
    with pytest.raises(ManifestError, match="no image files"):
        read_manifest(tmp_path, "auto")
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path, "test")
