"""Super-resolution generators through ncnn on CPU: shapes, fidelity, edges, determinism, options."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raydetect.data.benchmark.sources import find_photos
from raydetect.data.benchmark.sr import SR_MODELS, NcnnUpscaler, SRGenerator, downscale


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    photo = next(p for p in find_photos(["skimage"]) if p.photo_id == "skimage/coffee")
    with Image.open(photo.path) as image:
        return np.asarray(image.convert("RGB").resize((96, 64), Image.Resampling.LANCZOS, box=(100, 50, 400, 250)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-9)))


@pytest.mark.parametrize("name", sorted(SR_MODELS))
def test_sr_generator_regenerates_the_crop(name, crop):
    generator = SRGenerator(name, threads=1)
    out = generator(crop, 0)
    assert out.shape == crop.shape and out.dtype == np.uint8
    # The counterpart shows the same content (not noise in one corner and blur elsewhere) …
    assert _psnr(out, crop) > 18
    corr = np.corrcoef(out.astype(float).ravel(), crop.astype(float).ravel())[0, 1]
    assert corr > 0.9
    # … everywhere, the borders included (reflect padding before the network, crop after).
    border = np.ones(crop.shape[:2], bool)
    border[6:-6, 6:-6] = False
    err = np.abs(out.astype(float) - crop.astype(float)).mean(axis=2)
    assert err[border].mean() < 2.5 * err[~border].mean() + 2
    # … and it is not the input: the network replaced the detail.
    assert not np.array_equal(out, crop)


def test_upscaler_is_deterministic_and_survives_allocations(crop):
    upscaler = NcnnUpscaler(SR_MODELS["waifu2x"], threads=1)
    small = downscale(crop, 2)
    first = upscaler.upscale(small)
    _garbage = [np.random.default_rng(i).random((256, 256, 3)).astype(np.float32) for i in range(8)]
    second = upscaler.upscale(small.copy())
    assert np.array_equal(first, second)
    assert first.shape == (crop.shape[0], crop.shape[1], 3)


def test_odd_sizes_pad_to_the_network_alignment():
    rng = np.random.default_rng(0)
    image = np.asarray(Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).resize((33, 29)))
    out = NcnnUpscaler(SR_MODELS["waifu2x"]).upscale(image)  # CUNet needs sides aligned to 4
    assert out.shape == (58, 66, 3)


def test_ncnn_runs_fp32_on_cpu():
    upscaler = NcnnUpscaler(SR_MODELS["esrgan-anime"], threads=1)
    opt = upscaler.net.opt
    assert opt.use_vulkan_compute is False
    assert not any(
        getattr(opt, n) for n in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage")
    )
    assert opt.num_threads == 1


def test_bad_sizes_and_names():
    with pytest.raises(ValueError, match="multiples of 4"):
        SRGenerator("esrgan")(np.zeros((30, 32, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="unknown super-resolution generator"):
        SRGenerator("bsrgan")
