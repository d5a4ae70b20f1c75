"""Input filters that run inside the model, in front of its stem, so that training, scoring, Serve and
Grad-CAM all see the same thing without any change to preprocessing.

`npr` is Neighbouring Pixel Relationships (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based
Generative Network for Generalizable Deepfake Detection", CVPR 2024): the image minus its nearest-neighbour
2x down- then up-sampled copy. Generators that upsample (super-resolution networks, decoders) leave
correlations between neighbouring pixels; the residual keeps those and drops most of the content, so the
detector has less photo-specific content to memorise.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn
from torch.nn import functional as F

from raydetect.config import InputFilter

INPUT_FILTERS: tuple[str, ...] = get_args(InputFilter)  # one list, for the config and the models
NPR_SCALE = 4.0  # the residual is small next to the normalised image; this brings it to a similar range


class NPRFilter(nn.Module):
    """x - up2(down2(x)), nearest neighbour, times `scale`; any height and width (odd sides are cropped back)."""

    def __init__(self, scale: float = NPR_SCALE):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        up = F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")[..., :height, :width]
        return self.scale * (x - up)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def check_input_filter(name: str) -> str:
    if name not in INPUT_FILTERS:
        raise ValueError(f"unknown input filter {name!r}; choose one of {', '.join(INPUT_FILTERS)}")
    return name


def add_input_filter(model: nn.Module, name: str) -> nn.Module:
    """Put the filter `name` in front of the model's stem convolution (`conv_stem` for timm EfficientNets,
    `conv1` for torchvision ResNets, `patch_embed.proj` for timm ViTs, `features` for TinyCNN); `none`
    returns the model unchanged."""
    if check_input_filter(name) == "none":
        return model
    filt = NPRFilter()
    for attr in ("conv_stem", "conv1"):
        stem = getattr(model, attr, None)
        if isinstance(stem, nn.Module):
            setattr(model, attr, nn.Sequential(filt, stem))
            return model
    patch_embed = getattr(model, "patch_embed", None)
    if isinstance(getattr(patch_embed, "proj", None), nn.Conv2d):
        patch_embed.proj = nn.Sequential(filt, patch_embed.proj)
        return model
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        model.features = nn.Sequential(filt, *features)
        return model
    known = "conv_stem, conv1, patch_embed.proj or features"
    raise ValueError(f"{type(model).__name__} has no known stem ({known}) for an input filter")
