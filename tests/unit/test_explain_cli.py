"""`raydetect explain IMAGE... --model M --method ... --out DIR` (one process, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from raydetect.cli import app
from raydetect.explain.reasons import verdict
from tests.serve_support import encode, make_model, photo

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(tmp_path_factory.mktemp("explain_cli") / "model", "tinycnn", image_size=64, views="native")


def _images(folder: Path) -> list[str]:
    (folder / "b").mkdir(parents=True)
    paths = [folder / "cat.png", folder / "b" / "cat.png", folder / "wide.jpg"]
    paths[0].write_bytes(encode(photo(0, (96, 72))))
    paths[1].write_bytes(encode(photo(1, (64, 64))))
    paths[2].write_bytes(encode(photo(2, (150, 70)), "JPEG", quality=90))
    return [str(p) for p in paths]


@pytest.mark.parametrize("method", ["gradcam", "lime", "shap"])
def test_explain_writes_an_overlay_per_image_and_prints_a_reason(model: str, tmp_path: Path, method: str,
                                                                 one_torch_thread):  # fmt: skip
    images, out = _images(tmp_path / "in"), tmp_path / "out"
    args = ["explain", *images, "--model", model, "--method", method, "--out", str(out),
            "--set", "explain.n_samples=16", "--set", "device=cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == f"3 overlays ({method}) in {out}"
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["method"] == method and [r["path"] for r in summary["images"]] == images
    names = [f"cat.{method}.png", f"cat-2.{method}.png", f"wide.{method}.png"]  # two inputs named cat.png
    for line, row, name, size in zip(lines[:3], summary["images"], names, [(96, 72), (64, 64), (150, 70)], strict=True):
        assert Image.open(out / name).size == size and row["overlay"] == str(out / name)
        assert line == f"{row['path']}: {row['reason']}"
        assert row["reason"].startswith(verdict(row["prob_ai"], row["decision"]) + ": evidence for")


def test_explain_reports_unreadable_files_and_refuses_unknown_methods(model: str, tmp_path: Path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    good.write_bytes(encode(photo(3, (64, 64))))
    result = runner.invoke(app, ["explain", str(broken), str(good), "-m", model, "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert f"{broken}: error unsupported_format" in result.output and "1 images could not be read" in result.output
    assert (tmp_path / "out" / "good.gradcam.png").exists()
    refused = runner.invoke(app, ["explain", str(good), "-m", model, "--method", "occlusion"])
    assert refused.exit_code == 2 and "--method must be one of gradcam, lime, shap" in refused.output
