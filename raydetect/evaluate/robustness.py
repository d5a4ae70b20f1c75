"""Robustness sweep: the detector's metrics on a sample of labelled images after each perturbation.

Perturbations are named by the benchmark's own processing steps (`data/benchmark/degrade.py`, replayed by
`apply_processing`): `jpeg90` / `jpeg70` / `jpeg50` (a JPEG round trip at that quality), `blur1` / `blur2`
(Gaussian blur, sigma in pixels), `downscale0.5` (bicubic, the image keeps the smaller size), `bicubic0.5`
(down and back up); and `reencode`: both classes re-encoded to one format (the benchmark's common encoding,
`evaluate.reencode` at `evaluate.reencode_quality`), the check that no format difference carried the label.
Both classes get the same perturbation. The images are scored in-process by `bundle.Detector` (its view
policy and calibrated P(AI), as scoring and Serve), the metrics by `metrics.binary_metrics` at the card's
threshold.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from raydetect import storage
from raydetect.data.benchmark.degrade import apply_processing, encode
from raydetect.evaluate.metrics import binary_metrics

SWEEP_METRICS = ("accuracy", "f1", "auc_roc", "false_positive_rate", "false_negative_rate")
CLEAN = "clean"


def perturb(image: np.ndarray, name: str, reencode: str = "jpeg", quality: int = 95) -> np.ndarray:
    """One named perturbation of an RGB uint8 image (see the module docstring); deterministic."""
    if name == CLEAN:
        return image
    if name == "reencode":
        return np.asarray(Image.open(io.BytesIO(encode(image, reencode, quality))).convert("RGB"))
    return apply_processing(image, name)


def sample(labelled: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to `n` labelled rows, the same share of each class, seeded."""
    rows = labelled[labelled["label"].notna()]
    if len(rows) <= n:
        return rows.reset_index(drop=True)
    share = n / len(rows)
    parts = [g.sample(max(1, round(len(g) * share)), random_state=seed) for _, g in rows.groupby("label")]
    return pd.concat(parts).reset_index(drop=True)


def _decode(path: str) -> np.ndarray | None:
    from raydetect.data.images import try_decode

    try:
        data = storage.read_bytes(path)
    except OSError:  # missing or unreadable: the scoring run reports it; the sweep leaves it out
        return None
    image, error = try_decode(data)
    return None if error else np.asarray(image.convert("RGB"))


def decode_sample(labelled: pd.DataFrame, n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """The decoded RGB images and labels of `sample(labelled, n, seed)` (unreadable files left out)."""
    images, labels = [], []
    rows = sample(labelled, n, seed)
    for path, label in zip(rows["path"], rows["label"], strict=True):
        image = _decode(path)
        if image is not None:
            images.append(image)
            labels.append(int(label))
    return images, np.asarray(labels, dtype=int)


def model_checks(uris: Sequence[str], labelled: pd.DataFrame, settings) -> dict[str, object]:
    """The robustness sweep and the adversarial table (evaluate/adversarial.py) of a single model (`uris`:
    the resolved model directories, `ModelSpec.uris`), with the run's settings (device, precision,
    `evaluate:`), and the loaded model for the galleries' Grad-CAM overlays: `write_report`'s `robustness`,
    `adversarial` and `explainer`, and the model directory's leave-one-generator-out table (`generalisation`,
    None without one). A table is None when its sample size is 0, the explainer when `gallery_size` is; all
    for an ensemble; the adversarial table for a model without gradients to
    attack through (DIRE)."""
    from raydetect.evaluate.adversarial import adversarial_eval
    from raydetect.models.bundle import GENERALISATION_FILE, Detector, load_detector, read_beside_model

    ev = settings.evaluate
    nothing = {"robustness": None, "adversarial": None, "explainer": None, "generalisation": None}
    if len(uris) != 1:
        return nothing
    generalisation = read_beside_model(uris[0], GENERALISATION_FILE, settings.storage)  # train --leave-generator-out
    if max(ev.robustness_sample, ev.adversarial_sample, ev.gallery_size) <= 0:
        return {**nothing, "generalisation": generalisation}
    detector = load_detector(uris[0], device=settings.device, precision=settings.precision,
                             storage_settings=settings.storage)
    attackable = isinstance(detector, Detector) and ev.adversarial_sample > 0
    return {
        "robustness": sweep(detector, labelled, ev, settings.seed) if ev.robustness_sample > 0 else None,
        "adversarial": adversarial_eval(detector, labelled, ev, settings.seed) if attackable else None,
        "explainer": detector if ev.gallery_size > 0 else None,
        "generalisation": generalisation,
    }


def sweep(detector, labelled: pd.DataFrame, settings, seed: int = 0) -> pd.DataFrame:
    """One row per perturbation (the clean sample first): n, the metrics, and each metric's drop from clean.
    `settings`: the `evaluate:` section (config.EvaluateSettings)."""
    from raydetect.models.views import make_views

    images, labels = decode_sample(labelled, settings.robustness_sample, seed)
    table = []
    for name in [CLEAN, *settings.perturbations]:
        views = [make_views(perturb(im, name, settings.reencode, settings.reencode_quality), detector.policy)
                 for im in images]  # fmt: skip
        metrics = binary_metrics(labels, detector.predict_images(views), detector.card.threshold)
        table.append({"perturbation": name, "n": len(labels), **{m: metrics[m] for m in SWEEP_METRICS}})
    frame = pd.DataFrame(table)
    for metric in ("accuracy", "f1", "auc_roc"):
        frame[f"{metric}_drop"] = frame[metric].iloc[0] - frame[metric]
    return frame
