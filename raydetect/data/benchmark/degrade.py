"""Label-independent processing and the common encoding of every benchmark image.

A share of the images of *both* classes passes through random degradations drawn from one distribution
(bicubic down/up-sampling, Gaussian blur, JPEG round trip), so "soft or compressed" carries no label. The
draw is written as a spec string (the `processing` column), e.g. `none`, `jpeg72`,
`bicubic0.62+blur0.90+jpeg81`, and `apply_processing(image, spec)` replays it exactly.

**Hard negatives** are the one exception, on purpose: a share of the *real* images is resized (down, then
back up, bicubic) or blurred and kept real, because upsampling generators make softer images than the
photos they pair with, and sharpness alone would otherwise tell the classes apart. The step is chosen per
pair so the real image's sharpness (`content.laplacian_ratio`) comes nearest its AI counterpart's
(`match_sharpness`), and it is written with a `hardneg:` prefix before the label-independent steps, e.g.
`hardneg:bicubic0.55+jpeg81` (a resized photo is still a photo).

Every image is then encoded the same way (one format, one JPEG quality, no metadata), so container facts
(format, size, quantisation tables, metadata) carry no label either.

The same steps are the evaluation's perturbations (`evaluate/robustness.py`: `jpeg50`, `blur2`, ...), plus
`downscaleF`, which the benchmark never draws: a bicubic resize by F that keeps the smaller size.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image, ImageFilter

OPS = ("bicubic", "blur", "jpeg")
BICUBIC_RANGE = (0.5, 0.9)  # down-sampling factor, then back up to the original size
BLUR_RANGE = (0.5, 1.5)  # Gaussian sigma, pixels
JPEG_RANGE = (60, 95)  # quality
_STEP = re.compile(r"^(hardneg:)?(bicubic|blur|jpeg|downscale)([0-9.]+)$")
HARDNEG = "hardneg:"
HARDNEG_RESIZE = (0.25, 0.95)  # down-sampling factors a resized hard negative may use (then back up)
HARDNEG_BLUR = (0.3, 2.5)  # Gaussian sigmas a blurred hard negative may use


def draw_processing(rng: np.random.Generator, share: float) -> str:
    """With probability `share`, a random non-empty chain of degradations (in a fixed order); else `none`."""
    if rng.random() >= share:
        return "none"
    chosen = [op for op in OPS if rng.random() < 0.5]
    if not chosen:
        chosen = [OPS[int(rng.integers(len(OPS)))]]
    steps = []
    for op in chosen:
        if op == "bicubic":
            steps.append(f"bicubic{rng.uniform(*BICUBIC_RANGE):.2f}")
        elif op == "blur":
            steps.append(f"blur{rng.uniform(*BLUR_RANGE):.2f}")
        else:
            steps.append(f"jpeg{int(rng.integers(JPEG_RANGE[0], JPEG_RANGE[1] + 1))}")
    return "+".join(steps)


def parse_processing(spec: str) -> list[tuple[str, float]]:
    """`bicubic0.62+jpeg81` -> [("bicubic", 0.62), ("jpeg", 81.0)]; `none` -> []. A `hardneg:` prefix
    marks a step done to a real image only; it replays like any other step."""
    if spec in ("", "none"):
        return []
    steps = []
    for part in spec.split("+"):
        match = _STEP.match(part)
        if not match:
            raise ValueError(
            f"bad processing step {part!r} in {spec!r} (expected bicubicF, blurF, jpegN or downscaleF)"
        )
        steps.append((match.group(2), float(match.group(3))))
    return steps


def apply_processing(image: np.ndarray, spec: str) -> np.ndarray:
    """Replay a processing spec on an RGB uint8 image; the size is unchanged unless it has a `downscale`."""
    steps = parse_processing(spec)
    if not steps:
        return image
    pil = Image.fromarray(image)
    width, height = pil.size
    for op, value in steps:
        if op == "bicubic":
            small = (max(1, round(width * value)), max(1, round(height * value)))
            pil = pil.resize(small, Image.Resampling.BICUBIC).resize((width, height), Image.Resampling.BICUBIC)
        elif op == "downscale":
            width, height = max(1, round(width * value)), max(1, round(height * value))
            pil = pil.resize((width, height), Image.Resampling.BICUBIC)
        elif op == "blur":  # Pillow's radius is the Gaussian's standard deviation
            pil = pil.filter(ImageFilter.GaussianBlur(radius=value))
        else:
            buffer = io.BytesIO()
            pil.save(buffer, format="JPEG", quality=int(value))
            buffer.seek(0)
            pil = Image.open(buffer).convert("RGB")
    return np.asarray(pil)


def join_processing(*specs: str) -> str:
    """Chain specs in order, dropping `none`s: ("hardneg:blur1.20", "jpeg80") -> "hardneg:blur1.20+jpeg80"."""
    parts = [spec for spec in specs if spec and spec != "none"]
    return "+".join(parts) or "none"


def _candidates(mode: str, cap: float) -> list[str]:
    """The hard-negative steps of `mode`, from the mildest to the strongest (2-decimal values)."""
    if mode == "resize":
        low, high = HARDNEG_RESIZE[0], math.floor(100 * min(HARDNEG_RESIZE[1], cap) + 1e-6) / 100
        values = np.round(np.arange(high, low - 1e-9, -0.01), 2) if high >= low else np.array([low])
        return [f"bicubic{v:.2f}" for v in values]
    if mode == "blur":
        values = np.round(np.arange(HARDNEG_BLUR[0], HARDNEG_BLUR[1] + 1e-9, 0.05), 2)
        return [f"blur{v:.2f}" for v in values]
    raise ValueError(f"unknown hard-negative mode {mode!r} (resize or blur)")


def match_sharpness(real: np.ndarray, target: float, mode: str, cap: float = 1.0) -> str:
    """The `hardneg:` step of `mode` (resize down to at most `cap`, or blur) that brings the real image's
    `laplacian_ratio` nearest `target` (in log scale): a bisection over the candidate steps, whose
    sharpness falls monotonically from the mildest to the strongest. The mildest when the image is already
    as soft as the target."""
    from raydetect.data.content import grey_center, laplacian_ratio

    steps = _candidates(mode, cap)
    cache: dict[int, float] = {}

    def sharpness(index: int) -> float:
        if index not in cache:
            cache[index] = laplacian_ratio(grey_center(apply_processing(real, steps[index])))
        return cache[index]

    goal = np.log(max(target, 1e-6))
    lo, hi = 0, len(steps) - 1
    while hi - lo > 1:  # invariant (when the target is in range): sharpness(lo) >= target >= sharpness(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if sharpness(mid) >= target else (lo, mid)
    best = min({lo, hi}, key=lambda i: abs(np.log(max(sharpness(i), 1e-6)) - goal))
    return HARDNEG + steps[best]


ENCODINGS = ("png", "jpeg")


def extension(encoding: str) -> str:
    return {"png": "png", "jpeg": "jpg"}[check_encoding(encoding)]


def check_encoding(encoding: str) -> str:
    encoding = encoding.lower()
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    return encoding


def encode(image: np.ndarray, encoding: str = "png", quality: int = 95) -> bytes:
    """The common encoding: PNG (lossless) or baseline JPEG at one fixed quality with 4:2:0 subsampling;
    no EXIF, ICC, text chunks or other metadata; the same bytes for the same pixels."""
    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if check_encoding(encoding) == "png":
        pil.save(buffer, format="PNG", compress_level=6)
    else:
        pil.save(buffer, format="JPEG", quality=int(quality), subsampling="4:2:0", optimize=False, progressive=False)
    return buffer.getvalue()
