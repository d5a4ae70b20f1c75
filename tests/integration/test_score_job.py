"""The nightly re-scoring job's entry point, run in-process on the shared Ray cluster."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import ModelCard, save_model
from tests.datasets import encode, smooth_photo, write_bad_files

pytestmark = [pytest.mark.ray, pytest.mark.slow]
JOB = Path(__file__).resolve().parents[2] / "jobs" / "nightly_rescore.py"


def _job():
    spec = importlib.util.spec_from_file_location("nightly_rescore", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nightly_job_prints_and_writes_its_summary(ray_cluster: None, tmp_path: Path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        (folder / f"{i}.png").write_bytes(encode(smooth_photo(rng, 32)))
    write_bad_files(folder)
    torch.manual_seed(0)
    model = save_model(build_backbone("tinycnn"), ModelCard(backbone="tinycnn", image_size=32), str(tmp_path / "m"))
    summary_path = tmp_path / "reports" / "nightly.json"
    job = _job()

    code = job.main(
        ["--input", str(folder), "--model", model, "--output", str(tmp_path / "out"), "--summary", str(summary_path)]
    )

    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(summary_path.read_text())
    assert printed["status"] == "SUCCEEDED" and printed["run_id"].startswith("nightly-")
    for summary in (printed, written):
        assert summary["inputs"] == 10 and summary["rows"] == 10 and summary["errors"] == 4
        assert sum(summary["decisions"].values()) == 6
        assert summary["share_ai"] is not None and summary["share_review"] is not None
        assert summary["throughput_images_per_s"] > 0
        assert set(summary["error_reasons"]) == {"corrupt", "truncated", "empty", "unsupported_format"}
    assert (tmp_path / "out" / f"run={printed['run_id']}" / "_SUCCESS").exists()

    assert job.main(["--input", str(folder), "--model", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "FAILED"
