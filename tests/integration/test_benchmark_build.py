"""The benchmark builder end to end on the shared local Ray cluster: a tiny build with all four real
generators (Real-ESRGAN x4plus and anime, waifu2x CUNet through ncnn, SDEdit with a freshly fitted tiny
diffusers UNet), built twice (on Ray, then in-process) for determinism, checked for layout, pairing, one
size/encoding, reuse, and passed through `raydetect.data.verify`. Plus a small build written to S3 (moto)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image

from raydetect import storage
from raydetect.data.benchmark import CARD_FILE, PREVIEW_FILE, build_benchmark
from raydetect.data.benchmark.diffusion import FitConfig

pytestmark = [pytest.mark.slow, pytest.mark.ray]

GENERATORS = ["esrgan", "esrgan-anime", "waifu2x", "ddpm"]
TINY_FIT = FitConfig(channels=(8, 16, 32), size=32, steps=4, batch_size=8, pool=32, seed=0)
SOURCES = ["skimage", "sklearn", "matplotlib"]  # the Debian wallpapers are big; their listing has a unit test


@pytest.fixture(scope="module")
def builds(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    kwargs = dict(n_pairs=8, generators=GENERATORS, sizes=[64], seed=7, sources=SOURCES, fit=TINY_FIT, sdedit_steps=10,
                  hardneg_share=0.5, cache_dir=root / "cache", batch_size=2, max_actors=1, progress=False,
                  log=None)  # fmt: skip
    first = build_benchmark(root / "a", **kwargs)
    second = build_benchmark(root / "b", **{**kwargs, "use_ray": False})  # same bytes without Ray's scheduling
    return root, first, second, kwargs


def _all_rows(out) -> pd.DataFrame:
    train = pd.read_csv(out / "train.csv").assign(split="train")
    test = pd.read_csv(out / "test_labels.csv").rename(columns={"id": "file_name"}).assign(split="test")
    return pd.concat([train, test], ignore_index=True)


def test_layout_columns_and_balance(builds):
    root, first, _, _ = builds
    out = root / "a"
    assert first.built and first.card["executor"] == "ray"
    for name in ("train.csv", "test.csv", "test_labels.csv", CARD_FILE, PREVIEW_FILE, "train_data", "test_data_v2"):
        assert (out / name).exists(), name
    assert list(pd.read_csv(out / "train.csv").columns) == [
        "file_name", "label", "group", "category", "generator", "processing"
    ]  # fmt: skip
    assert list(pd.read_csv(out / "test.csv").columns) == ["id"]
    rows = _all_rows(out)
    assert len(rows) == 16 and rows["label"].value_counts().to_dict() == {0: 8, 1: 8}
    ai = rows[rows["label"] == 1]
    assert ai["generator"].value_counts().to_dict() == dict.fromkeys(GENERATORS, 2)
    assert set(rows.loc[rows["label"] == 0, "generator"]) == {"real"}
    assert set(rows["category"]) <= {"human", "other"}
    assert rows["file_name"].str.startswith("test_data_v2/").eq(rows["split"] == "test").all()
    card = json.loads((out / CARD_FILE).read_text())
    assert card["params"]["generators"] == GENERATORS and card["counts"]["pairs"] == 8
    assert card["diffusion_info"]["config"]["steps"] == TINY_FIT.steps


def test_pairs_share_their_source_photo_group(builds):
    rows = _all_rows(builds[0] / "a")
    per_group = rows.groupby(["group", "label"]).size().unstack(fill_value=0)
    assert (per_group[0] == per_group[1]).all()  # every real crop has its counterpart in the same group
    assert rows.groupby("group")["split"].nunique().max() == 1  # a photo never spans train and test
    assert all(g.split("/")[0] in {"skimage", "sklearn", "matplotlib"} for g in rows["group"])


def test_one_size_one_encoding_no_metadata(builds):
    out = builds[0] / "a"
    facts = set()
    for name in _all_rows(out)["file_name"]:
        with Image.open(out / name) as image:
            facts.add((image.format, image.size, image.mode, tuple(sorted(image.info)), bool(image.getexif())))
    assert len(facts) == 1
    fmt, size, mode, info, exif = facts.pop()
    assert (fmt, size, mode, exif) == ("PNG", (64, 64), "RGB", False)
    assert not set(info) & {"exif", "icc_profile", "dpi", "Software"}


def test_deterministic_for_a_seed_and_reused(builds):
    root, first, second, kwargs = builds
    a, b = root / "a", root / "b"
    for csv in ("train.csv", "test.csv", "test_labels.csv"):
        assert (a / csv).read_bytes() == (b / csv).read_bytes(), csv
    for name in _all_rows(a)["file_name"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert first.card["params"] == second.card["params"]
    again = build_benchmark(a, **kwargs)
    assert not again.built  # same parameters and sources: skipped


def test_verify_passes_the_benchmark(builds):
    from raydetect.config import load_settings
    from raydetect.data.verify import verify

    report = verify(str(builds[0] / "a"), "train", load_settings())
    assert report["ok"], report["blocking"]
    assert report["class_balance"]["real"] == report["class_balance"]["ai"]
    assert not report["problems"]["n"]


@pytest.mark.s3
def test_a_small_build_written_to_s3(s3_bucket):
    uri = f"{s3_bucket}/bench"
    result = build_benchmark(uri, n_pairs=2, generators=["waifu2x"], sizes=[32], seed=0, sources=["sklearn"],
                             use_ray=False, progress=False, log=None)  # fmt: skip
    assert result.built and result.root == uri
    files = storage.list_files(uri)
    assert f"{uri}/{CARD_FILE}" in files and f"{uri}/{PREVIEW_FILE}" in files
    train = pd.read_csv(io.BytesIO(storage.read_bytes(f"{uri}/train.csv")))
    assert all(f"{uri}/{name}" in files for name in train["file_name"])
    assert not build_benchmark(uri, n_pairs=2, generators=["waifu2x"], sizes=[32], seed=0, sources=["sklearn"],
                               use_ray=False, progress=False, log=None).built  # fmt: skip
