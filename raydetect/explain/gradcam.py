"""Grad-CAM for the one-logit detectors, with the `pytorch-grad-cam` package (PyPI `grad-cam`).

The model sees the image's views (`raydetect.models.views`: native-resolution tiles over the whole image, or
the legacy resized centre crop), so a map is computed per view and the maps are stitched back where their
views came from (`stitch`: averaged where tiles overlap, resized into the box of a resized view): the
overlay has the image's own size and covers the whole image; parts no view saw carry no heat.

The target is the signed logit: evidence *for* the decision that was taken (`+logit` when the image is called
AI, `-logit` when it is called real), so the heat always shows what drove the call. `explain/core.py` puts
this and the other methods together for one image; `explain/reasons.py` says what the map shows.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from raydetect.models.views import Box, normalize

OVERLAY_ALPHA = 0.6


class SignedLogitTarget:
    """pytorch-grad-cam target for a one-logit binary model: `sign * logit`."""

    def __init__(self, sign: float = 1.0):
        self.sign = float(sign)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return self.sign * model_output.reshape(-1)[0]


def target_layers(model: nn.Module) -> list[nn.Module]:
    """The last convolutional stage: `layer4[-1]` for ResNets, `features` for TinyCNN/EfficientNet-style
    models, the first norm of the last block for ViTs (with `reshape_transform`), else the last `Conv2d`."""
    if _is_vit(model):
        return [model.blocks[-1].norm1]
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Sequential) and len(layer4) > 0:
        return [layer4[-1]]
    for name in ("features", "conv_head", "blocks"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and any(isinstance(m, nn.Conv2d) for m in module.modules()):
            return [module]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution layer: Grad-CAM needs a CNN")
    return [convs[-1]]


def _is_vit(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return (
        hasattr(model, "patch_embed")
        and isinstance(blocks, nn.Sequential)
        and len(blocks) > 0
        and hasattr(blocks[-1], "norm1")
    )


def reshape_transform(
    model: nn.Module, input_hw: tuple[int, int] | None = None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For ViTs: tokens (N, prefix + h*w, C) -> a feature map (N, C, h, w) without the class token, the
    pytorch-grad-cam recipe for transformers (the grid from the input's size, else square); None for CNNs."""
    if not _is_vit(model):
        return None
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    embed = getattr(model, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    whole = math.ceil if getattr(embed, "dynamic_img_pad", False) else math.floor  # padded to whole patches?

    def to_grid(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        count = patches.shape[1]
        if input_hw is not None and patch is not None:
            rows, cols = whole(input_hw[0] / patch[0]), whole(input_hw[1] / patch[1])
        else:
            rows = cols = math.isqrt(count)
        if rows * cols != count:
            raise ValueError(f"{count} patch tokens do not form a {rows} x {cols} grid")
        return patches.reshape(patches.shape[0], rows, cols, patches.shape[2]).permute(0, 3, 1, 2)

    return to_grid


def gradcam_maps(model: nn.Module, batch: np.ndarray | torch.Tensor, sign: float = 1.0) -> np.ndarray:
    """Grad-CAM heat (N x H x W, each in [0, 1], at the input's size) of `sign * logit` for each NCHW input,
    in one forward and backward pass."""
    from pytorch_grad_cam import GradCAM

    device = next(model.parameters()).device
    tensor = torch.as_tensor(np.asarray(batch), dtype=torch.float32).to(device)
    if tensor.ndim == 3:
        tensor = tensor[None]
    was_training = model.training
    try:
        with (
            torch.enable_grad(),
            GradCAM(
                model=model,
                target_layers=target_layers(model),
                reshape_transform=reshape_transform(model, tuple(tensor.shape[-2:])),
            ) as cam,
        ):
            heat = cam(input_tensor=tensor, targets=[SignedLogitTarget(sign)] * tensor.shape[0])
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0).clip(0.0, 1.0)


def gradcam_map(model: nn.Module, batch: np.ndarray | torch.Tensor, sign: float = 1.0) -> np.ndarray:
    """Grad-CAM heat (H x W, in [0, 1], at the input's size) of `sign * logit` for one NCHW input."""
    return gradcam_maps(model, batch, sign)[0]


def view_cams(detector, views: np.ndarray, sign: float) -> list[np.ndarray]:
    """Grad-CAM of `sign * logit` for each uint8 view (h x w maps in [0, 1]). Grad-CAM scales every map to
    its own maximum, so each map is weighted by its view's share of the evidence: the view's signed logit
    (ReLU) over the strongest view's. Tiles that carry the decision stay hot, the others fade."""
    card = detector.card
    maps = gradcam_maps(detector.model, normalize(views, card.mean, card.std), sign)
    evidence = np.clip(sign * np.asarray(detector.view_logits(views), dtype=np.float64), 0.0, None)
    weights = evidence / evidence.max() if evidence.max() > 0 else np.ones(len(maps))
    return [(m * w).astype(np.float32) for m, w in zip(maps, weights, strict=True)]


def stitch(cams: list[np.ndarray], boxes: list[Box], image_size: tuple[int, int]) -> np.ndarray:
    """The views' maps placed onto the whole image (W, H): each resized into its box when the sizes differ
    (a resized view), averaged where boxes overlap, zero where no view looked."""
    width, height = image_size
    total = np.zeros((height, width), dtype=np.float32)
    count = np.zeros((height, width), dtype=np.float32)
    for cam, (left, top, right, bottom) in zip(cams, boxes, strict=True):
        right, bottom = min(right, width), min(bottom, height)
        box_w, box_h = max(1, right - left), max(1, bottom - top)
        patch = np.asarray(cam, dtype=np.float32)[:box_h, :box_w]
        if patch.shape != (box_h, box_w):
            patch = np.asarray(Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F").resize(
                (box_w, box_h), Image.Resampling.BILINEAR))
        total[top : top + box_h, left : left + box_w] += patch
        count[top : top + box_h, left : left + box_w] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0).clip(0.0, 1.0)


def _jet(values: np.ndarray) -> np.ndarray:
    """The classic jet colour map (blue -> cyan -> yellow -> red) for values in [0, 1] -> uint8 RGB."""
    v = values[..., None]
    red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([red, green, blue], axis=-1) * 255).astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The heat (same H x W as the image) drawn over the image; cold areas stay as they are."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = (alpha * heat.clip(0, 1))[..., None]
    mixed = base * (1 - weight) + _jet(heat).astype(np.float32) * weight
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
