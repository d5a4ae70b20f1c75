"""The one safe decoder: sniffed formats, limits before decoding, EXIF orientation, reasons for failures."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from raydetect.config import load_settings
from raydetect.data.images import (
    DecodeLimits,
    ImageDecodeError,
    decode_image,
    sha256_hex,
    sniff_format,
    try_decode,
)
from tests.datasets import encode, smooth_photo, write_bad_files


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


RGB = Image.fromarray(smooth_photo(np.random.default_rng(0), 32))


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP"), ("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")],
)
def test_sniff_format_reads_magic_bytes(fmt: str, expected: str):
    assert sniff_format(_save(RGB, fmt)) == expected


def test_sniff_format_unknown():
    assert sniff_format(b"hello world") is None and sniff_format(b"") is None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_allowed_formats_and_modes_decode_to_rgb(fmt: str, mode: str):
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        pytest.skip("JPEG cannot hold this mode")
    image = decode_image(_save(RGB.convert(mode), fmt))
    assert image.mode == "RGB" and image.size == (32, 32)


def test_other_formats_are_rejected_unless_allowed():
    gif = _save(RGB, "GIF")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(gif)
    assert info.value.reason == "unsupported_format" and "GIF is not allowed" in info.value.message
    assert decode_image(gif, DecodeLimits(allowed_formats=("GIF",))).mode == "RGB"


def test_limits_are_checked_before_decoding():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_png_header_only(50_000, 50_000))  # 2.5 G pixels claimed, ~60 bytes on disk
    assert info.value.reason == "too_many_pixels"
    with pytest.raises(ImageDecodeError, match="too_many_pixels"):
        decode_image(encode(np.zeros((20, 20, 3), np.uint8)), DecodeLimits(max_pixels=399))
    assert decode_image(encode(np.zeros((20, 20, 3), np.uint8)), DecodeLimits(max_pixels=400)).size == (20, 20)
    with pytest.raises(ImageDecodeError, match="too_large"):
        decode_image(encode(np.zeros((20, 20, 3), np.uint8)), DecodeLimits(max_bytes=10))


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    assert decode_image(_save(wide, "JPEG", exif=exif.tobytes())).size == (20, 40)
    assert decode_image(_save(wide, "JPEG")).size == (40, 20)


def test_bad_files_have_reasons(tmp_path):
    bad = write_bad_files(tmp_path)
    reasons = {}
    for kind, path in bad.items():
        image, error = try_decode(path.read_bytes())
        assert image is None and ": " in error
        reasons[kind] = error.split(":")[0]
    assert reasons == {
        "corrupt": "corrupt", "truncated": "truncated", "empty": "empty", "not_image": "unsupported_format"
    }  # fmt: skip
    assert try_decode(_save(RGB, "PNG"))[1] is None


def test_limits_from_settings_and_hash():
    settings = load_settings(overrides=["images.max_pixels=1234", "images.allowed_formats=[png, jpeg]"])
    limits = DecodeLimits.from_settings(settings.images)
    assert limits.max_pixels == 1234 and limits.allowed_formats == ("PNG", "JPEG")
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = np.asarray(decode_image(_save(Image.fromarray(ramp), "PNG")))
    assert out.shape == (64, 64, 3) and out.min() == 0 and out.max() == 255
    assert abs(out.mean() - 127.5) < 2  # Pillow's plain convert("RGB") would give ~254 (almost all white)
