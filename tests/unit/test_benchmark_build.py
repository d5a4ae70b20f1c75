"""build_benchmark without Ray (use_ray=False): layout, card, reuse, refusal, preview. The Ray job, all
four real generators and `verify` are in tests/integration/test_benchmark_build.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raydetect.data.benchmark import CARD_FILE, PREVIEW_FILE, BenchmarkError, build_benchmark


def _noisy(image: np.ndarray, seed: int) -> np.ndarray:
    """A stand-in generator: the crop plus seeded noise."""
    noise = np.random.default_rng(seed).integers(-20, 21, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def _noisy_factory():
    return _noisy


def _build(out, **kwargs):
    args = dict(n_pairs=6, generators=["waifu2x", "noisy"], size=32, seed=1, sources=["sklearn", "matplotlib"],
                use_ray=False, progress=False, factories={"noisy": _noisy_factory}, log=None)  # fmt: skip
    args.update(kwargs)
    return build_benchmark(out, **args)


def test_local_build_layout_card_and_reuse(tmp_path):
    out = tmp_path / "bench"
    result = _build(out)
    assert result.built
    train = pd.read_csv(out / "train.csv")
    test = pd.read_csv(out / "test.csv")
    labels = pd.read_csv(out / "test_labels.csv")
    assert list(train.columns) == ["file_name", "label", "group", "category", "generator", "processing"]
    assert list(test.columns) == ["id"]
    assert list(labels.columns) == ["id", "label", "group", "category", "generator", "processing"]
    assert len(train) + len(test) == 12 and test["id"].tolist() == labels["id"].tolist()
    both = pd.concat([train.rename(columns={"file_name": "id"}), labels])
    assert both["label"].value_counts().to_dict() == {0: 6, 1: 6}
    assert set(both["generator"]) == {"real", "waifu2x", "noisy"}
    assert set(train["group"]).isdisjoint(labels["group"])  # a photo is on one side only
    for name in both["id"]:
        with Image.open(out / name) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGB")
    card = json.loads((out / CARD_FILE).read_text())
    assert card["params"]["n_pairs"] == 6 and card["counts"]["images"] == 12
    assert {s["source"] for s in card["sources"]} == {"sklearn", "matplotlib"}
    with Image.open(out / PREVIEW_FILE) as preview:
        assert preview.width > 4 * 32
    # the same parameters: reused; other parameters: rebuilt (stale files cleared)
    assert not _build(out).built
    again = _build(out, seed=2)
    assert again.built
    files = {p.name for p in (out / "train_data").iterdir()} | {p.name for p in (out / "test_data_v2").iterdir()}
    assert len(files) == 12


def test_jpeg_encoding_and_a_non_benchmark_folder(tmp_path):
    out = tmp_path / "jpeg"
    _build(out, encoding="jpeg", jpeg_quality=90, generators=["noisy"], n_pairs=3)
    names = pd.read_csv(out / "train.csv")["file_name"]
    tables = set()
    for name in names:
        data = (out / name).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and not image.getexif()
            tables.add(repr(image.quantization))
    assert len(tables) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(BenchmarkError, match="not empty"):
        _build(tmp_path / "mine")
    assert (tmp_path / "mine" / "holiday.jpg").exists()  # nothing lost
    with pytest.raises(BenchmarkError, match="unknown generator"):
        _build(tmp_path / "x", generators=["midjourney"])
    with pytest.raises(BenchmarkError, match="multiple of 4"):
        _build(tmp_path / "x", size=30)


def test_cli_build_benchmark(tmp_path):
    from typer.testing import CliRunner

    from raydetect.cli import app

    runner = CliRunner()
    args = ["data", "build-benchmark", str(tmp_path / "b"), "--n-pairs", "2", "--generators", "waifu2x", "--size",
            "32", "--sources", "sklearn", "--local", "--set", f"workdir={tmp_path / 'wd'}"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "built" in result.output and (tmp_path / "b" / "train.csv").is_file()
    assert "reused" in runner.invoke(app, args).output
    bad = runner.invoke(app, [*args[:3], "--generators", "dalle", "--local"])
    assert bad.exit_code == 1 and "unknown generator" in bad.output
