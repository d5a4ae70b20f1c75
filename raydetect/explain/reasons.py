"""One-line reasons that name the evidence: where on the image the attribution sits, and which frequency band
of the image carries it. Plain numpy/scipy, deterministic; works on any heat map of the image's size
(Grad-CAM, LIME, KernelSHAP, DIRE).

- **Where**: among named windows of the image (its halves, quarters, ninths and the central area), the one
  whose share of the attribution most exceeds its share of the area (`share - area`): a quarter holding
  everything beats a half holding everything, a small corner holding everything beats the quarter around it.
  When no window holds more than `SPREAD` above its area's share, the evidence is spread over the image.
- **Which band**: the grey image is split into three bands with differences of Gaussians (`high`: x - G1,
  periods under ~4 px: fine texture, noise, resampling grids; `mid`: G1 - G4, edges and small detail;
  `low`: G4 - G16, coarse shapes and shading). Each band's energy in the window, weighted by the attribution,
  is compared with the band's mean energy over the whole image; the band most enriched there is named, with
  its ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SPREAD = 0.15  # a window must hold this much more of the attribution than its share of the area
BAND_STANDS_OUT = 1.25  # ratio over which a band "carries" the evidence; under 1 / this the area is smooth
LOW_STEP = 4  # the low band is computed on a 4x block-mean downsample (its Gaussians are wide)
BAND_TEXT = {
    "high": "fine high-frequency texture",
    "mid": "mid-frequency detail (edges, small structures)",
    "low": "coarse low-frequency structure (shapes, shading)",
}
_THIRDS = (("top-left corner", "top middle", "top-right corner"), ("left middle", "centre", "right middle"),
           ("bottom-left corner", "bottom middle", "bottom-right corner"))
# name -> (left, top, right, bottom) as fractions of the width and height
WINDOWS: dict[str, tuple[float, float, float, float]] = {
    "upper-left quarter": (0, 0, 0.5, 0.5), "upper-right quarter": (0.5, 0, 1, 0.5),
    "lower-left quarter": (0, 0.5, 0.5, 1), "lower-right quarter": (0.5, 0.5, 1, 1),
    "upper half": (0, 0, 1, 0.5), "lower half": (0, 0.5, 1, 1),
    "left half": (0, 0, 0.5, 1), "right half": (0.5, 0, 1, 1),
    "central area": (0.25, 0.25, 0.75, 0.75),
    **{_THIRDS[r][c]: (c / 3, r / 3, (c + 1) / 3, (r + 1) / 3) for r in range(3) for c in range(3)},
}  # fmt: skip


@dataclass(frozen=True)
class Region:
    name: str
    box: tuple[int, int, int, int]  # left, top, right, bottom in pixels
    share: float  # of the attribution
    area: float  # of the image

    @property
    def concentrated(self) -> bool:
        return self.share - self.area >= SPREAD


@dataclass(frozen=True)
class Band:
    name: str  # high | mid | low
    ratio: float  # attribution-weighted energy in the region over the band's mean energy in the image


def _pixel_box(window: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = window
    return round(left * width), round(top * height), max(round(right * width), 1), max(round(bottom * height), 1)


def evidence_region(heat: np.ndarray) -> Region | None:
    """The named window with the most attribution above its share of the area; None for an empty map."""
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0, None)
    total = heat.sum()
    if total <= 1e-12:
        return None
    height, width = heat.shape
    best: Region | None = None
    for name, window in WINDOWS.items():
        left, top, right, bottom = _pixel_box(window, width, height)
        share = float(heat[top:bottom, left:right].sum() / total)
        area = (right - left) * (bottom - top) / (width * height)
        if best is None or share - area > best.share - best.area + 1e-9:
            best = Region(name, (left, top, right, bottom), share, area)
    if not best.concentrated:
        return Region("whole image", (0, 0, width, height), 1.0, 1.0)
    return best


def _gray(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if array.ndim == 2:
        return array
    return array[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def band_energies(image: Image.Image | np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel energy (squared response, H x W) of the high, mid and low bands of the grey image."""
    from scipy.ndimage import gaussian_filter

    gray = _gray(image)
    height, width = gray.shape
    fine, medium = gaussian_filter(gray, 1.0), gaussian_filter(gray, 4.0)
    rows, cols = -(-height // LOW_STEP), -(-width // LOW_STEP)  # the low band on a block-mean downsample
    padded = np.pad(medium, ((0, rows * LOW_STEP - height), (0, cols * LOW_STEP - width)), mode="edge")
    small = padded.reshape(rows, LOW_STEP, cols, LOW_STEP).mean(axis=(1, 3))
    low = (small - gaussian_filter(small, 16.0 / LOW_STEP)) ** 2
    low = np.repeat(np.repeat(low, LOW_STEP, axis=0), LOW_STEP, axis=1)[:height, :width]
    return {"high": (gray - fine) ** 2, "mid": (fine - medium) ** 2, "low": low}


def evidence_band(image: Image.Image | np.ndarray, heat: np.ndarray, region: Region) -> Band:
    """The band whose attribution-weighted energy in `region` is highest relative to the whole image's."""
    left, top, right, bottom = region.box
    weights = np.clip(np.asarray(heat, dtype=np.float64), 0, None)[top:bottom, left:right]
    ratios = {}
    for name, energy in band_energies(image).items():
        inside = float((weights * energy[top:bottom, left:right]).sum() / max(weights.sum(), 1e-12))
        ratios[name] = inside / max(float(energy.mean()), 1e-9)
    name = max(ratios, key=ratios.get)
    return Band(name, ratios[name])


def _band_text(band: Band) -> str:
    if band.ratio >= BAND_STANDS_OUT:
        return f"mostly {BAND_TEXT[band.name]} ({band.ratio:.1f}x the image's {band.name}-band energy)"
    if band.ratio <= 1 / BAND_STANDS_OUT:
        return f"in comparatively smooth parts (at most {band.ratio:.1f}x the image's energy in any band)"
    return "with no frequency band standing out"


def verdict(prob_ai: float, decision: str) -> str:
    label = {"ai": "AI", "real": "real", "review": "review (uncertain)"}.get(decision, decision)
    return f"{label} (P(AI)={prob_ai:.2f})"


def reason(image: Image.Image | np.ndarray, heat: np.ndarray, prob_ai: float, decision: str, threshold: float) -> str:
    """One line: the decision, where the evidence for it is (`evidence_region`) and which band of the image
    carries it (`evidence_band`). `heat` (H x W, >= 0, the image's size) is the evidence for the call taken
    at `threshold`: for AI when `prob_ai >= threshold`, else for real."""
    head = verdict(prob_ai, decision)
    target = "AI" if prob_ai >= threshold else "real"
    region = evidence_region(heat)
    if region is None:
        return f"{head}: no localised evidence for {target} (the attribution map is empty)"
    band = _band_text(evidence_band(image, heat, region))
    if region.name == "whole image":
        return f"{head}: evidence for {target} spread over the whole image, {band}"
    return (f"{head}: evidence for {target} concentrated in the {region.name} ({100 * region.share:.0f} % of the "
            f"attribution in {100 * region.area:.0f} % of the area), {band}")
