"""CLIP ViT image encoders (timm) as detectors: the UnivFD recipe of Ojha et al., CVPR 2023.

A frozen CLIP encoder with one linear logit on its pooled features generalises across generators and
degradations far better than a CNN trained end to end on a few sources, because the features come from
400M image-text pairs rather than from the training set. Train it as a linear probe by freezing everything
but the head for all epochs (`train.freeze_stem_epochs` >= `train.epochs`), on RGB input, whole images.

Weights are OpenAI's CLIP as timm publishes them on the Hugging Face hub (`timm/<name>`; QuickGELU
variants, which is what OpenAI trained). They are fetched once into the Hugging Face cache; on a machine
without internet, copy a cache filled elsewhere (`hf download timm/<name>`) and set `HF_HUB_OFFLINE=1`
(and `HF_HOME` if it is not the default `~/.cache/huggingface`).
"""

from __future__ import annotations

from torch import nn

# raydetect name -> timm model name (architecture.pretrained tag)
VARIANTS = {
    "clip_vit_b16": "vit_base_patch16_clip_quickgelu_224.openai",
    "clip_vit_l14": "vit_large_patch14_clip_quickgelu_224.openai",
}
# The normalisation CLIP was trained with (timm's pretrained_cfg agrees).
PREPROCESSING = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}


class MissingWeightsError(FileNotFoundError):
    """The pretrained CLIP weights are neither in the Hugging Face cache nor downloadable."""


def hub_id(variant: str) -> str:
    """The Hugging Face repository that holds `variant`'s weights, e.g. `timm/vit_base_patch16_clip_224.openai`
    (timm's QuickGELU variants share the weights of the plain ones)."""
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(_timm_name(variant)).hf_hub_id


def _timm_name(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown CLIP variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def clip_vit(variant: str, weights: str = "none") -> nn.Module:
    """One-logit detector: the CLIP ViT image encoder (OpenAI weights when `weights == 'imagenet'`, the
    registry's word for "the backbone's own pretrained weights"), a new linear head on the pooled features.
    Any input size works (`dynamic_img_size`: the position embeddings are interpolated)."""
    import timm

    name = _timm_name(variant)
    if weights not in ("imagenet", "none"):
        raise ValueError(f"weights must be 'imagenet' or 'none' here, got {weights!r}")
    try:
        return timm.create_model(name, pretrained=weights == "imagenet", num_classes=1, dynamic_img_size=True)
    except Exception as exc:  # timm may wrap the hub error
        if weights != "imagenet" or not _caused_by(exc, OSError):  # hub errors: not cached, offline, no route
            raise
        repo = hub_id(variant)
        raise MissingWeightsError(
            f"the CLIP weights of {variant} ({repo}) are not in the Hugging Face cache and could not "
            f"be downloaded ({type(exc).__name__}). On a machine with internet: `hf download {repo}`, "
            "then copy the cache here and set HF_HUB_OFFLINE=1 (and HF_HOME if it is not ~/.cache/huggingface)"
        ) from exc


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
