"""DIRE: the diffusion reconstruction error of an image as evidence of where it came from (plain PyTorch +
diffusers, no Ray).

An image x (in [-1, 1]) is pushed towards noise by a pixel-space `UNet2DModel` and brought back; generated
images sit closer to what a diffusion model reconstructs than photographs do (Wang et al., ICCV 2023).
Three ways to reconstruct, `DireSettings.mode`:

- `full`: deterministic DDIM inversion over a k-step schedule (`DDIMInverseScheduler`, x_0 -> x_T), then
  k DDIM steps back (`DDIMScheduler`, eta 0): 2k UNet passes (k = 20 is the paper's 40).
- `truncated`: the same, but invert only the first s steps of the schedule (to t0 = s/k T) and come back
  from there: 2s passes.
- `onestep`: noise to t = noise_level T with one fixed, seeded noise field (the same for every image, so
  an image's map never depends on its batch), predict x_0 once: 1 pass (LaRE²-style).

Schedulers run with `clip_sample=False` and `set_alpha_to_one=True` on both sides, so inversion and
reconstruction use the same noise levels and the round trip is exact for a UNet whose prediction does not
depend on its input; for any other UNet its error falls with the schedule's length (first order) as long as
t0 stays away from T (near T, 1/sqrt(alpha_T) ~ 150 amplifies the mismatch of an untrained UNet's
predictions between the two directions; trained UNets are smooth enough). Sizes that are not a multiple
of the UNet's down-sampling are reflect-padded and cropped back. The UNet runs in fp16 on CUDA, fp32 on
CPUs (a map is a small difference of two images: bf16's 8 bits would drown it); the scheduler arithmetic
stays fp32.

The error map is |x - x̂| in [0, 1] image units (x and x̂ in [0, 1]), float32, NHWC. On disk it is kept
losslessly and the same way for both classes (`encode_map`: float32 `.npy`, or 16-bit PNG), never JPEG for
one class and PNG for the other (the shortcut behind DIRE's published accuracy). `error_features` turns a
map into a fixed-length vector (per channel: mean, std, percentiles, radial frequency-band energies) for
the statistics classifier; `DireDetector` (model directory `kind: dire`) computes maps and classifies them
with the same `predict_images(views)` interface as `bundle.Detector`.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from raydetect.config import DireSettings, StorageSettings
from raydetect.models.views import ViewPolicy, image_logits, make_views, map_views, sigmoid

PERCENTILES = (50, 90, 99)
BANDS = (0.0, 0.0625, 0.125, 0.25, 0.5)  # radial frequency bands, cycles/pixel (0.5 = Nyquist)
CHANNELS = ("r", "g", "b")
FEATURE_NAMES = tuple(
    f"{c}_{stat}"
    for c in CHANNELS
    for stat in (
        "log_mean",
        "log_std",
        *(f"log_p{p}" for p in PERCENTILES),
        *(f"log_band{i}" for i in range(len(BANDS) - 1)),
    )
)
EPS = 1e-6


def unet_passes(settings: DireSettings) -> int:
    """UNet forward passes per view for a configuration."""
    if settings.mode == "full":
        return 2 * settings.steps
    if settings.mode == "truncated":
        return 2 * min(settings.truncated_steps, settings.steps)
    return 1


def config_label(settings: DireSettings) -> str:
    if settings.mode == "full":
        return f"full {settings.steps}+{settings.steps}"
    if settings.mode == "truncated":
        return f"truncated {settings.truncated_steps}/{settings.steps}"
    return f"onestep t={settings.noise_level:g}"


def load_unet(source: str) -> tuple[nn.Module, dict[str, Any]]:
    """A pixel-space RGB `UNet2DModel` and its scheduler config from a diffusers id or folder (the
    benchmark's one resolver, `benchmark.diffusion.load_diffusion`)."""
    from diffusers import UNet2DModel

    from raydetect.data.benchmark.diffusion import load_diffusion

    bundle = load_diffusion(source)
    unet = UNet2DModel.from_config(bundle.unet_config)
    unet.load_state_dict(bundle.state_dict)
    return unet.eval(), dict(bundle.scheduler_config)


def _schedulers(scheduler_config: dict[str, Any], steps: int):
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    common = {"clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "leading"}
    forward = DDIMScheduler.from_config(scheduler_config, **common)
    inverse = DDIMInverseScheduler.from_config(scheduler_config, **common)
    forward.set_timesteps(steps)
    inverse.set_timesteps(steps)
    return forward, inverse


def predict_x0(output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x_0 from the UNet's output at noise level alpha (= alphas_cumprod[t])."""
    if prediction_type == "sample":
        return output
    if prediction_type == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * output
    return (sample - (1 - alpha).sqrt() * output) / alpha.sqrt()


class Reconstruction(nn.Module):
    """The DIRE maths as a module: x (NCHW in [-1, 1]) -> x̂ by the configured mode, the same shape, clamped
    to [-1, 1]. Runs in the dtype of its UNet, on the device of its input, and is differentiable (no
    inference mode: the `dire` input filter, models/filters.py, runs it inside a CNN); `Reconstructor` wraps
    it for the map jobs and `DireDetector`. The UNet is a submodule, so it moves and saves with the module."""

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], settings: DireSettings):
        super().__init__()
        self.unet = unet.eval()
        self.settings = settings
        self.ddim, self.ddim_inverse = _schedulers(scheduler_config, settings.steps)
        self.prediction_type = self.ddim.config.prediction_type
        self.multiple = 2 ** (len(self.unet.config.down_block_types) - 1)
        self.passes = unet_passes(settings)
        self._noise: dict[tuple[int, int, str], torch.Tensor] = {}

    def train(self, mode: bool = True) -> Reconstruction:
        """Always in eval mode: the UNet is a fixed function of the image."""
        return super().train(False)

    def _unet(self, sample: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(sample.to(dtype), t).sample.float()

    def _ddim(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Invert the first `steps` steps of the schedule, then reconstruct over the same steps."""
        sample = x
        for t in self.ddim_inverse.timesteps[:steps]:
            sample = self.ddim_inverse.step(self._unet(sample, t), t, sample).prev_sample
        for t in self.ddim.timesteps[len(self.ddim.timesteps) - steps :]:
            sample = self.ddim.step(self._unet(sample, t), t, sample, eta=0.0).prev_sample
        return sample

    def noise(self, height: int, width: int, device: Any = "cpu") -> torch.Tensor:
        """The one fixed noise field of `onestep` for this size (seeded, on the CPU, then moved)."""
        key = (height, width, str(torch.device(device)))
        if key not in self._noise:
            generator = torch.Generator().manual_seed(self.settings.seed)
            self._noise[key] = torch.randn((1, 3, height, width), generator=generator).to(device)
        return self._noise[key]

    def _onestep(self, x: torch.Tensor) -> torch.Tensor:
        total = self.ddim.config.num_train_timesteps
        t = int(min(total - 1, max(1, round(self.settings.noise_level * total))))
        alpha = self.ddim.alphas_cumprod[t].to(x.device, torch.float32)
        noisy = alpha.sqrt() * x + (1 - alpha).sqrt() * self.noise(*x.shape[-2:], device=x.device)
        return predict_x0(self._unet(noisy, t), noisy, alpha, self.prediction_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        x = x.float()
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        if self.settings.mode == "onestep":
            out = self._onestep(x)
        elif self.settings.mode == "truncated":
            out = self._ddim(x, min(self.settings.truncated_steps, self.settings.steps))
        else:
            out = self._ddim(x, self.settings.steps)
        return out[..., :height, :width].clamp(-1, 1)


def error_map(x: torch.Tensor, reconstruction: Reconstruction) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, |x - x̂|) in [0, 1] image units for x NCHW in [0, 1], float32 NCHW: the one definition of a DIRE
    map (`Reconstructor.maps` for the map jobs and `DireDetector`, the `dire` input filter for CNNs)."""
    x = x.float()
    recon = reconstruction(x * 2 - 1).add(1).div(2)
    return recon, (x - recon).abs()


class Reconstructor:
    """`Reconstruction` on a device, in inference mode: x (NCHW in [-1, 1]) -> x̂; `maps(views)` -> (x̂,
    |x - x̂|) for uint8 views."""

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], settings: DireSettings, device: Any = "cpu"):
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.module = Reconstruction(unet.to(self.device), scheduler_config, settings)
        if self.dtype != torch.float32:
            self.module.half()
        self.unet, self.settings = self.module.unet, settings
        self.forward, self.inverse = self.module.ddim, self.module.ddim_inverse
        self.prediction_type, self.multiple, self.passes = (
            self.module.prediction_type, self.module.multiple, self.module.passes,
        )

    def noise(self, height: int, width: int) -> torch.Tensor:
        """The one fixed noise field of `onestep` for this size (seeded, on the CPU, then moved)."""
        return self.module.noise(height, width, self.device)

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ of a batch x (NCHW float in [-1, 1]), the same shape, clamped to [-1, 1]."""
        return self.module(x.to(self.device, torch.float32))

    @torch.inference_mode()
    def maps(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 NHWC views -> (x̂ in [0, 1], |x - x̂| in [0, 1]), float32 NHWC arrays of the views' shape."""
        recon, error = error_map(to_unit(views).to(self.device), self.module)
        return recon.cpu().permute(0, 2, 3, 1).numpy(), error.cpu().permute(0, 2, 3, 1).numpy()

    def errors(self, views: np.ndarray) -> np.ndarray:
        return self.maps(views)[1]


def to_unit(views: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] (CPU)."""
    array = np.ascontiguousarray(views, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(0, 3, 1, 2).float() / 255.0


# --- statistics -----------------------------------------------------------------------------------------


def band_energies(error: np.ndarray) -> np.ndarray:
    """Mean spectral power of each map channel in the radial `BANDS` (N, C, bands), size-independent."""
    n, h, w, c = error.shape
    spectrum = np.abs(np.fft.rfft2(np.moveaxis(error, -1, 1), axes=(-2, -1))) ** 2 / (h * w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    out = np.zeros((n, c, len(BANDS) - 1), dtype=np.float64)
    for i, (low, high) in enumerate(zip(BANDS[:-1], BANDS[1:], strict=True)):
        mask = (radius >= low) & (radius < high) if i else (radius > 0) & (radius < high)
        out[..., i] = spectrum[..., mask].mean(axis=-1) if mask.any() else 0.0
    return out


def error_features(error: np.ndarray) -> np.ndarray:
    """Fixed-length statistics of error maps (N, h, w, 3) -> (N, len(FEATURE_NAMES)) float32 (logs)."""
    error = np.asarray(error, dtype=np.float64)
    flat = error.reshape(error.shape[0], -1, error.shape[-1])  # N, pixels, C
    stats = [flat.mean(axis=1), flat.std(axis=1), *np.percentile(flat, PERCENTILES, axis=1)]
    per_channel = np.stack(stats, axis=-1)  # N, C, 2 + percentiles
    values = np.concatenate([per_channel, band_energies(error)], axis=-1)
    return np.log(values + EPS).reshape(error.shape[0], -1).astype(np.float32)


# --- maps on disk: lossless, one way for both classes ------------------------------------------------------

MAP_SUFFIX = {"npy": ".npy", "png16": ".png"}


def encode_map(error: np.ndarray, fmt: str = "npy") -> bytes:
    """One map (h, w, 3) in [0, 1] as bytes: float32 `.npy`, or a 16-bit RGB PNG (value * 65535)."""
    error = np.asarray(error, dtype=np.float32)
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, error, allow_pickle=False)
        return buffer.getvalue()
    if fmt == "png16":
        import cv2

        levels = np.round(np.clip(error, 0, 1) * 65535).astype(np.uint16)
        ok, data = cv2.imencode(".png", np.ascontiguousarray(levels[..., ::-1]))  # cv2 is BGR
        if not ok:
            raise ValueError("16-bit PNG encoding failed")
        return data.tobytes()
    raise ValueError(f"unknown map format {fmt!r} (npy, png16)")


def decode_map(data: bytes, fmt: str = "npy") -> np.ndarray:
    """`encode_map`'s bytes back to a float32 (h, w, 3) map in [0, 1]."""
    if fmt == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    import cv2

    levels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if levels is None or levels.dtype != np.uint16:
        raise ValueError("not a 16-bit PNG map")
    return levels[..., ::-1].astype(np.float32) / 65535.0


# --- the detector ---------------------------------------------------------------------------------------


class LinearHead(nn.Module):
    """Standardise, then a linear logit: a fitted scikit-learn StandardScaler + LogisticRegression as
    tensors, so a DIRE model directory is `model.json` + `weights.pt` like any other (no pickle)."""

    def __init__(self, n_features: int):
        super().__init__()
        for name in ("mean", "scale", "coef"):
            self.register_buffer(name, torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(1, dtype=torch.float64))

    @classmethod
    def from_pipeline(cls, pipeline) -> LinearHead:
        scaler, logistic = pipeline[0], pipeline[-1]
        head = cls(len(scaler.mean_))
        head.mean.copy_(torch.as_tensor(scaler.mean_))
        head.scale.copy_(torch.as_tensor(scaler.scale_))
        head.coef.copy_(torch.as_tensor(logistic.coef_.reshape(-1)))
        head.intercept.copy_(torch.as_tensor(logistic.intercept_.reshape(-1)))
        return head

    def logits(self, features: np.ndarray) -> np.ndarray:
        f = torch.as_tensor(np.asarray(features, dtype=np.float64))
        return (((f - self.mean) / self.scale) @ self.coef + self.intercept).numpy()


class DireModule(nn.Module):
    """The weights of a DIRE model directory: the UNet and the statistics head."""

    def __init__(self, unet: nn.Module, head: LinearHead):
        super().__init__()
        self.unet, self.head = unet, head


def dire_card_params(settings: DireSettings, unet: nn.Module, scheduler_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "dire": settings.model_dump(exclude={"fit"}),
        "unet_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items()},
        "scheduler_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in scheduler_config.items()},
        "features": list(FEATURE_NAMES),
        "classifier": "logistic regression on error statistics",
    }


def dire_policy(settings: DireSettings) -> ViewPolicy:
    """The views DIRE maps are made of: native-resolution tiles of `tile` px, never resampled."""
    return ViewPolicy(mode="native", size=settings.tile, max_tiles=settings.max_tiles)


class DireDetector:
    """A DIRE model: each view's map (`Reconstructor`), its statistics, one logit per view from the linear
    head, aggregated per image by the view policy. Same interface as `bundle.Detector`."""

    def __init__(self, module: DireModule, card, device: torch.device, policy: ViewPolicy | None = None):
        params = card.params
        self.settings = DireSettings(**params["dire"])
        self.card, self.device = card, device
        self.policy = policy or card.view_policy
        self.reconstructor = Reconstructor(module.unet, params["scheduler_config"], self.settings, device)
        self.head = module.head.cpu()
        self.precision = "fp16" if device.type == "cuda" else "fp32"

    @classmethod
    def load(
        cls, uri: str, device: str = "auto", view_mode: str | None = None, precision: str = "auto",
        storage_settings: StorageSettings | None = None,
    ) -> DireDetector:
        """Load a `kind: dire` model directory (`precision` is fixed: fp16 on CUDA, fp32 on CPU)."""
        from diffusers import UNet2DModel

        from raydetect.models.bundle import load_card, load_weights, resolve_device

        card = load_card(uri, storage_settings)
        dev = resolve_device(device)
        module = DireModule(UNet2DModel.from_config(card.params["unet_config"]), LinearHead(len(FEATURE_NAMES)))
        module.load_state_dict(load_weights(uri, storage_settings))
        return cls(module, card, dev, card.view_policy.with_mode(view_mode))

    def view_features(self, views: np.ndarray) -> np.ndarray:
        return error_features(self.reconstructor.errors(views))

    def view_logits(self, views: np.ndarray) -> np.ndarray:
        return self.head.logits(self.view_features(views))

    def predict_images(self, images: list[np.ndarray], max_batch: int | None = None) -> np.ndarray:
        """P(AI) per image from its uint8 views, as `Detector.predict_images` (at most `dire.batch_size` views
        per UNet pass)."""
        batch = max(1, min(max_batch or self.settings.batch_size, self.settings.batch_size))
        return sigmoid(image_logits(self.view_logits, images, self.policy, batch))

    def predict_image(self, image: Image.Image | np.ndarray) -> float:
        return float(self.predict_images([make_views(image, self.policy)])[0])

    def explain_views(self, views: np.ndarray) -> list[np.ndarray]:
        """The DIRE map of each view as a heat map in [0, 1] (channel mean, scaled by its 99th percentile)."""
        errors = map_views(self.reconstructor.errors, [views], self.settings.batch_size)[0]
        heat = errors.mean(axis=-1)
        scale = np.percentile(heat, 99) + EPS
        return [np.clip(h / scale, 0, 1).astype(np.float32) for h in heat]


def save_dire_model(
    uri: str,
    unet: nn.Module,
    scheduler_config: dict[str, Any],
    pipeline,
    settings: DireSettings,
    storage_settings: StorageSettings | None = None,
    **card_fields: Any,
) -> str:
    """Write a DIRE model directory (`model.json` with `kind: dire` + `weights.pt`) from a UNet and a fitted
    scikit-learn pipeline (StandardScaler, LogisticRegression)."""
    from raydetect.models.bundle import ModelCard, save_model

    params = {**dire_card_params(settings, unet, scheduler_config), **card_fields.pop("params", {})}
    card = ModelCard(
        backbone="dire-unet",
        kind="dire",
        image_size=settings.tile,
        views=asdict(dire_policy(settings)),
        params=params,
        **card_fields,
    )
    return save_model(DireModule(unet.float().cpu(), LinearHead.from_pipeline(pipeline)), card, uri,
                      storage_settings)
