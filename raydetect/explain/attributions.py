"""LIME and KernelSHAP attributions on superpixels, with captum (`captum.attr.Lime`, `captum.attr.KernelShap`).

Each view of the image (`models.views`: the native-resolution tiles the model scores) is cut into superpixels
(skimage SLIC, or a regular grid; a grid too where SLIC finds no structure); a perturbed copy switches some
of them off, replacing their pixels by the `baseline` (the view Gaussian-blurred: the texture goes, the
colours stay; or the view's mean colour), and the model scores it. LIME fits a kernel-weighted ridge
regression of the signed logit on which superpixels were on, KernelSHAP the Shapley-kernel regression; a
superpixel's coefficient is its attribution, painted over its pixels. The model is only called forward, on
uint8 views (`detector.view_logits`), so any detector works (CNNs, ViTs, DIRE) and no gradients are taken.

The target is the signed logit, as for Grad-CAM: evidence for the decision taken. Each view's map is weighted
by the view's share of the image's aggregated logit (`views.aggregate`: every view under `mean`, the top
views under `max` / `topk`) and only the supporting (positive) part is kept; the maps are scaled by the
largest value over all views, so they stay comparable across the image. Deterministic for `seed`.
"""

from __future__ import annotations

import numpy as np
import torch

from raydetect.config import ExplainSettings
from raydetect.models.views import ViewPolicy


def superpixels(view: np.ndarray, settings: ExplainSettings) -> np.ndarray:
    """Segment labels 0..K-1 (h x w int64) of one uint8 view: SLIC, or a regular grid (also where SLIC finds
    fewer than half the segments asked for: on noise-like views it merges nearly everything)."""
    labels = None
    if settings.superpixels == "slic":
        from skimage.segmentation import slic

        labels = slic(view, n_segments=settings.n_segments, compactness=settings.compactness, start_label=0)
        if len(np.unique(labels)) < max(2, settings.n_segments // 2):
            labels = None
    if labels is None:
        labels = grid_segments(view.shape[0], view.shape[1], settings.n_segments)
    _, dense = np.unique(labels, return_inverse=True)  # captum wants the ids 0..K-1 without gaps
    return dense.reshape(view.shape[:2]).astype(np.int64)


def grid_segments(height: int, width: int, n_segments: int) -> np.ndarray:
    """A side x side grid of labels (side = round(sqrt(n_segments)))."""
    side = max(1, round(np.sqrt(n_segments)))
    rows = np.minimum(np.arange(height) * side // height, side - 1)
    cols = np.minimum(np.arange(width) * side // width, side - 1)
    return rows[:, None] * side + cols[None, :]


def baseline(view: np.ndarray, settings: ExplainSettings) -> np.ndarray:
    """What a switched-off superpixel becomes (h x w x 3 float32 in 0..255)."""
    pixels = view.astype(np.float32)
    if settings.baseline == "mean":
        return np.broadcast_to(pixels.mean(axis=(0, 1)), pixels.shape).copy()
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(pixels, sigma=(settings.blur_sigma, settings.blur_sigma, 0), mode="reflect")


def view_weights(logits: np.ndarray, policy: ViewPolicy) -> np.ndarray:
    """d(aggregated logit) / d(view logit) for each view under the policy's aggregate rule."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    weights = np.zeros_like(logits)
    if policy.aggregate == "max":
        weights[int(np.argmax(logits))] = 1.0
    elif policy.aggregate == "topk":
        k = min(policy.top_k, logits.size)
        weights[np.argsort(logits, kind="stable")[-k:]] = 1.0 / k
    else:
        weights[:] = 1.0 / max(logits.size, 1)
    return weights


def _forward(detector, sign: float):
    """captum's forward function: float NCHW pixels (0..255) -> the signed logit of each copy."""

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        views = pixels.detach().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return torch.as_tensor(sign * np.asarray(detector.view_logits(views), dtype=np.float32).reshape(-1))

    return forward


def _similarity(width: float):
    """LIME's kernel: exp(-d^2 / width^2) of the cosine distance between the sample's superpixel switches and
    the unperturbed image's (all on), as the original LIME image explainer weighs its samples."""

    def similarity(original, perturbed, interpretable, **kwargs) -> torch.Tensor:
        on = interpretable.float().reshape(-1)
        cosine = on.sum() / (on.norm() * np.sqrt(on.numel()) + 1e-12)
        return torch.exp(-((1 - cosine) ** 2) / width**2)

    return similarity


def _explainer(method: str, forward, settings: ExplainSettings):
    from captum.attr import KernelShap, Lime

    if method == "shap":
        return KernelShap(forward)
    if method == "lime":
        from captum._utils.models.linear_model import SkLearnRidge

        return Lime(forward, interpretable_model=SkLearnRidge(alpha=settings.ridge_alpha),
                    similarity_func=_similarity(settings.kernel_width))  # fmt: skip
    raise ValueError(f"unknown attribution method {method!r} (lime, shap)")


def _pixels(array: np.ndarray) -> torch.Tensor:
    """An h x w x 3 array as the 1 x 3 x h x w float tensor captum perturbs."""
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32).permute(2, 0, 1)[None]


def view_attribution(detector, view: np.ndarray, method: str, sign: float, settings: ExplainSettings) -> np.ndarray:
    """The signed attribution (h x w float32, logit units) of one uint8 view's superpixels to `sign * logit`."""
    segments = superpixels(view, settings)
    explainer = _explainer(method, _forward(detector, sign), settings)
    with torch.random.fork_rng(devices=[]):  # captum draws from torch's global generator: seed a private copy
        torch.manual_seed(settings.seed)
        attribution = explainer.attribute(
            _pixels(view), baselines=_pixels(baseline(view, settings)),
            feature_mask=torch.as_tensor(segments)[None, None], n_samples=settings.n_samples,
            perturbations_per_eval=settings.batch_size,
        )  # fmt: skip
    # every channel of a pixel carries its superpixel's coefficient
    return attribution[0, 0].detach().cpu().numpy().astype(np.float32)


def attribution_maps(detector, views: np.ndarray, method: str, sign: float, settings: ExplainSettings | None = None
                     ) -> list[np.ndarray]:  # fmt: skip
    """Heat maps in [0, 1] (one per view, the view's size) of the evidence for `sign * logit`: each view's
    positive attribution times its weight in the aggregate, over the largest value of all views."""
    settings = settings or ExplainSettings()
    raw = [view_attribution(detector, view, method, sign, settings) for view in views]
    weights = view_weights(np.asarray(detector.view_logits(views)), detector.policy)
    maps = [np.clip(m, 0, None) * w for m, w in zip(raw, weights, strict=True)]
    top = max((float(m.max()) for m in maps), default=0.0)
    return [(m / top if top > 0 else m).astype(np.float32) for m in maps]
