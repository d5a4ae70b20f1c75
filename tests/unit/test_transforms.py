"""Preprocessing and seeded training augmentations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raydetect.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainAugment,
    jpeg_roundtrip,
    preprocess,
    resize_center_crop,
    to_tensor_batch,
)
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


def test_preprocess_shape_dtype_and_normalisation():
    grey = Image.new("RGB", (64, 48), (128, 128, 128))
    out = preprocess(grey, size=32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, atol=1e-5)
    raw = preprocess(grey, 16, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(raw, 128 / 255, atol=1e-6)


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


def test_jpeg_roundtrip_and_tensor_batch():
    out = jpeg_roundtrip(PHOTO, 30)
    assert out.mode == "RGB" and out.size == PHOTO.size
    assert not np.array_equal(np.asarray(out), np.asarray(PHOTO))
    arrays = [preprocess(PHOTO, 16) for _ in range(3)]
    assert tuple(to_tensor_batch(arrays).shape) == (3, 3, 16, 16)
    assert tuple(to_tensor_batch(np.stack(arrays)).shape) == (3, 3, 16, 16)


def test_native_crop_cuts_pixels_without_resampling():
    base = np.asarray(resize_center_crop(PHOTO, 64))  # the evaluation geometry
    windows = {(y, x): base[y : y + 24, x : x + 24] for y in range(41) for x in range(41)}
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
    assert TrainAugment(64, 1.0, seed=0, crop=64).output_size == 64  # crop >= size: the whole image


def test_native_crop_keeps_strength_augmentations():
    outs = [np.asarray(TrainAugment(64, 1.0, seed=s, crop=32)(PHOTO)) for s in range(6)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    np.testing.assert_array_equal(outs[0], np.asarray(TrainAugment(64, 1.0, seed=0, crop=32)(PHOTO)))
