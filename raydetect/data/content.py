"""Content features of decoded pixels that can stand in for a label: sharpness and high-frequency energy
(upsampling generators make softer images than the photos they pair with). The shortcut audit
(`raydetect data verify`) reports the AUC of a one-feature classifier on each, next to the container
facts, and the benchmark card prints them.

All are computed on the grey (luma) central crop of at most `CONTENT_SIDE` pixels, at native resolution:
resampling would change the very thing measured. All are ratios, so contrast and exposure cancel:
- `laplacian_ratio`: variance of the 4-neighbour Laplacian (the finest scale) over the variance of a
  band-pass (difference of Gaussians, sigma 1 and 3): how much detail there is at the pixel level
  relative to the image's own mid-scale structure. Upsampled or blurred images score low.
- `hf_share`: spectral energy (Hann-windowed FFT) at radial frequencies >= 0.25 cycles/pixel, as a share
  of the energy above 1/32 cycles/pixel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CONTENT_SIDE = 512
CONTENT_FEATURES = ("laplacian_ratio", "hf_share")
_EPS = 1e-6


def grey_center(image: Image.Image | np.ndarray, side: int = CONTENT_SIDE) -> np.ndarray:
    """The luma of the central crop (at most side x side), float32, no resampling."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    width, height = image.size
    w, h = min(width, side), min(height, side)
    left, top = (width - w) // 2, (height - h) // 2
    return np.asarray(image.crop((left, top, left + w, top + h)).convert("L"), dtype=np.float32)


def laplacian_ratio(grey: np.ndarray) -> float:
    from scipy.ndimage import gaussian_filter

    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    band = gaussian_filter(grey, 1.0, mode="reflect") - gaussian_filter(grey, 3.0, mode="reflect")
    return float(lap.var() / (band.var() + _EPS))


def hf_share(grey: np.ndarray, cutoff: float = 0.25, floor: float = 1 / 32) -> float:
    h, w = grey.shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    power = np.abs(np.fft.rfft2((grey - grey.mean()) * window)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    return float(power[radius >= cutoff].sum() / (power[radius >= floor].sum() + _EPS))


def content_features(image: Image.Image | np.ndarray) -> dict[str, float | None]:
    """`CONTENT_FEATURES` of one image (None for images too small to measure, under 16 px a side)."""
    grey = grey_center(image)
    if min(grey.shape) < 16:
        return dict.fromkeys(CONTENT_FEATURES)
    return {"laplacian_ratio": laplacian_ratio(grey), "hf_share": hf_share(grey)}
