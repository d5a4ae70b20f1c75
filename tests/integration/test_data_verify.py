"""`verify` as a Ray Data job on small generated folders (local and moto S3), and the shortcut audit."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raydetect import storage
from raydetect.data.verify import VerifyOptions, summary_text, verify
from tests.datasets import encode, make_kaggle_dataset, write_bad_files

pytestmark = [pytest.mark.ray]


def make_format_shortcut_dataset(root: Path, n_pairs: int = 12) -> Path:
    """Kaggle layout where real images are JPEG and AI images PNG; same sizes, same content recipe."""
    make_kaggle_dataset(root, n_pairs=n_pairs, size=48, n_test=0)
    csv = pd.read_csv(root / "train.csv")
    for i, row in csv.iterrows():
        if row["label"] == 0:
            old = root / row["file_name"]
            new = old.with_suffix(".jpg")
            buffer = io.BytesIO()
            Image.open(old).convert("RGB").save(buffer, "JPEG", quality=95)
            new.write_bytes(buffer.getvalue())
            old.unlink()
            csv.loc[i, "file_name"] = str(new.relative_to(root))
    csv.to_csv(root / "train.csv", index=False)
    return root


def test_classes_differing_only_by_format_fail_the_audit(tmp_path: Path, ray_cluster: None):
    root = make_format_shortcut_dataset(tmp_path / "ds")
    report = verify(str(root))
    assert not report["ok"]
    flagged = {f["feature"] for f in report["shortcut_audit"]["features"] if f["blocking"]}
    assert "format" in flagged and "width_x_height" not in flagged
    assert report["distributions"]["real"]["format"] == {"JPEG": 12}
    assert report["distributions"]["real"]["jpeg_quality"] == {"95": 12}
    assert report["distributions"]["ai"]["format"] == {"PNG": 12}
    assert "shortcut: 'format' alone separates real from AI" in summary_text(report)


def test_bad_and_missing_files_are_reported_not_fatal(tmp_path: Path, ray_cluster: None):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=6, size=32, n_test=2)
    write_bad_files(root / "bad")
    csv = pd.read_csv(root / "train.csv")
    bad = [{"file_name": f"bad/{n}", "label": 1} for n in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.jpg")]
    pd.concat([csv, pd.DataFrame(bad)]).to_csv(root / "train.csv", index=False)
    (root / "train_data/0002_0.png").unlink()
    report = verify(str(root), options=VerifyOptions(rows_per_block=5, batch_size=3))
    assert report["n_files"] == 12 + 4 + 2 and report["splits"] == {"train": 16, "test": 2}
    assert report["problems"]["by_reason"] == {
        "corrupt": 1, "truncated": 1, "empty": 1, "unsupported_format": 1, "missing": 1
    }  # fmt: skip
    assert not report["ok"] and report["blocking"][0].startswith("5 file(s) cannot be used")
    assert report["class_balance"]["unlabelled"] == 2


@pytest.mark.s3
def test_verify_reads_an_s3_root(tmp_path: Path, s3_bucket: str, ray_cluster: None):
    local = make_kaggle_dataset(tmp_path / "ds", n_pairs=5, size=32, n_test=2)
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{s3_bucket}/ds/{path.relative_to(local).as_posix()}", path.read_bytes())
    remote, here = verify(f"{s3_bucket}/ds"), verify(str(local))
    assert remote["ok"] and remote["root"] == f"{s3_bucket}/ds"
    for key in ("n_files", "problems", "class_balance", "distributions", "exact_duplicates", "shortcut_audit"):
        assert remote[key] == here[key], key


@pytest.mark.slow
def test_verify_a_1000_image_folder(tmp_path: Path, ray_cluster: None):
    """The issue's scale check: 1,000 tiny images in real/ + ai/ (its wall time is printed, not asserted)."""
    rng = np.random.default_rng(0)
    for i in range(500):
        photo = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        big = np.asarray(Image.fromarray(photo).resize((64, 64), Image.Resampling.BICUBIC))
        for folder, array in (("real", big), ("ai", np.clip(big.astype(int) + 9, 0, 255).astype(np.uint8))):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / f"{i:04d}.png").write_bytes(encode(array))
    start = time.perf_counter()
    report = verify(str(tmp_path))
    print(f"\nverify of 1000 images: {time.perf_counter() - start:.1f} s\n{summary_text(report)}")
    assert report["n_files"] == 1000 and report["problems"]["n"] == 0
    assert report["class_balance"]["real"] == 500 and report["near_duplicates"]["offered_as_groups"]
