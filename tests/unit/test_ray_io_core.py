"""The per-row work of the Ray readers, without Ray: reading URIs and DecodePreprocess on both formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from raydetect.data.images import DecodeLimits, sha256_hex
from raydetect.data.ray_io import DecodePreprocess, read_bytes_batch, read_uris
from tests.datasets import encode, smooth_photo, write_bad_files


def _batch(tmp_path: Path) -> pd.DataFrame:
    bad = write_bad_files(tmp_path / "bad")
    good = tmp_path / "good.png"
    good.write_bytes(encode(smooth_photo(np.random.default_rng(0), 40)))
    paths = [str(good), *(str(p) for p in bad.values()), str(tmp_path / "missing.png")]
    table = read_bytes_batch(pa.table({"path": paths, "label": [1, 0, 0, 0, 0, 1]}))
    return table.to_pandas()


def test_read_uris_reports_missing_and_directories(tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    out = read_uris([str(tmp_path / "a.bin"), str(tmp_path / "none"), str(tmp_path)])
    assert out[0] == (b"abc", None)
    assert out[1][0] == b"" and out[1][1].startswith("missing: ")
    assert out[2][0] == b"" and out[2][1].startswith("unreadable: ")


def test_decode_preprocess_pandas_keeps_columns_and_reports_errors(tmp_path: Path):
    batch = _batch(tmp_path)
    out = DecodePreprocess(size=32)(batch)
    assert list(out.columns) == ["path", "label", "sha256", "image", "error"]
    assert out["error"].iloc[0] is None and out["image"].iloc[0].shape == (3, 32, 32)
    assert out["sha256"].iloc[0] == sha256_hex(Path(batch["path"].iloc[0]).read_bytes())
    reasons = [e.split(":")[0] for e in out["error"].iloc[1:]]
    assert reasons == ["corrupt", "truncated", "empty", "unsupported_format", "missing"]
    assert out["sha256"].iloc[5] is None  # nothing was read
    assert out["sha256"].iloc[3] == sha256_hex(b"")  # the zero-byte file was read
    assert all(not np.any(img) for img in out["image"].iloc[1:])


def test_decode_preprocess_numpy_matches_pandas(tmp_path: Path):
    batch = _batch(tmp_path)
    numpy_batch = {c: batch[c].to_numpy() for c in batch.columns}
    a = DecodePreprocess(size=24)(numpy_batch)
    b = DecodePreprocess(size=24)(batch)
    assert a["image"].shape == (6, 3, 24, 24) and a["image"].dtype == np.float32
    np.testing.assert_array_equal(a["image"], np.stack(b["image"].to_list()))
    assert list(a["error"]) == list(b["error"])
    assert "bytes" not in a


def test_limits_and_normalisation(tmp_path: Path):
    batch = _batch(tmp_path).iloc[:1]
    tiny = DecodePreprocess(size=16, limits=DecodeLimits(max_pixels=100))(batch)
    assert tiny["error"].iloc[0].startswith("too_many_pixels")
    plain = DecodePreprocess(size=16, mean=(0, 0, 0), std=(1, 1, 1))(batch)["image"].iloc[0]
    assert plain.min() >= 0.0 and plain.max() <= 1.0


def test_augmentation_is_seeded_per_row_not_per_batch(tmp_path: Path):
    batch = _batch(tmp_path).iloc[:1]
    doubled = pd.concat([batch, batch], ignore_index=True)
    aug = DecodePreprocess(size=24, augment_seed=3, augment_strength=1.0)
    one = aug(batch)["image"].iloc[0]
    two = aug(doubled)["image"]
    np.testing.assert_array_equal(one, two.iloc[0])
    np.testing.assert_array_equal(one, two.iloc[1])  # same path + seed -> same augmentation
    plain = DecodePreprocess(size=24)(batch)["image"].iloc[0]
    other = [DecodePreprocess(size=24, augment_seed=s, augment_strength=1.0)(batch)["image"].iloc[0] for s in range(4)]
    assert any(not np.array_equal(o, plain) for o in other)
    assert any(not np.array_equal(o, other[0]) for o in other[1:])


def test_decode_preprocess_reads_paths_when_there_are_no_bytes(tmp_path: Path):
    with_bytes = _batch(tmp_path)
    manifest_only = with_bytes.drop(columns=["bytes", "error"])
    a = DecodePreprocess(size=16)(manifest_only)
    b = DecodePreprocess(size=16)(with_bytes)
    assert list(a["error"]) == list(b["error"]) and list(a["sha256"]) == list(b["sha256"])
    np.testing.assert_array_equal(np.stack(a["image"].to_list()), np.stack(b["image"].to_list()))


def test_decode_preprocess_arrow_keeps_column_types(tmp_path: Path):
    batch = _batch(tmp_path)
    table = pa.Table.from_pandas(batch, preserve_index=False).append_column("id", pa.nulls(len(batch), pa.string()))
    out = DecodePreprocess(size=16)(table)
    assert out.column_names == ["path", "label", "id", "sha256", "image", "error"]
    assert out.schema.field("id").type == pa.string() and out.schema.field("error").type == pa.string()
    images = out.column("image").combine_chunks().to_numpy()
    expected = DecodePreprocess(size=16)(batch)
    np.testing.assert_array_equal(images, np.stack(expected["image"].to_list()))
    assert out.column("error").to_pylist() == list(expected["error"])


def test_crop_size_applies_to_augmented_rows_only(tmp_path: Path):
    batch = _batch(tmp_path)
    cropped = DecodePreprocess(size=32, augment_seed=1, augment_strength=0.0, crop_size=16)(batch)
    assert cropped["error"].iloc[0] is None and cropped["image"].iloc[0].shape == (3, 16, 16)
    assert all(img.shape == (3, 16, 16) for img in cropped["image"])  # error rows too: one array shape
    plain = DecodePreprocess(size=32, crop_size=16)(batch)  # no augmentation (validation): the whole image
    assert plain["image"].iloc[0].shape == (3, 32, 32)


def test_validation_rows_get_the_views_scoring_makes(tmp_path: Path):
    from raydetect.data.images import decode_image
    from raydetect.models.views import ViewPolicy, make_views, read_views

    batch = _batch(tmp_path)
    table = pa.Table.from_pandas(batch, preserve_index=False)
    policy = ViewPolicy(size=16)
    out = DecodePreprocess(size=16, policy=policy)(table)
    assert "image" not in out.column_names
    views = read_views(out, policy)
    expected = make_views(decode_image(Path(batch["path"].iloc[0]).read_bytes()), policy)
    assert len(expected) > 1 and np.array_equal(views[0], expected)  # tiles, not one resized crop
    assert all(v.size == 0 for v in views[1:]) and out.column("error").to_pylist()[1].startswith("corrupt")
    augmented = DecodePreprocess(size=16, policy=policy, augment_seed=1, crop_size=8)(table)
    assert "image" in augmented.column_names  # training rows: augmented crops, whatever the policy
