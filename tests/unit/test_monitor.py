"""Drift between two scoring runs (real Parquet runs and image files) and the retraining trigger (a real
MLflow SQLite registry, a real labelled dataset, no Ray: the predictions are given)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from raydetect import registry
from raydetect.cli import app
from raydetect.config import load_settings
from raydetect.data.manifest import read_manifest
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import ModelCard, save_model
from tests.datasets import encode, make_kaggle_dataset, smooth_photo

runner = CliRunner()
ROWS = 300


def _write_run(folder: Path, paths: list[str], prob_ai: np.ndarray, sizes: list[int]) -> str:
    decision = np.where(prob_ai >= 0.6, "ai", np.where(prob_ai >= 0.4, "review", "real"))
    frame = pd.DataFrame({
        "path": paths, "sha256": [f"{i:064x}" for i in range(len(paths))], "prob_ai": prob_ai, "decision": decision,
        "threshold": 0.5, "model_name": "tiny", "model_version": "1", "scored_at": datetime.now(UTC), "error": None,
        "width": np.asarray(sizes, "int32"), "height": np.asarray(sizes, "int32"), "views": np.int32(1),
    })  # fmt: skip
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-00000.parquet", index=False)
    (folder / "_SUCCESS").write_text("{}")
    return str(folder)


def _scoring_run(tmp: Path, name: str, seed: int, shifted: bool) -> str:
    """ROWS images (64 px PNG smooth fields; darkened when shifted) and their predictions."""
    rng = np.random.default_rng(seed)
    images = tmp / f"images-{name}"
    images.mkdir()
    paths = []
    for i in range(ROWS):
        photo = smooth_photo(rng, 64).astype(np.float32) * (0.5 if shifted else 1.0)
        path = images / f"{i:04d}.png"
        path.write_bytes(encode(photo.astype(np.uint8)))
        paths.append(str(path))
    prob_ai = rng.beta(5, 2, ROWS) if shifted else rng.beta(2, 3, ROWS)
    return _write_run(tmp / "predictions" / f"run={name}", paths, prob_ai, [64] * ROWS)


def test_drift_same_distribution_passes_and_shift_is_flagged_with_a_self_contained_page(tmp_path: Path):
    reference = _scoring_run(tmp_path, "ref", seed=1, shifted=False)
    fresh = _scoring_run(tmp_path, "fresh", seed=2, shifted=False)
    shifted = _scoring_run(tmp_path, "shifted", seed=3, shifted=True)
    flags = ["--set", f"workdir={tmp_path}"]

    same = runner.invoke(app, ["monitor", "drift", "--reference", reference, "--current", fresh, *flags])
    assert same.exit_code == 0, same.output
    assert "no drift" in same.output
    page = tmp_path / "moved.html"
    moved = runner.invoke(app, ["monitor", "drift", "-r", reference, "--current", shifted, "-o", str(page), *flags])
    assert moved.exit_code == 1, moved.output
    assert "drift: prob_ai" in moved.output and "share of ai" in moved.output and "input brightness" in moved.output

    report = json.loads(page.with_suffix(".json").read_text())
    assert report["drift"] and report["prob_ai"]["psi"] > 0.2 and report["prob_ai"]["ks_pvalue"] < 1e-6
    assert report["inputs"]["format"]["current"] == {"PNG": 1.0} and "side" in report["inputs"]
    text = page.read_text()
    assert text.count("src='data:image/png;base64,") == 4  # prob_ai, side, brightness, sharpness
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing outside the file


def _registry_settings(tmp: Path):
    return load_settings(overrides=[f"workdir={tmp}", f"tracking.mlflow_uri=sqlite:///{tmp / 'mlflow.db'}"])


def _predictions_for(manifest: pd.DataFrame, folder: Path, wrong: int = 0) -> str:
    """Confident, correct predictions for a labelled manifest (the first `wrong` rows flipped)."""
    labels = manifest["label"].astype(int).to_numpy().copy()
    labels[:wrong] = 1 - labels[:wrong]
    prob_ai = np.where(labels == 1, 0.9, 0.1)
    return _write_run(folder, manifest["path"].tolist(), prob_ai, [32] * len(manifest))


def _job_main():
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("monitor_job", Path(__file__).resolve().parents[2] / "jobs" / "monitor.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_monitor_check_says_retrain_on_an_unseen_generator_and_a_metric_drop(tmp_path: Path):
    monitor_job = _job_main()
    settings = _registry_settings(tmp_path)
    train_root = make_kaggle_dataset(tmp_path / "train", n_pairs=8, size=32)
    training = read_manifest(train_root, "train", settings)
    flags = ["--split", "train", "--set", f"workdir={tmp_path}",
             "--set", f"tracking.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    same = _predictions_for(training, tmp_path / "p" / "run=same")
    result = runner.invoke(app, ["monitor", "check", "--data", str(train_root), "--predictions", same, *flags])
    assert result.exit_code == 2 and "not in the registry" in result.output  # nothing serves yet
    card = ModelCard(backbone="tinycnn", version="m1", image_size=32, metrics={"f1": 0.9, "auc_roc": 0.95})
    model = save_model(build_backbone("tinycnn"), card, str(tmp_path / "m1"))
    version = registry.register(settings, model, training=training)
    assert registry.promote(settings, version).passed

    result = runner.invoke(app, ["monitor", "check", "--data", str(train_root), "--predictions", same, *flags])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("ok")

    # newer labelled data: the AI images now come from a generator the model never saw
    new_root = make_kaggle_dataset(tmp_path / "new", n_pairs=8, size=32, seed=5)
    csv = pd.read_csv(new_root / "train.csv")
    csv.loc[csv["label"] == 1, "generator"] = "ddpm"
    csv.to_csv(new_root / "train.csv", index=False)
    newer = read_manifest(new_root, "train", settings)
    run = _predictions_for(newer, tmp_path / "p" / "run=new")
    result = runner.invoke(app, ["monitor", "check", "--data", str(new_root), "--predictions", run, *flags])
    assert result.exit_code == 1, result.output
    assert "generator never seen in training: ddpm" in result.output and result.output.strip().endswith("retrain")

    # the same data as training, scored worse: F1 more than 5 % below the registered 0.9
    worse = _predictions_for(training, tmp_path / "p" / "run=worse", wrong=3)
    argv = ["--data", str(train_root), "--predictions", worse, "--output", str(tmp_path / "verdict.json"), *flags]
    assert monitor_job(argv) == 1
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["decision"] == "retrain" and verdict["version"] == version
    assert any(r.startswith("f1 ") and "below the registered 0.9000" in r for r in verdict["reasons"])
    assert not any("generator" in r for r in verdict["reasons"])
