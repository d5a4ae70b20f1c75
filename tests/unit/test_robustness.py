"""Perturbations (the benchmark's processing steps) and the robustness sweep, with a real tiny detector."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from raydetect.config import EvaluateSettings
from raydetect.data.content import laplacian_ratio
from raydetect.data.manifest import read_manifest
from raydetect.evaluate.metrics import binary_metrics
from raydetect.evaluate.robustness import perturb, sample, sweep
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard, save_model
from raydetect.models.views import make_views
from tests.datasets import make_kaggle_dataset, smooth_photo

NAMES = ("jpeg90", "jpeg70", "jpeg50", "blur1", "blur2", "downscale0.5", "reencode")


def _photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(smooth_photo(rng, 96).astype(int) + rng.integers(-20, 20, (96, 96, 3)), 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("L"), dtype=np.float64)


@pytest.mark.parametrize("name", NAMES)
def test_every_perturbation_changes_the_image_and_is_deterministic(name: str):
    image = _photo()
    out = perturb(image, name)
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert out.shape != image.shape or not np.array_equal(out, image)
    assert np.array_equal(out, perturb(image, name))
    assert np.array_equal(perturb(image, "clean"), image)


def test_jpeg_blur_and_downscale_have_their_effect():
    image = _photo()
    assert perturb(image, "downscale0.5").shape == (48, 48, 3)  # halves the size
    assert perturb(image, "blur2").shape == image.shape
    sharp = [laplacian_ratio(_grey(perturb(image, n))) for n in ("clean", "blur1", "blur2")]
    assert sharp[0] > sharp[1] > sharp[2]  # blur lowers the Laplacian variance, more with sigma 2
    errors = [np.abs(perturb(image, f"jpeg{q}").astype(int) - image).mean() for q in (90, 70, 50)]
    assert 0 < errors[0] < errors[1] < errors[2]  # lower quality, further from the original

    from raydetect.data.benchmark.degrade import encode

    data = encode(image, "jpeg", 95)  # what `reencode` writes: one format (JPEG) for both classes
    assert data[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(data)).format == "JPEG"
    png = perturb(image, "reencode", reencode="png")
    assert np.array_equal(png, image)  # lossless: the format alone changes nothing a pixel model sees


def test_sample_keeps_the_class_shares():
    frame = pd.DataFrame({"path": [str(i) for i in range(100)], "label": [0] * 80 + [1] * 20})
    picked = sample(frame, 10, seed=1)
    assert len(picked) == 10 and picked["label"].sum() == 2
    assert picked.equals(sample(frame, 10, seed=1))


def test_sweep_scores_every_perturbation_and_reports_drops(tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "data", n_pairs=6, size=64)
    labelled = read_manifest(str(root), split="train")
    torch.manual_seed(0)
    uri = save_model(build_backbone("tinycnn"), ModelCard(backbone="tinycnn", image_size=32), str(tmp_path / "m"))
    detector = Detector.load(uri, device="cpu")
    settings = EvaluateSettings(robustness_sample=12)
    table = sweep(detector, labelled, settings)
    assert table["perturbation"].tolist() == ["clean", *settings.perturbations]
    assert (table["n"] == 12).all()
    # the clean row is the detector's own metrics on the decoded images
    views = [make_views(Image.open(p).convert("RGB"), detector.policy) for p in labelled["path"]]
    clean = binary_metrics(labelled["label"].to_numpy(), detector.predict_images(views), detector.card.threshold)
    assert table.loc[0, "accuracy"] == pytest.approx(clean["accuracy"])
    assert table.loc[0, "auc_roc"] == pytest.approx(clean["auc_roc"])
    assert np.allclose(table["accuracy_drop"], table.loc[0, "accuracy"] - table["accuracy"])
    assert table.loc[0, ["accuracy_drop", "f1_drop", "auc_roc_drop"]].tolist() == [0, 0, 0]
