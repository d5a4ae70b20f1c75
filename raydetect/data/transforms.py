"""Preprocessing (resize + centre crop + ImageNet normalisation) and seeded training augmentations."""

from __future__ import annotations

import io
import random
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

if TYPE_CHECKING:  # torch is imported lazily: decode workers should not pay for it
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bicubic, only when it differs), then a centre crop of size x size."""
    width, height = image.size
    if min(width, height) != size:
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
        width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_normalized_array(
    image: Image.Image, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32, normalised."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def preprocess(
    image: Image.Image,
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """The evaluation transform: what scoring and serving apply to every decoded image."""
    return to_normalized_array(resize_center_crop(image, size), mean, std)


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def native_crop(crop: int | None, size: int) -> int | None:
    """The training crop side actually used: `crop` when it is smaller than `size`, else None (whole image)."""
    return int(crop) if crop and crop < size else None


class TrainAugment:
    """Seeded training augmentation: random resized crop, flip, colour jitter, and CNNDetection's
    blur + JPEG recipe (Gaussian blur sigma~U(0,3) and JPEG q~U(30,100), each with probability p).

    With `crop` (< size) the image is first brought to the evaluation geometry (`resize_center_crop` to
    `size`, a no-op for images already that size) and a random `crop` x `crop` window is cut at native
    resolution instead of the random *resized* crop: no resampling, so the pixel-level traces a detector
    learns survive, and a step costs (crop / size)^2 of a full-size one."""

    def __init__(self, size: int = 224, strength: float = 1.0, seed: int = 0, crop: int | None = None):
        self.size = size
        self.strength = strength
        self.crop = native_crop(crop, size)
        self.rng = random.Random(seed)

    @property
    def output_size(self) -> int:
        return self.crop or self.size

    def __call__(self, image: Image.Image) -> Image.Image:
        rng, s = self.rng, self.strength
        if self.crop:
            image = resize_center_crop(image, self.size)
            left, top = rng.randint(0, self.size - self.crop), rng.randint(0, self.size - self.crop)
            image = image.crop((left, top, left + self.crop, top + self.crop))
        width, height = image.size
        if s > 0 and not self.crop:
            area = width * height * rng.uniform(max(0.25, 1 - 0.6 * s), 1.0)
            side = int(min(width, height, area**0.5))
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            image = image.crop((left, top, left + side, top + side))
        image = resize_center_crop(image, self.output_size)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if s > 0 and rng.random() < 0.5 * min(1.0, s):
            from PIL import ImageEnhance

            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                image = enhancer(image).enhance(1 + rng.uniform(-0.2, 0.2) * s)
        if s > 0 and rng.random() < 0.3 * min(1.0, s):
            image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 3.0)))
        if s > 0 and rng.random() < 0.3 * min(1.0, s):
            image = jpeg_roundtrip(image, rng.randint(30, 100))
        return image


def to_tensor_batch(arrays: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """A list of CHW arrays (or an NCHW array) as one torch tensor (no copy when already stacked)."""
    import torch

    return torch.from_numpy(np.stack(arrays) if isinstance(arrays, list) else np.asarray(arrays))
