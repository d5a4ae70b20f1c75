"""The ddpm generator: a tiny fit, the diffusers folder it leaves, caching, and seeded SDEdit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raydetect.data.benchmark.diffusion import (
    CARD_NAME,
    FitConfig,
    SDEditGenerator,
    crop_pool,
    ensure_generator,
    load_diffusion,
    render_crop,
    sample_box,
)
from raydetect.data.benchmark.sources import find_photos

TINY = FitConfig(channels=(8, 16), size=32, steps=3, batch_size=4, pool=16, seed=0)


@pytest.fixture(scope="module")
def photos():
    return find_photos(["sklearn"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, photos):
    return ensure_generator(tmp_path_factory.mktemp("gen"), photos, TINY, threads=1, progress=False)


def test_fit_leaves_a_diffusers_pipeline_folder_and_is_cached(model_dir, photos):
    from diffusers import DDPMPipeline

    assert (model_dir / "model_index.json").is_file() and (model_dir / "unet").is_dir()
    card = json.loads((model_dir / CARD_NAME).read_text())
    assert card["config"]["steps"] == 3 and card["photos"] == [p.photo_id for p in photos]
    assert DDPMPipeline.from_pretrained(model_dir).unet.config.block_out_channels == [8, 16]  # usable by anyone
    stamp = (model_dir / CARD_NAME).stat().st_mtime_ns
    again = ensure_generator(model_dir.parent, photos, TINY, threads=1, progress=False)
    assert again == model_dir and (model_dir / CARD_NAME).stat().st_mtime_ns == stamp  # reused, not refitted
    other = FitConfig(**{**TINY.__dict__, "seed": 1})
    assert other.key([p.photo_id for p in photos]) != TINY.key([p.photo_id for p in photos])


def test_sdedit_is_seeded_and_keeps_the_size(model_dir, photos):
    bundle = load_diffusion(model_dir)
    generator = SDEditGenerator(bundle, strength=0.3, steps=10, threads=1)
    assert len(generator.timesteps) == 3
    image = crop_pool(photos, 1, 36, seed=5)[0]  # 36 is not a multiple of 4: padded, then cropped back
    a, b, c = generator(image, 7), generator(image, 7), generator(image, 8)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # a fresh instance (another actor) gives the same bytes
    assert np.array_equal(a, SDEditGenerator(load_diffusion(model_dir), 0.3, 10, 1)(image, 7))


def test_crops_and_boxes(photos):
    rng = np.random.default_rng(0)
    for _ in range(50):
        left, top, side = sample_box(rng, 640, 427, 64)
        assert 64 <= side <= 427 and left + side <= 640 and top + side <= 427
    left, top, side = sample_box(rng, 50, 40, 64)  # smaller than the crop size: the whole shorter side
    assert side == 40 and top == 0 and 0 <= left <= 10
    from PIL import Image

    with Image.open(photos[0].path) as image:
        crop = render_crop(image.convert("RGB"), (10, 20, 100), 32)
    assert crop.shape == (32, 32, 3)
    pool = crop_pool(photos, 6, 32, seed=1)
    assert pool.shape == (6, 32, 32, 3) and np.array_equal(pool, crop_pool(photos, 6, 32, seed=1))


def test_load_diffusion_rejects_what_it_cannot_use(tmp_path):
    with pytest.raises(ValueError, match="no diffusers UNet2DModel"):
        load_diffusion(tmp_path)
    with pytest.raises(ValueError, match="strength"):
        SDEditGenerator.__init__(object.__new__(SDEditGenerator), None, strength=0.0)  # type: ignore[arg-type]


def test_any_diffusers_unet_folder_is_accepted(tmp_path, photos):
    """--diffusion-model: a bare UNet2DModel folder (no scheduler: the default epsilon DDIM is used)."""
    from raydetect.data.benchmark.diffusion import build_unet

    unet = build_unet(FitConfig(channels=(8, 16, 16), size=32))
    unet.save_pretrained(tmp_path / "bare")
    bundle = load_diffusion(tmp_path / "bare")
    assert bundle.scheduler_config["prediction_type"] == "epsilon" and bundle.info == {}
    image = crop_pool(photos, 1, 32, seed=0)[0]
    out = SDEditGenerator(bundle, strength=0.2, steps=10, threads=1)(image, 3)
    assert out.shape == image.shape


def test_generator_unet_has_no_attention_but_dire_keeps_its_own():
    """The benchmark's generator renders images 4-7x its 64 px training side: no self-attention, whose cost is
    quadratic in the pixels; DIRE's UNet (fixed-size tiles) keeps diffusers' default middle-block attention."""
    from diffusers.models.attention_processor import Attention

    from raydetect.config import DireFitSettings
    from raydetect.data.benchmark.diffusion import build_unet
    from raydetect.dire.fit import fit_config

    def attentions(config: FitConfig) -> int:
        return sum(isinstance(m, Attention) for m in build_unet(config).modules())

    assert attentions(FitConfig(channels=(8, 16), size=32)) == 0
    assert attentions(fit_config(DireFitSettings())) == 1
    assert FitConfig().key(["a"]) != FitConfig(mid_attention=True).key(["a"])  # a different cached model
