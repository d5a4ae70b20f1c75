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


def test_hard_negative_steps_parse_replay_and_chain():
    from raydetect.data.benchmark.degrade import join_processing

    spec = join_processing("hardneg:bicubic0.55", "blur0.80+jpeg81")
    assert spec == "hardneg:bicubic0.55+blur0.80+jpeg81" and join_processing("none", "none") == "none"
    assert parse_processing(spec) == [("bicubic", 0.55), ("blur", 0.8), ("jpeg", 81.0)]
    image = smooth_photo(np.random.default_rng(3), 64)
    assert np.array_equal(apply_processing(image, spec), apply_processing(image, "bicubic0.55+blur0.80+jpeg81"))


@pytest.mark.parametrize("mode", ["resize", "blur"])
def test_match_sharpness_brings_the_real_image_to_the_target(mode):
    from raydetect.data.benchmark.degrade import match_sharpness
    from raydetect.data.content import grey_center, laplacian_ratio

    rng = np.random.default_rng(4)
    sharp = np.clip(smooth_photo(rng, 128).astype(int) + rng.integers(-30, 31, (128, 128, 3)), 0, 255).astype(np.uint8)
    soft = np.asarray(Image.fromarray(sharp).resize((48, 48), Image.Resampling.BICUBIC).resize((128, 128)))

    def lap(image):
        return laplacian_ratio(grey_center(image))

    step = match_sharpness(sharp, lap(soft), mode)
    assert step.startswith("hardneg:" + {"resize": "bicubic", "blur": "blur"}[mode])
    matched = lap(apply_processing(sharp, step))
    assert abs(np.log(matched) - np.log(lap(soft))) < abs(np.log(lap(sharp)) - np.log(lap(soft))) / 4
    assert match_sharpness(sharp, lap(sharp) * 10, mode) == ("hardneg:bicubic0.95" if mode == "resize" else
                                                                  "hardneg:blur0.30")  # fmt: skip
    if mode == "resize":  # a cap keeps the resize at or below it
        assert match_sharpness(sharp, lap(sharp) * 10, mode, cap=0.5371) == "hardneg:bicubic0.53"
