"""The one safe image decoder used by training, scoring and serving.

Formats are sniffed from the bytes (never trusted from names or content types); only allowed formats are
decoded; the pixel count is checked from the header *before* decoding (decompression bombs); EXIF
orientation is applied; the result is RGB. Every failure is an `ImageDecodeError` with a short `reason`
code and a human message, so callers can turn it into an error row or a 4xx.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_ALLOWED = ("JPEG", "PNG", "WEBP")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 25 * 1024 * 1024


class ImageDecodeError(ValueError):
    """Why an image could not be decoded. `reason` is a stable code: empty, too_large, unsupported_format,
    too_many_pixels, truncated, corrupt."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    allowed_formats: tuple[str, ...] = DEFAULT_ALLOWED

    @classmethod
    def from_settings(cls, images) -> DecodeLimits:  # images: raydetect.config.ImageSettings
        return cls(images.max_pixels, images.max_bytes, tuple(f.upper() for f in images.allowed_formats))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str | None:
    """The container format from magic bytes: JPEG, PNG, WEBP, GIF, BMP, TIFF, or None."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, 8 bits per channel. High-bit-depth greys (16-bit PNG: mode I;16 / I, float F) are scaled down:
    Pillow's own convert("RGB") clips them at 255, turning most 16-bit images white."""
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
            array = array / 257.0 if array.max(initial=0) <= 65535 else array * (255.0 / array.max())
        elif image.mode == "F" and array.max(initial=0) <= 1.0:
            array = array * 255.0
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))  # 2-D uint8 -> mode L
    return image.convert("RGB")


def decode_image(data: bytes, limits: DecodeLimits | None = None) -> Image.Image:
    """Decode `data` into an RGB PIL image, or raise `ImageDecodeError` saying why not."""
    limits = limits or DecodeLimits()
    if not data:
        raise ImageDecodeError("empty", "the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError("too_large", f"{len(data)} bytes is over the {limits.max_bytes}-byte limit")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("unsupported_format", "not a recognised image (no JPEG/PNG/WebP signature)")
    if fmt not in limits.allowed_formats:
        raise ImageDecodeError("unsupported_format", f"{fmt} is not allowed ({', '.join(limits.allowed_formats)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError("corrupt", f"invalid dimensions {width}x{height}")
            if width * height > limits.max_pixels:
                raise ImageDecodeError(
                    "too_many_pixels", f"{width}x{height} is over the {limits.max_pixels}-pixel cap"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("corrupt", f"{fmt} header could not be read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() or isinstance(exc, EOFError) else "corrupt"
        raise ImageDecodeError(reason, f"{fmt} data could not be decoded ({text})") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder bug must become a reasoned error, never a crash
        raise ImageDecodeError("corrupt", f"{fmt} decoder failed ({type(exc).__name__}: {exc})") from exc


def try_decode(data: bytes, limits: DecodeLimits | None = None) -> tuple[Image.Image | None, str | None]:
    """`(image, None)` or `(None, "reason: message")`: the form used for error rows."""
    try:
        return decode_image(data, limits), None
    except ImageDecodeError as exc:
        return None, str(exc)


# --- JPEGs decoded on the model's device (GPU preprocessing) ----------------------------------------------


def deferrable_jpeg(data: bytes, limits: DecodeLimits | None = None) -> tuple[int, int] | None:
    """(width, height) when `data` is a JPEG the model actor may decode itself (`decode_jpegs`, nvJPEG on a
    GPU): an allowed format, within the limits, RGB or greyscale, no EXIF rotation (nvJPEG cannot apply one).
    None: decode it here with `decode_image` (which also says why a file is bad)."""
    limits = limits or DecodeLimits()
    if not data or len(data) > limits.max_bytes or sniff_format(data) != "JPEG" or "JPEG" not in limits.allowed_formats:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["JPEG"])  # the header only
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - anything odd goes through the full decoder, which names the reason
        return None
    if image.mode not in ("RGB", "L") or orientation != 1 or not 0 < width * height <= limits.max_pixels:
        return None
    return width, height


def decodes_on_model(mode: str, model_gpus: float) -> bool:
    """A `preprocess_on` setting (`score.` or `serve.`) resolved: whether the model's process (scoring actor,
    Serve replica) decodes the JPEGs `deferrable_jpeg` lets through: `model`, or `auto` where it has a GPU."""
    return mode == "model" or (mode == "auto" and model_gpus > 0)


def decode_jpegs(blobs: list[bytes], sizes: list[tuple[int, int]], device) -> list:
    """Decode JPEGs that passed `deferrable_jpeg` into (3, H, W) uint8 tensors on `device` (one batched nvJPEG
    call on CUDA, libjpeg-turbo on CPU: the same pixels as `decode_image` there). A file that fails (corrupt
    or truncated data behind a valid header, a size that disagrees with the header) gives its
    "reason: message" string instead of a tensor; the others still decode."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    inputs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec; decode_jpeg is still its batched nvJPEG path
        warnings.simplefilter("ignore")
        try:
            images = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device) if inputs else []
        except Exception:  # noqa: BLE001 - one bad file fails the whole batch: decode one by one to find it
            images = [_decode_one(x, device) for x in inputs]
    out = []
    for image, (width, height) in zip(images, sizes, strict=True):
        if isinstance(image, torch.Tensor) and tuple(image.shape) != (3, height, width):
            image = f"corrupt: JPEG decoded to {tuple(image.shape[1:])}, its header says {height}x{width}"
        out.append(image)
    return out


def _decode_one(data, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except Exception as exc:  # noqa: BLE001 - a reasoned error row, never a crash
        text = str(exc)
        reason = "truncated" if "truncat" in text.lower() or "premature" in text.lower() else "corrupt"
        return f"{reason}: JPEG data could not be decoded ({text.strip().splitlines()[0][:200]})"
