"""Input filters that run inside the model, in front of its stem, so that training, scoring, Serve and
Grad-CAM all see the same thing without any change to preprocessing.

`npr` is Neighbouring Pixel Relationships (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based
Generative Network for Generalizable Deepfake Detection", CVPR 2024): the image minus its nearest-neighbour
2x down- then up-sampled copy. Generators that upsample (super-resolution networks, decoders) leave
correlations between neighbouring pixels; the residual keeps those and drops most of the content, so the
detector has less photo-specific content to memorise.

`dire` is the DIRE error map (Wang et al., ICCV 2023; models/dire.py): a frozen small diffusion UNet and its
scheduler map the input, normalised back to [0, 1] (and to [-1, 1] for the UNet), to |x - x̂| by the
`dire.mode` settings (onestep: one UNet pass with DIRE's one fixed, seeded noise field, so an image's map
never depends on its batch), through `models.dire.Reconstruction`, the same code as the map jobs. A CNN
with this filter is an ordinary `kind: cnn` model: the UNet's weights are part of its `weights.pt` and its
configuration (`dire_filter_spec`) is in the card's `params["filter"]`, so the model directory rebuilds it
anywhere; the diffusion folder it was trained from is read only when training starts. The UNet's
parameters never train (`requires_grad` False, left out of the optimiser: `frozen_parameters`).
"""

from __future__ import annotations

from typing import Any, get_args

import torch
from torch import nn
from torch.nn import functional as F

from raydetect.config import InputFilter

INPUT_FILTERS: tuple[str, ...] = get_args(InputFilter)  # one list, for the config and the models
NPR_SCALE = 4.0  # the residual is small next to the normalised image; this brings it to a similar range
DIRE_SCALE = 10.0  # likewise for DIRE maps (a trained UNet's one-step error: a few hundredths of the range)
DIRE_KEYS = ("mode", "steps", "truncated_steps", "noise_level", "seed")  # what makes a map (maps.maps_config)
TUNE_FILTERS = ("none", "npr")  # what Tune searches by default (`dire` needs a fitted diffusion UNet)


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


class DireFilter(nn.Module):
    """Normalised NCHW input -> `scale` x its DIRE map |x - x̂| (x in [0, 1]), by `models.dire.error_map`.

    `spec` (`dire_filter_spec`): unet_config, scheduler_config, dire (the `DIRE_KEYS` settings), mean and
    std (the backbone's normalisation, undone here), scale. The UNet is built from its config with random
    weights (a model directory's `weights.pt` or `load_filter_unet` fills them) and frozen. It runs in fp32
    with autocast off whatever the model's precision (a map is a small difference of two images; bf16 would
    drown it), without autograd unless the input needs a gradient (adversarial training)."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        from diffusers import UNet2DModel

        from raydetect.config import DireSettings
        from raydetect.models.dire import Reconstruction

        missing = {"unet_config", "scheduler_config", "dire", "mean", "std"} - set(spec)
        if missing:
            raise ValueError(f"the dire input filter's spec lacks {sorted(missing)} (see filters.dire_filter_spec)")
        unet = UNet2DModel.from_config(dict(spec["unet_config"]))
        self.dire = Reconstruction(unet, dict(spec["scheduler_config"]), DireSettings(**spec["dire"]))
        for name in ("mean", "std"):  # from the spec, not the state_dict
            value = torch.tensor(spec[name], dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer(name, value, persistent=False)
        self.scale = float(spec.get("scale", DIRE_SCALE))
        for param in self.parameters():
            param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from raydetect.models.dire import error_map

        grad = torch.is_grad_enabled() and x.requires_grad
        with torch.autocast(x.device.type, enabled=False), torch.set_grad_enabled(grad):
            unit = (x.float() * self.std + self.mean).clamp(0, 1)
            return self.scale * error_map(unit, self.dire)[1]

    def extra_repr(self) -> str:
        s = self.dire.settings
        return f"mode={s.mode}, noise_level={s.noise_level:g}, steps={s.steps}, scale={self.scale}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dire_filter_spec(diffusion: str, dire, mean, std, scale: float = DIRE_SCALE) -> dict[str, Any]:
    """The card's description of a `dire` filter (JSON): the UNet's and scheduler's configs read from the
    diffusion folder or id `diffusion` (`benchmark.diffusion.load_diffusion`), the reconstruction settings of
    `dire` (a `DireSettings`), the normalisation and scale; `diffusion` is kept only as a record."""
    from raydetect.data.benchmark.diffusion import load_diffusion

    bundle = load_diffusion(diffusion)
    return {
        "name": "dire",
        "diffusion": str(diffusion),
        "unet_config": _plain(dict(bundle.unet_config)),
        "scheduler_config": _plain(dict(bundle.scheduler_config)),
        "dire": {k: getattr(dire, k) for k in DIRE_KEYS},
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "scale": float(scale),
    }


def load_filter_unet(model: nn.Module, diffusion: str) -> None:
    """Fill the `dire` filter's UNet of `model` with the weights of the diffusion folder or id (training)."""
    from raydetect.data.benchmark.diffusion import load_diffusion

    filters = [m for m in model.modules() if isinstance(m, DireFilter)]
    if not filters:
        raise ValueError("the model has no dire input filter")
    state = load_diffusion(diffusion).state_dict
    for filt in filters:
        filt.dire.unet.load_state_dict(state)


def frozen_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of frozen input filters (the DIRE UNet): never trained, never in the optimiser."""
    return [p for m in model.modules() if isinstance(m, DireFilter) for p in m.parameters()]


def check_input_filter(name: str) -> str:
    if name not in INPUT_FILTERS:
        raise ValueError(f"unknown input filter {name!r}; choose one of {', '.join(INPUT_FILTERS)}")
    return name


def make_filter(name: str, spec: dict[str, Any] | None = None) -> nn.Module:
    """The filter module `name` (`dire` needs its `spec`, see `dire_filter_spec`)."""
    if check_input_filter(name) == "npr":
        return NPRFilter()
    if name == "dire":
        if not spec:
            raise ValueError("the dire input filter needs its spec (filters.dire_filter_spec: a fitted diffusion UNet)")
        return DireFilter(spec)
    raise ValueError(f"no filter module for {name!r}")


def add_input_filter(model: nn.Module, name: str, spec: dict[str, Any] | None = None) -> nn.Module:
    """Put the filter `name` in front of the model's stem convolution (`conv_stem` for timm EfficientNets,
    `conv1` for torchvision ResNets, `patch_embed.proj` for timm ViTs, `features` for TinyCNN); `none`
    returns the model unchanged. `spec`: the `dire` filter's configuration."""
    if check_input_filter(name) == "none":
        return model
    filt = make_filter(name, spec)
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
