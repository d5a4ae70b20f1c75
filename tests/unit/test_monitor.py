"""Drift between two scoring runs, or a run and its training data (real Parquet runs, image files and a
real model's embeddings), and the retraining trigger (a real MLflow SQLite registry, a real labelled
dataset, no Ray: the predictions are given)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from raydetect import registry
from raydetect.cli import app
from raydetect.config import load_settings
from raydetect.data.manifest import read_manifest
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import ModelCard, save_model
from tests.datasets import encode, make_kaggle_dataset, predictions_for, smooth_photo, write_scoring_run

runner = CliRunner()
ROWS = 300


def _images(folder: Path, seed: int, shifted: bool) -> list[str]:
    """ROWS 64 px smooth fields as JPEG q90; shifted: darkened to half and re-encoded at q40."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(ROWS):
        photo = smooth_photo(rng, 64).astype(np.float32) * (0.5 if shifted else 1.0)
        path = folder / f"{i:04d}.jpg"
        path.write_bytes(encode(photo.astype(np.uint8), "JPEG", quality=40 if shifted else 90))
        paths.append(str(path))
    return paths


def _scoring_run(tmp: Path, name: str, seed: int, shifted: bool, model: str | None = None) -> str:
    """A run of ROWS images (`_images`) and its predictions (higher P(AI) on the shifted images)."""
    paths = _images(tmp / f"images-{name}", seed, shifted)
    prob_ai = np.random.default_rng(seed).beta(5, 2, ROWS) if shifted else np.random.default_rng(seed).beta(2, 3, ROWS)
    return write_scoring_run(tmp / "predictions" / f"run={name}", paths, prob_ai, [64] * ROWS, model)


def _training_data(tmp: Path, seed: int) -> Path:
    """A dataset root (train.csv) of ROWS images drawn like the unshifted runs'."""
    root = tmp / "training"
    paths = _images(root / "train_data", seed, shifted=False)
    names = [str(Path(p).relative_to(root)) for p in paths]
    pd.DataFrame({"file_name": names, "label": [i % 2 for i in range(ROWS)]}).to_csv(root / "train.csv", index=False)
    return root


def _tiny_model(tmp: Path) -> str:
    torch.manual_seed(0)
    model = build_backbone("tinycnn").eval()
    with torch.no_grad():  # spread the untrained features so images differ
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
    return save_model(model, ModelCard(backbone="tinycnn", version="e1", image_size=64), str(tmp / "model"))


def _drift(args: list[str], tmp: Path) -> tuple[int, str, dict]:
    page = tmp / f"drift-{len(list(tmp.glob('drift-*.html')))}.html"
    result = runner.invoke(app, ["monitor", "drift", *args, "-o", str(page), "--set", f"workdir={tmp}"])
    report = json.loads(page.with_suffix(".json").read_text()) if page.with_suffix(".json").exists() else {}
    return result.exit_code, result.output, report


EMBEDDINGS = ("embedding_distance", "embedding_pc1", "embedding_pc2", "embedding_pc3")


def test_drift_same_distribution_passes_and_shift_is_flagged_with_a_self_contained_page(tmp_path: Path):
    model = _tiny_model(tmp_path)
    reference = _scoring_run(tmp_path, "ref", seed=1, shifted=False, model=model)
    fresh = _scoring_run(tmp_path, "fresh", seed=2, shifted=False, model=model)
    shifted = _scoring_run(tmp_path, "shifted", seed=3, shifted=True, model=model)

    code, output, same = _drift(["--reference", reference, "--current", fresh], tmp_path)
    assert code == 0, output
    assert "no drift" in output and f"embeddings by {model}" in output
    assert set(same["inputs"]) == {"side", "brightness", "sharpness", "jpeg_quality", "format", *EMBEDDINGS}
    assert all(same["inputs"][k]["psi"] < 0.25 for k in same["inputs"] if k != "format"), same["inputs"]

    code, output, report = _drift(["-r", reference, "--current", shifted], tmp_path)
    assert code == 1, output
    for reason in ("drift: prob_ai", "share of ai", "input brightness", "input jpeg_quality", "input embedding_"):
        assert reason in output
    assert report["drift"] and report["prob_ai"]["psi"] > 0.2 and report["prob_ai"]["ks_pvalue"] < 1e-6
    quality = report["inputs"]["jpeg_quality"]
    assert (quality["reference_mean"], quality["current_mean"]) == (90.0, 40.0) and quality["psi"] > 0.25
    assert report["inputs"]["embedding_distance"]["psi"] > 0.25 and report["embeddings"]["model"] == model
    assert report["inputs"]["format"]["current"] == {"JPEG": 1.0}
    text = (tmp_path / "drift-1.html").read_text()
    assert text.count("src='data:image/png;base64,") == 9  # prob_ai, side, brightness, sharpness, quality, 4 embedding
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing outside the file


def test_drift_against_the_training_data_compares_inputs_and_embeddings(tmp_path: Path):
    model = _tiny_model(tmp_path)
    training = _training_data(tmp_path, seed=1)
    fresh = _scoring_run(tmp_path, "fresh", seed=2, shifted=False)  # no model in its _SUCCESS: --model names it
    shifted = _scoring_run(tmp_path, "shifted", seed=3, shifted=True)

    code, output, same = _drift(["--reference", str(training), "--current", fresh, "--model", model], tmp_path)
    assert code == 0, output
    assert "inputs only, a dataset against a run" in output
    assert same["prob_ai"] is None and same["decisions"] is None and same["reference_kind"] == "dataset"
    assert set(EMBEDDINGS) <= set(same["inputs"]) and same["inputs"]["jpeg_quality"]["reference_mean"] == 90.0

    code, output, moved = _drift(["-r", str(training / "train.csv"), "--current", shifted, "-m", model], tmp_path)
    assert code == 1, output
    assert "input brightness" in output and "input jpeg_quality" in output and "input embedding_" in output
    assert "prob_ai" not in " ".join(moved["reasons"])

    code, output, bare = _drift(["-r", str(training), "--current", shifted], tmp_path)  # no model anywhere
    assert code == 1 and "no embeddings: no model" in output
    assert not set(EMBEDDINGS) & set(bare["inputs"]) and bare["embeddings"]["model"] is None


def _registry_settings(tmp: Path):
    return load_settings(overrides=[f"workdir={tmp}", f"tracking.mlflow_uri=sqlite:///{tmp / 'mlflow.db'}"])


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
    same = predictions_for(training, tmp_path / "p" / "run=same")
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
    run = predictions_for(newer, tmp_path / "p" / "run=new")
    result = runner.invoke(app, ["monitor", "check", "--data", str(new_root), "--predictions", run, *flags])
    assert result.exit_code == 1, result.output
    assert "generator never seen in training: ddpm" in result.output and result.output.strip().endswith("retrain")

    # the same data as training, scored worse: F1 more than 5 % below the registered 0.9
    worse = predictions_for(training, tmp_path / "p" / "run=worse", wrong=3)
    argv = ["--data", str(train_root), "--predictions", worse, "--output", str(tmp_path / "verdict.json"), *flags]
    assert monitor_job(argv) == 1
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["decision"] == "retrain" and verdict["version"] == version
    assert any(r.startswith("f1 ") and "below the registered 0.9000" in r for r in verdict["reasons"])
    assert not any("generator" in r for r in verdict["reasons"])
