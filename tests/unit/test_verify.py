"""verify's plain-Python core: per-file facts, JPEG quality, dHash near-duplicates, the shortcut audit and
the analysis, run on real files without Ray (read_bytes_batch + inspect_batch are what the Ray job maps)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from raydetect.data.manifest import read_manifest
from raydetect.data.ray_io import read_bytes_batch
from raydetect.data.verify import (
    VerifyOptions,
    analyse,
    dhash,
    inspect_batch,
    inspect_bytes,
    jpeg_quality,
    near_duplicate_components,
    near_duplicate_groups,
    shortcut_audit,
    summary_text,
)
from tests.datasets import encode, make_kaggle_dataset, smooth_photo, write_bad_files


def facts_of(df: pd.DataFrame) -> pd.DataFrame:
    """What the Ray job computes, without Ray."""
    keep = [c for c in ("path", "file_name", "label", "split", "group") if c in df.columns]
    table = inspect_batch(read_bytes_batch(pa.Table.from_pandas(df[keep], preserve_index=False)))
    facts = table.to_pandas()
    facts["label"] = facts["label"].astype("Int64")
    for column in ("error", "dhash", "sha256"):
        facts[column] = facts[column].astype("object").where(facts[column].notna(), None)
    return facts


def _jpeg(array: np.ndarray, quality: int, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_recovered_from_the_quantisation_tables(quality: int):
    facts = inspect_bytes(_jpeg(smooth_photo(np.random.default_rng(0), 32), quality))
    assert facts["format"] == "JPEG" and facts["jpeg_quality"] == quality
    assert facts["jpeg_qtables"] and facts["jpeg_subsampling"] == "4:2:0" and facts["error"] is None


def test_facts_of_png_jpeg_metadata_and_bad_files(tmp_path: Path):
    photo = smooth_photo(np.random.default_rng(0), 40)
    png = inspect_bytes(encode(photo, "PNG"))
    assert (png["format"], png["width"], png["height"], png["mode"]) == ("PNG", 40, 40, "RGB")
    assert png["jpeg_quality"] is None and png["metadata"] == "none" and len(png["dhash"]) == 16
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    tagged = inspect_bytes(_jpeg(photo, 80, exif=exif.tobytes(), subsampling=0))
    assert tagged["metadata"] == "exif" and tagged["jpeg_subsampling"] == "4:4:4"
    assert jpeg_quality(None) is None
    bad = write_bad_files(tmp_path)
    reasons = {k: inspect_bytes(p.read_bytes())["error"].split(":")[0] for k, p in bad.items()}
    assert reasons == {
        "corrupt": "corrupt", "truncated": "truncated", "empty": "empty", "not_image": "unsupported_format"
    }  # fmt: skip
    assert inspect_bytes(b"")["file_size"] == 0


def test_dhash_is_stable_under_small_changes_and_differs_across_images():
    rng = np.random.default_rng(0)
    a, b = smooth_photo(rng, 64), smooth_photo(rng, 64)
    ha = dhash(Image.fromarray(a))
    variants = [
        Image.open(io.BytesIO(_jpeg(a, 60))),
        Image.fromarray(a).resize((48, 48)),
        Image.fromarray(np.clip(a.astype(int) + 6, 0, 255).astype(np.uint8)),
    ]
    assert all(bin(ha ^ dhash(v)).count("1") <= 4 for v in variants)
    assert bin(ha ^ dhash(Image.fromarray(b))).count("1") > 12


def _brute_force(hashes: list[int], d: int) -> list[set[int]]:
    n = len(hashes)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if bin(hashes[i] ^ hashes[j]).count("1") <= d:
                parent[find(j)] = find(i)
    groups: dict[int, set[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return sorted(groups.values(), key=min)


def test_near_duplicate_banding_matches_brute_force():
    rng = np.random.default_rng(1)
    base = [int(x) for x in rng.integers(0, 2**63, size=40, dtype=np.int64)]
    hashes = list(base)
    for h in base[:20]:  # near copies: flip 1-6 random bits
        flips = rng.choice(64, size=int(rng.integers(1, 7)), replace=False)
        hashes.append(h ^ int(sum(1 << int(f) for f in flips)))
    hashes += base[:3]  # exact copies
    for d in (0, 2, 4, 6):
        comp = near_duplicate_components([f"{h:016x}" for h in hashes], d)
        got: dict[int, set[int]] = {}
        for i, c in enumerate(comp):
            got.setdefault(int(c), set()).add(i)
        assert sorted(got.values(), key=min) == _brute_force(hashes, d)


def test_near_duplicate_groups_names_clusters_and_skips_missing():
    hashes = pd.Series(["00000000000000ff", None, "00000000000000fe", "ffffffff00000000", "0000000000000000"])
    groups = near_duplicate_groups(hashes, max_distance=1)
    assert groups.tolist() == ["nd00000", None, "nd00000", None, None]
    assert near_duplicate_groups(hashes, max_distance=8).tolist() == ["nd00000", None, "nd00000", None, "nd00000"]
    big = near_duplicate_groups(pd.Series(["0" * 16] * 3000), 4)  # one huge bucket
    assert big.nunique() == 1


def _labelled(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (n // 2))
    facts = pd.DataFrame(
        {
            "label": pd.array(labels, dtype="Int64"),
            "error": [None] * n,
            "format": ["PNG"] * n,
            "width": rng.integers(100, 4000, n),  # unique sizes: no signal
            "height": rng.integers(100, 4000, n),
            "mode": ["RGB"] * n,
            "jpeg_quality": [None] * n,
            "jpeg_qtables": [None] * n,
            "jpeg_subsampling": [None] * n,
            "metadata": ["none"] * n,
            "file_size": np.where(labels == 1, 5000, 9000) + rng.integers(0, 100, n),
        }
    )
    return facts, labels


def test_shortcut_audit_flags_format_not_unique_sizes_and_reports_file_size():
    facts, labels = _labelled()
    audit = {f["feature"]: f for f in shortcut_audit(facts)["features"]}
    assert audit["format"]["auc"] == 0.5 and audit["metadata"]["auc"] == 0.5  # constant: exactly chance
    assert all(f["auc"] >= 0.5 for f in audit.values())
    assert audit["width_x_height"]["auc"] < 0.9 and not audit["width_x_height"]["blocking"]
    assert audit["file_size"]["separates"] and not audit["file_size"]["blocking"]
    assert not any(f["blocking"] for f in audit.values())
    facts["format"] = np.where(labels == 1, "PNG", "JPEG")
    audit = {f["feature"]: f for f in shortcut_audit(facts)["features"]}
    assert audit["format"]["auc"] == 1.0 and audit["format"]["blocking"]
    facts["format"] = "PNG"
    facts["jpeg_quality"] = np.where(labels == 1, 90, np.where(np.arange(len(labels)) % 4 == 0, 75, 95))
    audit = {f["feature"]: f for f in shortcut_audit(facts)["features"]}
    assert audit["jpeg_quality"]["blocking"] and audit["jpeg_quality"]["method"] == "category"  # non-monotonic
    assert shortcut_audit(facts[labels == 0])["skipped"]


def test_analyse_clean_kaggle_dataset_passes_with_file_size_reported(tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=12, size=48, n_test=0)
    report = analyse(facts_of(read_manifest(root)))
    assert report["ok"] and report["blocking"] == []
    assert report["class_balance"] == {
        "real": 12, "ai": 12, "unlabelled": 0, "ai_share": 0.5,
        "by_split": {"train": {"real": 12, "ai": 12, "unlabelled": 0}},
    }  # fmt: skip
    assert report["distributions"]["real"]["format"] == {"PNG": 12}
    assert report["distributions"]["ai"]["width_x_height"] == {"48x48": 12}
    near = report["near_duplicates"]
    assert near["n_clusters"] == 12 and near["cross_label"] == 12 and not near["offered_as_groups"]
    assert near["span_several_groups"] == 0
    assert "RESULT: PASS" in summary_text(report)


def test_analyse_blocks_on_cross_label_duplicates_and_bad_files(tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=6, size=32, n_test=0)
    write_bad_files(root / "bad")
    (root / "train_data/dup.png").write_bytes((root / "train_data/0000_0.png").read_bytes())
    (root / "train_data/copy.png").write_bytes((root / "train_data/0001_1.png").read_bytes())
    csv = pd.read_csv(root / "train.csv")
    extra = [
        {"file_name": "train_data/dup.png", "label": 1},  # the bytes of a real image, labelled AI
        {"file_name": "train_data/copy.png", "label": 1},  # same label: a warning
        *({"file_name": f"bad/{n}", "label": 0} for n in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.jpg")),
        {"file_name": "train_data/gone.png", "label": 1},
    ]
    pd.concat([csv, pd.DataFrame(extra)]).drop(columns="group").to_csv(root / "train.csv", index=False)
    report = analyse(facts_of(read_manifest(root, missing="keep")))
    assert not report["ok"]
    assert report["problems"]["by_reason"] == {
        "corrupt": 1, "truncated": 1, "empty": 1, "unsupported_format": 1, "missing": 1
    }  # fmt: skip
    assert any("cannot be used" in b for b in report["blocking"])
    assert any("carry both labels" in b for b in report["blocking"])
    exact = report["exact_duplicates"]
    assert exact["n_clusters"] == 2 and exact["cross_label"] == 1 and exact["clusters"][0]["cross_label"]
    assert report["near_duplicates"]["offered_as_groups"]
    relaxed = analyse(facts_of(read_manifest(root, missing="keep")), VerifyOptions(allow_bad_files=True))
    assert not any("cannot be used" in b for b in relaxed["blocking"])
    assert any("cannot be used" in w for w in relaxed["warnings"])
    text = summary_text(report)
    assert "RESULT: FAIL" in text and "bad/empty.jpg: empty" in text


def test_analyse_blocks_on_a_file_listed_with_both_labels(tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "ds", n_pairs=4, size=32, n_test=0)
    csv = pd.read_csv(root / "train.csv")
    twin = csv.iloc[[0]].assign(label=1)
    pd.concat([csv, twin]).to_csv(root / "train.csv", index=False)
    report = analyse(facts_of(read_manifest(root)))
    assert any("listed with both labels" in b for b in report["blocking"])


def test_unlabelled_folder_skips_the_audit(tmp_path: Path):
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(encode(smooth_photo(np.random.default_rng(i), 32)))
    report = analyse(facts_of(read_manifest(tmp_path, "folder")))
    assert report["ok"] and report["shortcut_audit"]["skipped"]
    assert report["class_balance"]["unlabelled"] == 4 and list(report["distributions"]) == ["unlabelled"]


def _textured(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    noise = rng.integers(-40, 41, (size, size, 3))
    return np.clip(smooth_photo(rng, size).astype(int) + noise, 0, 255).astype(np.uint8)


def _blurred(image: np.ndarray, radius: float) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def test_sharpness_audit_separates_blurred_from_sharp_and_not_matched_classes():
    from raydetect.data.content import CONTENT_FEATURES

    rng = np.random.default_rng(5)
    photos = [_textured(rng) for _ in range(40)]
    labels = np.array([0, 1] * 20)

    def audit(images, **kwargs):
        rows = [inspect_bytes(encode(image)) for image in images]
        facts = pd.DataFrame(rows).assign(label=pd.array(labels, dtype="Int64"))
        return {f["feature"]: f for f in shortcut_audit(facts, **kwargs)["features"]}

    # AI images (odd rows) blurred, real ones sharp: sharpness alone gives the label away
    skewed = audit([p if y == 0 else _blurred(p, 1.2) for p, y in zip(photos, labels, strict=True)])
    for name in CONTENT_FEATURES:
        assert skewed[name]["auc"] > 0.95 and skewed[name]["group"] == "content"
        assert skewed[name]["separates"] and not skewed[name]["blocking"]  # reported, not blocking by default
    # the same blur on a random half of both classes: near chance
    coin = np.random.default_rng(6).random(40) < 0.5
    matched = audit([_blurred(p, 1.2) if c else p for p, c in zip(photos, coin, strict=True)])
    for name in CONTENT_FEATURES:
        assert matched[name]["auc"] < 0.7, matched[name]
    blocked = audit([p if y == 0 else _blurred(p, 1.2) for p, y in zip(photos, labels, strict=True)],
                    content_limit=0.6)  # fmt: skip
    assert blocked["laplacian_ratio"]["blocking"] and not blocked["format"]["blocking"]


def test_binned_auc_finds_a_band_that_stands_for_one_class():
    from raydetect.data.verify import binned_auc, content_auc, numeric_auc

    rng = np.random.default_rng(7)
    labels = np.array([0, 1] * 200)
    values = pd.Series(np.where(labels == 1, rng.normal(0, 0.3, 400), rng.choice([-3.0, 3.0], 400)))
    assert numeric_auc(values, labels) < 0.6  # AI in the middle, real on both sides: no rank order
    assert binned_auc(values, labels) > 0.9
    assert content_auc(values, labels)[1] == "bins"
