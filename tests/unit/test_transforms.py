"""Seeded training augmentations (and the resize view they fall back on)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raydetect.data.transforms import TrainAugment, jpeg_roundtrip, random_native_crop
from raydetect.models.views import resize_center_crop
from tests.datasets import smooth_photo

PHOTO = Image.fromarray(smooth_photo(np.random.default_rng(0), 96))


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (50, 40), (224, 224), (224, 500)])
def test_resize_center_crop_is_square(size: tuple[int, int]):
    out = resize_center_crop(PHOTO.resize(size), 224)
    assert out.size == (224, 224)


def test_center_crop_keeps_the_centre():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (100, 0, 200, 100))  # white middle third
    out = np.asarray(resize_center_crop(image, 100))
    assert out.mean() > 250


def test_train_augment_is_seeded():
    a = [np.asarray(TrainAugment(64, 1.0, seed=s)(PHOTO)) for s in (1, 1, 2, 3, 4)]
    assert all(x.shape == (64, 64, 3) for x in a)
    np.testing.assert_array_equal(a[0], a[1])
    assert any(not np.array_equal(a[0], x) for x in a[2:])
    augment = TrainAugment(64, 1.0, seed=9)
    first, second = np.asarray(augment(PHOTO)), np.asarray(augment(PHOTO))
    assert not np.array_equal(first, second)  # one augmenter draws a fresh transform per call


def test_zero_strength_only_resizes_and_flips():
    base = np.asarray(resize_center_crop(PHOTO, 64))
    for seed in range(6):
        out = np.asarray(TrainAugment(64, 0.0, seed=seed)(PHOTO))
        assert np.array_equal(out, base) or np.array_equal(out, base[:, ::-1])


def test_jpeg_roundtrip():
    out = jpeg_roundtrip(PHOTO, 30)
    assert out.mode == "RGB" and out.size == PHOTO.size
    assert not np.array_equal(np.asarray(out), np.asarray(PHOTO))


def test_native_crop_cuts_pixels_without_resampling_from_anywhere_in_the_image():
    base = np.asarray(PHOTO)  # 96 px: larger than the model size (64) -- nothing is resized first
    windows = {(y, x): base[y : y + 24, x : x + 24] for y in range(73) for x in range(73)}
    seen = set()
    for seed in range(8):
        augment = TrainAugment(64, 0.0, seed=seed, crop=24)
        assert augment.output_size == 24
        out = np.asarray(augment(PHOTO))
        assert out.shape == (24, 24, 3)
        match = [k for k, w in windows.items() if np.array_equal(out, w) or np.array_equal(out, w[:, ::-1])]
        assert match, "a crop must be an exact window of the image (no resampling)"
        seen.add(match[0])
    assert len(seen) > 1  # the window moves with the seed
    assert any(y > 40 or x > 40 for y, x in seen)  # windows come from outside the central 64 px too
    assert TrainAugment(64, 1.0, seed=0, crop=64).output_size == 64  # crop >= size: the whole image


def test_native_crop_keeps_strength_augmentations():
    outs = [np.asarray(TrainAugment(64, 1.0, seed=s, crop=32)(PHOTO)) for s in range(6)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    np.testing.assert_array_equal(outs[0], np.asarray(TrainAugment(64, 1.0, seed=0, crop=32)(PHOTO)))


def test_random_native_crop_pads_small_images_and_never_upscales():
    import random

    small = Image.fromarray(np.asarray(PHOTO)[:20, :30])
    out = np.asarray(random_native_crop(small, 24, random.Random(0)))
    assert out.shape == (24, 24, 3)
    source = np.asarray(small)
    assert any(np.array_equal(out[:20, :24], source[:, x : x + 24]) for x in range(7))  # pixels kept 1:1
