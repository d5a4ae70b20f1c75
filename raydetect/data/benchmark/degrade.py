"""Label-independent processing and the common encoding of every benchmark image.

A share of the images of *both* classes passes through random degradations drawn from one distribution
(bicubic down/up-sampling, Gaussian blur, JPEG round trip), so "soft or compressed" carries no label. The
draw is written as a spec string (the `processing` column), e.g. `none`, `jpeg72`,
`bicubic0.62+blur0.90+jpeg81`, and `apply_processing(image, spec)` replays it exactly.

Every image is then encoded the same way (one format, one JPEG quality, no metadata), so container facts
(format, size, quantisation tables, metadata) carry no label either.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageFilter

OPS = ("bicubic", "blur", "jpeg")
BICUBIC_RANGE = (0.5, 0.9)  # down-sampling factor, then back up to the original size
BLUR_RANGE = (0.5, 1.5)  # Gaussian sigma, pixels
JPEG_RANGE = (60, 95)  # quality
_STEP = re.compile(r"^(bicubic|blur|jpeg)([0-9.]+)$")


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
    """`bicubic0.62+jpeg81` -> [("bicubic", 0.62), ("jpeg", 81.0)]; `none` -> []."""
    if spec in ("", "none"):
        return []
    steps = []
    for part in spec.split("+"):
        match = _STEP.match(part)
        if not match:
            raise ValueError(f"bad processing step {part!r} in {spec!r} (expected bicubicF, blurF or jpegN)")
        steps.append((match.group(1), float(match.group(2))))
    return steps


def apply_processing(image: np.ndarray, spec: str) -> np.ndarray:
    """Replay a processing spec on an RGB uint8 image; the size is unchanged."""
    steps = parse_processing(spec)
    if not steps:
        return image
    pil = Image.fromarray(image)
    width, height = pil.size
    for op, value in steps:
        if op == "bicubic":
            small = (max(1, round(width * value)), max(1, round(height * value)))
            pil = pil.resize(small, Image.Resampling.BICUBIC).resize((width, height), Image.Resampling.BICUBIC)
        elif op == "blur":
            pil = pil.filter(ImageFilter.GaussianBlur(radius=value))
        else:
            buffer = io.BytesIO()
            pil.save(buffer, format="JPEG", quality=int(value))
            buffer.seek(0)
            pil = Image.open(buffer).convert("RGB")
    return np.asarray(pil)


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
