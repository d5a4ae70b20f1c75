"""The demo end to end, tiny: every stage runs and leaves its output where it says."""

import json
import socket
from pathlib import Path

import pandas as pd
import pytest

from raydetect.config import load_settings
from raydetect.models.bundle import load_card, load_detector
from raydetect.models.dire import DireDetector

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_runs_every_stage(tmp_path: Path, ray_cluster: None):
    from raydetect.demo import run_demo

    settings = load_settings(
        overrides={
            "workdir": str(tmp_path / "work"),
            "benchmark": {"sizes": [64], "test_sizes": None, "generators": ["esrgan", "waifu2x"], "max_actors": 1},
            # the demo's own recipe (demo.train: a linear probe), on a tiny backbone
            "demo": {
                "train": {"backbone": "tinycnn", "weights": "none"},
                # the DIRE stage at toy sizes: a 3-step UNet, one 32 px tile of 8 training images
                "dire": {"fit": {"channels": [8, 16], "size": 16, "steps": 3, "batch_size": 4, "pool": 16},
                         "tile": 32, "batch_size": 4, "torch_threads": 1},
                "dire_sample": 8,
            },
            "serve": {"port": _free_port()},
        }
    )
    lines: list[str] = []
    outputs = run_demo(settings, n_pairs=6, log=lines.append)

    for name in ("benchmark", "model", "predictions", "evaluation report", "verify report"):
        assert name in outputs.outputs, name
    work = tmp_path / "work"
    assert (work / "benchmark" / "train.csv").exists()
    assert (work / "benchmark" / "benchmark_preview.png").exists()
    assert (work / "models" / "demo" / "model.json").exists()
    # The predictions are this model's: a run of their own, named by the new model's version.
    card = json.loads((work / "models" / "demo" / "model.json").read_text())
    version = card["version"]
    assert card["params"]["recipe"] == "probe" and card["backbone"] == "tinycnn"
    assert (work / "models" / "demo" / "generalisation.csv").exists()  # demo.train.leave_generator_out
    assert any(line.startswith("leave one generator out") for line in lines)
    assert version.startswith("demo-")
    assert outputs.outputs["predictions"] == str(work / "predictions" / f"run={version}")
    assert (work / "predictions" / f"run={version}" / "_SUCCESS").exists()
    scored = pd.read_parquet(outputs.outputs["predictions"])
    assert set(scored["model_version"]) == {version} and scored["error"].isna().all()
    page = (work / "reports" / "evaluation.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert outputs.headline["n"] > 0
    assert any("/v1/predict ->" in line for line in lines)  # the Serve smoke call answered
    explained = json.loads((work / "reports" / "explanations" / "explanations.json").read_text())
    assert explained["method"] == "gradcam" and len(explained["images"]) == 2  # one real, one AI test image
    assert all((work / "reports" / "explanations" / Path(r["overlay"]).name).exists() for r in explained["images"])
    assert "Most confident false positives" in page
    saved = json.loads((work / "reports" / "demo.json").read_text())
    assert set(saved["timings_s"]) >= {"1/6 offline benchmark", "4/6 batch-score the test split (Ray Data)",
                                   "registry: promote through the gates"}
    assert "DIRE (sample)" in saved["timings_s"]
    # the DIRE stage: its UNet fitted, maps of the sample, the CV table printed, a DIRE model directory
    assert outputs.outputs["dire model"] == str(work / "models" / "dire")
    assert load_card(outputs.outputs["dire model"]).kind == "dire"
    assert isinstance(load_detector(outputs.outputs["dire model"], device="cpu"), DireDetector)
    assert any(line.startswith("DIRE statistics, grouped CV") for line in lines)
    assert any(line.startswith("dire maps: 8 made") for line in lines)
    assert (work / "dire" / "diffusion" / "unet" / "config.json").exists()
    # registered by training, evaluated, sent through the gates (a 1-epoch tiny model may well be refused)
    assert outputs.outputs["registry"].startswith("raydetect version 1 (")
    assert any(line.startswith("version  card_version") for line in lines)
