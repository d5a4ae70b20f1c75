"""What drift measures on the images themselves, for a sample of each side (`monitor.input_sample` files).

Per file: the format (sniffed), width and height, brightness (mean luma of the central crop), sharpness
(`laplacian_ratio` of `data/content.py`, the shortcut audit's) and the JPEG quality (the IJG quality whose
standard luminance table is nearest the file's, `data/verify.py`'s estimate; NaN for other formats).

Per image, with a model: its pooled backbone features, what the classification head receives, averaged over
the image's views (`train/probe.image_features`, the linear probe's features). They are computed here, at
drift time, on the sample only, not by the scoring run: scoring stays one forward pass with nothing extra
to hook, copy or store, a dataset side (the training data) has no scoring run to take them from, and both
sides are embedded by the same model, so their features are comparable even when the runs were scored by
different versions. From the features: each image's cosine distance to the reference's centroid
(leave-one-out for the reference's own images, so both sides are measured out of sample) and its
coordinates on the reference's first principal components.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from raydetect import storage
from raydetect.config import Settings

FILE_COLUMNS = ("format", "width", "height", "brightness", "sharpness", "jpeg_quality")


def jpeg_quality_of(data: bytes) -> float:
    """The estimated JPEG quality of a file's bytes (1-100), NaN when it is not a JPEG."""
    from raydetect.data.verify import jpeg_quality

    try:
        header = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - unreadable headers have no quality
        return math.nan
    if header.format != "JPEG":
        return math.nan
    quality = jpeg_quality(getattr(header, "quantization", None))
    return math.nan if quality is None else float(quality)


def file_facts(data: bytes, image: Image.Image) -> dict[str, Any]:
    """The `FILE_COLUMNS` of one decoded file."""
    from raydetect.data.content import grey_center, laplacian_ratio
    from raydetect.data.images import sniff_format

    grey = grey_center(image)
    sharpness = laplacian_ratio(grey) if min(grey.shape) >= 16 else math.nan
    return {"format": sniff_format(data) or "unknown", "width": image.width, "height": image.height,
            "brightness": float(grey.mean()), "sharpness": sharpness,
            "jpeg_quality": jpeg_quality_of(data)}  # fmt: skip


class Embedder:
    """One model's pooled features of an image (see the module doc). Raises `ValueError` for a model
    without a linear classification head to read them at (DIRE)."""

    def __init__(self, model_uri: str, settings: Settings):
        from raydetect.models.bundle import Detector, load_detector

        self.uri = model_uri
        self.detector = load_detector(model_uri, device=settings.device, precision="fp32",
                                      storage_settings=settings.storage)  # fmt: skip
        if not isinstance(self.detector, Detector):
            raise ValueError(f"{model_uri}: a {self.detector.card.kind} model has no pooled backbone features")

    def __call__(self, image: Image.Image) -> np.ndarray:
        from raydetect.models.views import make_views
        from raydetect.train.probe import image_features

        card = self.detector.card
        views = make_views(image, self.detector.policy)
        return image_features(self.detector.model, [views], card.mean, card.std)[0]


def sample_statistics(
    paths: list[str], settings: Settings, embedder: Embedder | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """`FILE_COLUMNS` per readable file (unreadable ones are skipped), and the embedder's features of the
    same files (None without an embedder)."""
    from raydetect.data.images import try_decode

    rows, features = [], []
    for path in paths:
        try:
            data = storage.read_bytes(path, settings.storage)
        except OSError:
            continue
        image, _ = try_decode(data)
        if image is None:
            continue
        rows.append(file_facts(data, image))
        if embedder is not None:
            features.append(embedder(image))
    frame = pd.DataFrame(rows, columns=list(FILE_COLUMNS))
    return frame, (np.stack(features) if features else None)


def _cosine_distance(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    dot = np.sum(features * centres, axis=1)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(centres, axis=1)
    return 1.0 - dot / np.maximum(norms, 1e-12)


def embedding_statistics(
    reference: np.ndarray, current: np.ndarray, components: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per image of each side: `embedding_distance` (cosine distance to the reference centroid; for the
    reference's own images the centroid of the others) and `embedding_pc1..k` (coordinates on the
    reference's first k principal components)."""
    reference, current = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    n = len(reference)
    total = reference.sum(axis=0)
    ref = {"embedding_distance": _cosine_distance(reference, (total[None] - reference) / (n - 1))}
    cur = {"embedding_distance": _cosine_distance(current, np.broadcast_to(total / n, current.shape))}
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    axes = vt[: min(components, len(vt))]
    for i, axis in enumerate(axes, start=1):
        ref[f"embedding_pc{i}"] = (reference - mean) @ axis
        cur[f"embedding_pc{i}"] = (current - mean) @ axis
    return ref, cur
