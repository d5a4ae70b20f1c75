"""Ray Data readers on a real local cluster: error rows instead of failures, and S3 == local."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raydetect import storage
from raydetect.data.manifest import read_manifest
from raydetect.data.ray_io import image_dataset, read_image_bytes
from tests.datasets import make_kaggle_dataset, write_bad_files

pytestmark = [pytest.mark.ray]


def _upload(local_root: Path, s3_root: str) -> None:
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{s3_root}/{path.relative_to(local_root).as_posix()}", path.read_bytes())


def _rows_by_name(ds) -> dict[str, dict]:
    return {row["file_name"]: row for row in ds.take_all()}


def test_bad_files_become_error_rows(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=3, size=32, n_test=0)
    bad = write_bad_files(root / "bad")
    df = read_manifest(root, "folder")
    raw = _rows_by_name(read_image_bytes(df, rows_per_block=4))
    assert len(raw) == 6 + len(bad) and raw["bad/empty.jpg"]["bytes"] == b""
    assert raw["train_data/0000_0.png"]["error"] is None and len(raw["train_data/0000_0.png"]["bytes"]) > 0

    (root / "train_data/0001_1.png").unlink()  # listed but missing: an error row too (missing="keep")
    df = read_manifest(root, "train", missing="keep")
    folder = read_manifest(root, "folder")
    df = pd.concat([df, folder[folder["file_name"].str.startswith("bad/")]], ignore_index=True)
    rows = _rows_by_name(image_dataset(df, size=32, batch_size=4, rows_per_block=3))
    assert len(rows) == len(df)
    errors = {name: row["error"].split(":")[0] for name, row in rows.items() if row["error"]}
    assert errors == {
        "train_data/0001_1.png": "missing",
        "bad/corrupt.jpg": "corrupt",
        "bad/truncated.jpg": "truncated",
        "bad/empty.jpg": "empty",
        "bad/notes.jpg": "unsupported_format",
    }
    good = rows["train_data/0000_0.png"]
    assert good["image"].shape == (3, 32, 32) and good["image"].dtype == np.float32 and good["image"].any()
    assert not rows["bad/corrupt.jpg"]["image"].any()
    assert good["group"] == "photo0000" and good["label"] == 0  # manifest columns pass through


@pytest.mark.s3
def test_same_manifest_from_s3_and_local_gives_identical_batches(tmp_path: Path, s3_bucket: str, ray_cluster: None):
    local = make_kaggle_dataset(tmp_path / "ds", n_pairs=6, size=48, n_test=2, fmt="JPEG")
    s3_root = f"{s3_bucket}/kaggle"
    _upload(local, s3_root)

    manifests: dict[str, pd.DataFrame] = {}
    for name, root in (("local", str(local)), ("s3", s3_root)):
        parts = [read_manifest(root, split) for split in ("train", "test")]  # labelled + unlabelled rows
        manifests[name] = pd.concat(parts, ignore_index=True)
    assert manifests["s3"]["path"].str.startswith(f"{s3_root}/").all()
    assert manifests["local"].drop(columns="path").equals(manifests["s3"].drop(columns="path"))

    batches = {}
    for name, df in manifests.items():
        ds = image_dataset(df, size=40, batch_size=5, rows_per_block=4)
        batches[name] = pd.concat(list(ds.iter_batches(batch_size=5, batch_format="pandas")), ignore_index=True)
    a, b = (batches[n].sort_values("file_name", ignore_index=True) for n in ("local", "s3"))
    assert len(a) == 14
    assert set(a.columns) == set(b.columns) == {*manifests["local"].columns, "sha256", "image", "error"}
    assert a["error"].isna().all() and b["error"].isna().all()
    np.testing.assert_array_equal(np.stack(a["image"].to_list()), np.stack(b["image"].to_list()))
    pd.testing.assert_frame_equal(a.drop(columns=["path", "image"]), b.drop(columns=["path", "image"]))


@pytest.mark.s3
def test_missing_s3_object_is_an_error_row(s3_bucket: str, tmp_path: Path, ray_cluster: None):
    local = make_kaggle_dataset(tmp_path / "ds", n_pairs=2, size=16, n_test=0)
    s3_root = f"{s3_bucket}/gone"
    _upload(local, s3_root)
    import boto3

    boto3.client("s3").delete_object(Bucket=s3_bucket[5:], Key="gone/train_data/0000_1.png")
    df = read_manifest(s3_root, missing="keep")
    rows = _rows_by_name(image_dataset(df, size=16, batch_size=2))
    assert rows["train_data/0000_1.png"]["error"].startswith("missing: ")
    assert sum(r["error"] is None for r in rows.values()) == 3


def test_augmented_dataset_is_deterministic(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=3, size=48, n_test=0)
    df = read_manifest(root)
    runs = [
        _rows_by_name(image_dataset(df, size=32, augment=True, augment_seed=5, batch_size=bs, rows_per_block=bs))
        for bs in (2, 5)
    ]
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name]["image"], runs[1][name]["image"])


@pytest.mark.timeout(300)
def test_image_dataset_runs_when_other_actors_hold_most_cpus(tmp_path: Path, ray_cluster: None):
    """On 2 cores a model pool or Ray Train workers hold CPUs: reading + decoding must still progress with
    only half a CPU free (a read stage that needs a whole CPU would wait forever)."""
    import ray

    @ray.remote
    class Holder:
        def ready(self) -> bool:
            return True

    free = ray.available_resources().get("CPU", 0)
    holder = Holder.options(num_cpus=free - 0.5).remote()
    try:
        ray.get(holder.ready.remote())
        root = make_kaggle_dataset(tmp_path / "ds", n_pairs=3, size=32, n_test=0)
        rows = image_dataset(read_manifest(root), size=16, batch_size=2, rows_per_block=2).take_all()
        assert len(rows) == 6 and all(r["error"] is None for r in rows)
    finally:
        ray.kill(holder)
