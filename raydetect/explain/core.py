"""Explain one image with a detector, by any method: Grad-CAM (`gradcam.py`), LIME or KernelSHAP
(`attributions.py`); DIRE models show their reconstruction-error map for `gradcam` (they have no CNN to take
Grad-CAM of). Every method maps each of the model's views, the maps are stitched back over the whole image
(`gradcam.stitch`), and `reasons.reason` names where the evidence sits and which frequency band carries it.
Plain Python/PyTorch, no Ray: `raydetect explain`, Serve's `/v1/explain` and the report's galleries call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from raydetect.config import ExplainSettings
from raydetect.explain.gradcam import overlay, stitch, view_cams
from raydetect.explain.reasons import reason
from raydetect.models.views import make_views, view_boxes

METHODS = ("gradcam", "lime", "shap")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}: use one of {', '.join(METHODS)}")
    return method


def signed_target(prob_ai: float, threshold: float) -> float:
    """+1 (evidence for AI) when the score is at or over the threshold, else -1 (evidence for real)."""
    return 1.0 if prob_ai >= threshold else -1.0


def view_maps(detector, views: np.ndarray, method: str, sign: float, settings: ExplainSettings | None = None
              ) -> list[np.ndarray]:  # fmt: skip
    """One heat map in [0, 1] per uint8 view (the view's size) of the evidence for `sign * logit`."""
    check_method(method)
    if method == "gradcam":
        if hasattr(detector, "explain_views"):  # DIRE: the reconstruction-error map of each view
            return detector.explain_views(views)
        return view_cams(detector, views, sign)
    from raydetect.explain.attributions import attribution_maps

    return attribution_maps(detector, views, method, sign, settings)


def image_heat(maps: list[np.ndarray], image_size: tuple[int, int], policy) -> np.ndarray:
    """The views' maps placed over the whole image (W, H) by the policy's view boxes (H x W in [0, 1])."""
    return stitch(maps, view_boxes(image_size[0], image_size[1], policy), image_size)


@dataclass
class Explanation:
    prob_ai: float
    decision: str
    method: str
    heat: np.ndarray  # H x W of the original image, in [0, 1]
    overlay: Image.Image  # the original image's size
    reason: str
    views: int


def explain_image(detector, image: Image.Image, method: str = "gradcam",
                  settings: ExplainSettings | None = None) -> Explanation:  # fmt: skip
    """Predict and explain one decoded image with a detector (`models.bundle.load_detector`)."""
    card = detector.card
    image = image.convert("RGB")
    views = make_views(image, detector.policy)
    prob = float(detector.predict_images([views])[0])
    decision = card.decide(prob)
    maps = view_maps(detector, views, method, signed_target(prob, card.threshold), settings)
    heat = image_heat(maps, image.size, detector.policy)
    text = reason(image, heat, prob, decision, card.threshold)
    return Explanation(prob, decision, method, heat, overlay(image, heat), text, len(views))
