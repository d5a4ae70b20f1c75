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
    args = dict(n_pairs=6, generators=["waifu2x", "noisy"], sizes=[32], seed=1, sources=["sklearn", "matplotlib"],
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
    assert set(card["content_audit"]) == {"laplacian_ratio", "hf_share"}
    assert 0.5 <= card["content_audit"]["laplacian_ratio"]["auc"] <= 1
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
    with pytest.raises(BenchmarkError, match="multiples of 4"):
        _build(tmp_path / "x", sizes=[32, 30])


def test_cli_build_benchmark(tmp_path):
    from typer.testing import CliRunner

    from raydetect.cli import app

    runner = CliRunner()
    args = ["data", "build-benchmark", str(tmp_path / "b"), "--n-pairs", "2", "--generators", "waifu2x", "--sizes",
            "32", "--sources", "sklearn", "--local", "--set", f"workdir={tmp_path / 'wd'}"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "built" in result.output and (tmp_path / "b" / "train.csv").is_file()
    assert "reused" in runner.invoke(app, args).output
    bad = runner.invoke(app, [*args[:3], "--generators", "dalle", "--local"])
    assert bad.exit_code == 1 and "unknown generator" in bad.output


def _rows(out) -> pd.DataFrame:
    train = pd.read_csv(out / "train.csv")
    test = pd.read_csv(out / "test_labels.csv").rename(columns={"id": "file_name"})
    return pd.concat([train, test], ignore_index=True)


def test_sizes_hard_negatives_and_determinism(tmp_path):
    kwargs = dict(n_pairs=16, sizes=[32, 48], test_sizes=[64], hardneg_share=0.6, generators=["noisy"])
    result = _build(tmp_path / "a", **kwargs)
    rows = _rows(tmp_path / "a")
    rows["size"] = [Image.open(tmp_path / "a" / name).size for name in rows["file_name"]]
    assert all(w == h for w, h in rows["size"])
    sides = rows["size"].str[0]
    is_test = rows["file_name"].str.startswith("test_data_v2/")
    assert set(sides[~is_test]) == {32, 48} and set(sides[is_test]) == {64}
    # a pair's two images share their size: per photo and size, as many real images as AI ones
    per = rows.assign(side=sides).groupby(["group", "side", "label"]).size().unstack(fill_value=0)
    assert (per[0] == per[1]).all()
    hard = rows["processing"].str.startswith("hardneg:")
    assert hard.any() and (rows.loc[hard, "label"] == 0).all() and (rows.loc[hard, "generator"] == "real").all()
    assert rows.loc[hard, "processing"].str.match(r"^hardneg:(bicubic|blur)[0-9.]+(\+|$)").all()
    card = result.card
    assert card["counts"]["by_size"]["train"].keys() == {"32", "48"} and card["counts"]["by_size"]["test"] == {
        "64": int(is_test.sum())
    }
    assert card["counts"]["hard_negative_share"] == round(float(hard.sum() / (rows["label"] == 0).sum()), 4)
    audit = card["content_audit"]["laplacian_ratio"]
    assert set(audit) == {"auc", "method", "auc_without_hard_negatives", "median"}
    # deterministic for a seed: the same files, byte for byte, and the same CSVs
    _build(tmp_path / "b", **kwargs)
    assert (tmp_path / "a" / "train.csv").read_text() == (tmp_path / "b" / "train.csv").read_text()
    for name in rows["file_name"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
