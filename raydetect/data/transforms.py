"""Seeded training augmentations. The evaluation transform (image -> model views) lives in
`raydetect.models.views`, the one place scoring, Serve, validation and Grad-CAM get it from."""

from __future__ import annotations

import io
import random
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from raydetect.models.views import resize_center_crop

if TYPE_CHECKING:  # torch is imported lazily: decode workers should not pay for it
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def native_crop(crop: int | None, size: int) -> int | None:
    """The training crop side actually used: `crop` when it is smaller than `size`, else None (whole image)."""
    return int(crop) if crop and crop < size else None


def random_native_crop(image: Image.Image, crop: int, rng: random.Random) -> Image.Image:
    """A random `crop` x `crop` window of the image at native resolution, from anywhere in an image of any
    size; a side shorter than `crop` is reflect-padded (never upscaled)."""
    width, height = image.size
    if width < crop or height < crop:
        array = np.asarray(image.convert("RGB"))
        pad_h, pad_w = max(0, crop - height), max(0, crop - width)
        mode = "reflect" if pad_h < height and pad_w < width else "symmetric"
        image = Image.fromarray(np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode))
        width, height = image.size
    left, top = rng.randint(0, width - crop), rng.randint(0, height - crop)
    return image.crop((left, top, left + crop, top + crop))


class TrainAugment:
    """Seeded training augmentation: random resized crop, flip, colour jitter, and CNNDetection's
    blur + JPEG recipe (Gaussian blur sigma~U(0,3) and JPEG q~U(30,100), each with probability p).

    With `crop` (< size) a random `crop` x `crop` window is cut at native resolution from anywhere in the
    image, whatever its size, instead of the random *resized* crop: no resampling, so the pixel-level traces
    a detector learns survive (as the `native` view policy keeps them at scoring time), and a step costs
    (crop / size)^2 of a full-size one."""

    def __init__(self, size: int = 224, strength: float = 1.0, seed: int = 0, crop: int | None = None):
        self.size = size
        self.strength = strength
        self.crop = native_crop(crop, size)
        self.rng = random.Random(seed)  # nosec B311 # augmentation draws, not security

    @property
    def output_size(self) -> int:
        return self.crop or self.size

    def __call__(self, image: Image.Image) -> Image.Image:
        rng, s = self.rng, self.strength
        if self.crop:
            image = random_native_crop(image, self.crop, rng)
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
