"""Label-independent processing specs and the common, metadata-free encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raydetect.data.benchmark.degrade import apply_processing, draw_processing, encode, parse_processing
from tests.datasets import smooth_photo


def test_draw_respects_the_share_and_ranges():
    rng = np.random.default_rng(0)
    specs = [draw_processing(rng, 0.3) for _ in range(4000)]
    share = np.mean([s != "none" for s in specs])
    assert 0.27 < share < 0.33
    for spec in specs:
        for op, value in parse_processing(spec):
            assert {"bicubic": 0.5 <= value <= 0.9, "blur": 0.5 <= value <= 1.5, "jpeg": 60 <= value <= 95}[op]
    ops = {op for s in specs for op, _ in parse_processing(s)}
    assert ops == {"bicubic", "blur", "jpeg"}
    assert all(draw_processing(rng, 0.0) == "none" for _ in range(100))
    assert all(draw_processing(rng, 1.0) != "none" for _ in range(100))


def test_apply_replays_a_spec_and_keeps_the_size():
    image = smooth_photo(np.random.default_rng(1), 64)
    assert apply_processing(image, "none") is image
    out = apply_processing(image, "bicubic0.60+blur1.00+jpeg70")
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.array_equal(out, apply_processing(image, "bicubic0.60+blur1.00+jpeg70"))
    with pytest.raises(ValueError, match="bad processing step"):
        apply_processing(image, "sharpen2")


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_encoding_is_fixed_and_metadata_free(encoding):
    rng = np.random.default_rng(2)
    a, b = smooth_photo(rng, 64), smooth_photo(rng, 64)
    data_a, data_b = encode(a, encoding, 90), encode(b, encoding, 90)
    assert data_a == encode(a, encoding, 90)  # same pixels, same bytes
    with Image.open(io.BytesIO(data_a)) as ia, Image.open(io.BytesIO(data_b)) as ib:
        assert ia.format == ib.format == {"png": "PNG", "jpeg": "JPEG"}[encoding]
        assert ia.size == ib.size == (64, 64) and ia.mode == ib.mode == "RGB"
        assert not ia.getexif() and "icc_profile" not in ia.info and "exif" not in ia.info
        if encoding == "jpeg":
            assert ia.quantization == ib.quantization
        else:
            assert np.array_equal(np.asarray(ia), a)  # lossless
