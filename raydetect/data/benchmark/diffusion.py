"""The `ddpm` generator: SDEdit regeneration with a `diffusers` UNet2DModel and a DDIM scheduler.

SDEdit: noise the real crop to a chosen strength (a fraction of the diffusion's timesteps), then denoise
it with a few deterministic DDIM steps. The result keeps the layout of the crop; its fine detail is the
network's.

No diffusion weights can be downloaded on our machines, so `fit_generator` trains a small pixel-space
UNet (channels 16/32/64, no attention, ~0.64 M parameters) on random real crops for a few minutes on CPU.
Training draws timesteps only from the range SDEdit uses (`t_max`), which is what makes a few minutes
enough, and the UNet predicts the clean image (`prediction_type="sample"`): a briefly trained epsilon or
v model leaves visible grain at the last steps (a free "AI" label no real generator has), an x0 model
gives clean, smooth output instead. The result is saved as a `diffusers` DDPM pipeline folder
(`model_index.json`, `unet/`, `scheduler/`) in a cache keyed by its parameters; `load_diffusion` accepts
that folder or any diffusers model id / local path holding a pixel-space `UNet2DModel` (a `unet/`
subfolder or the model itself; its scheduler config says what it predicts).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raydetect.data.benchmark.sources import Photo, open_photo

CARD_NAME = "raydetect_generator.json"


@dataclass(frozen=True)
class FitConfig:
    """How the benchmark's own diffusion model is trained (every field is part of the cache key)."""

    channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    size: int = 64  # training crop size; without mid_attention the UNet is fully convolutional and runs at any size
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    t_max: float = 0.5  # train on timesteps [0, t_max * T): the part SDEdit uses
    prediction_type: str = "sample"  # what the UNet predicts: sample (x0), epsilon or v_prediction
    pool: int = 2048  # real crops extracted once, sampled (with flips) for every batch
    num_train_timesteps: int = 1000
    seed: int = 0
    # Self-attention in the UNet's middle block (diffusers' default). Off for the benchmark's generator: it is
    # trained on 64 px crops (16x16 tokens there) but renders 224-448 px images (56x56-112x112 tokens), where
    # the attention's quadratic cost is 78 % of a 448 px step (3.1 s against 0.7 s without, one thread).
    mid_attention: bool = False

    def key(self, photo_ids: Sequence[str]) -> str:
        payload = json.dumps({"config": asdict(self), "photos": sorted(photo_ids)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class DiffusionBundle:
    """Everything an actor needs to rebuild the model without touching the filesystem or the hub."""

    unet_config: dict[str, Any]
    state_dict: dict[str, Any]
    scheduler_config: dict[str, Any]
    source: str  # the folder or model id it was loaded from
    info: dict[str, Any] = field(default_factory=dict)


# --- crops ---------------------------------------------------------------------------------------------


def sample_box(
    rng: np.random.Generator, width: int, height: int, size: int, least: int | None = None
) -> tuple[int, int, int]:
    """A square crop (left, top, side) with a log-uniform side in [least, shorter side] (`least` defaults
    to `size`; the whole shorter side when the photo is smaller) and a uniform position."""
    short = min(width, height)
    least = size if least is None else least
    side = short if short <= least else int(round(math.exp(rng.uniform(math.log(least), math.log(short)))))
    side = min(max(side, 1), short)
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    return left, top, side


def render_crop(photo: Image.Image, box: tuple[int, int, int], size: int) -> np.ndarray:
    """The crop `box` of `photo`, resized to size x size (antialiased Lanczos), as RGB uint8."""
    left, top, side = box
    region = (left, top, left + side, top + side)
    return np.asarray(photo.resize((size, size), Image.Resampling.LANCZOS, box=region))


def crop_pool(photos: Sequence[Photo], n: int, size: int, seed: int) -> np.ndarray:
    """`n` random real crops (n x size x size x 3 uint8), photos weighted by sqrt(pixels), loaded one at a
    time so memory stays small."""
    rng = np.random.default_rng(seed)
    weights = np.sqrt([p.pixels for p in photos])
    counts = rng.multinomial(n, weights / weights.sum())
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    index = 0
    for photo, count in zip(photos, counts, strict=True):
        if not count:
            continue
        image = open_photo(photo.path)
        for _ in range(count):
            out[index] = render_crop(image, sample_box(rng, *image.size, size), size)
            index += 1
    return out[rng.permutation(n)]


# --- model ---------------------------------------------------------------------------------------------


def build_unet(config: FitConfig):
    from diffusers import UNet2DModel

    levels = len(config.channels)
    return UNet2DModel(
        sample_size=config.size,
        in_channels=3,
        out_channels=3,
        layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.channels),
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=min(8, min(config.channels)),
        add_attention=config.mid_attention,
    )


def train_unet(pool: np.ndarray, config: FitConfig, progress: bool = True, desc: str = "fit-generator"):
    """The training loop every small pixel-space UNet here shares (the benchmark's `ddpm` generator, DIRE's
    reconstruction model): `config.steps` AdamW steps (warm-up + cosine) on random flipped crops of `pool`
    (n x size x size x 3 uint8), timesteps drawn from [0, t_max * T), target per `prediction_type`.

    Deterministic for `config.seed` (and a fixed torch thread count). Returns (unet in eval mode, the DDPM
    noise scheduler, per-step losses)."""
    import torch
    from diffusers import DDPMScheduler

    from raydetect.progress import progress as progress_bar

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pool_t = torch.from_numpy(np.ascontiguousarray(pool)).permute(0, 3, 1, 2)
    unet = build_unet(config)
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule="linear",
        prediction_type=config.prediction_type,
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = max(1, config.steps // 20)
    lr_at = lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    t_high = max(1, int(config.t_max * config.num_train_timesteps))
    losses: list[float] = []
    unet.train()
    bar = progress_bar(range(config.steps), desc=desc, disable=not progress, unit="step")
    for _ in bar:
        index = torch.randint(0, len(pool_t), (config.batch_size,), generator=generator)
        batch = pool_t[index].float() / 127.5 - 1.0
        flip = torch.rand(config.batch_size, generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(0, t_high, (config.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(batch, noise, timesteps)
        if config.prediction_type == "sample":
            target = batch
        elif config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(batch, noise, timesteps)
        else:
            target = noise
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return unet.eval(), noise_scheduler, losses


def save_pipeline(unet, noise_scheduler, out_dir: str | Path, card: dict[str, Any], card_name: str = CARD_NAME) -> Path:
    """Save a diffusers DDPM pipeline folder (`unet/`, a DDIM `scheduler/`) and `card_name` beside them,
    atomically: written to `<out_dir>.partial`, then renamed."""
    import shutil

    from diffusers import DDIMScheduler, DDPMPipeline

    out_dir = Path(out_dir)
    pipeline = DDPMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(noise_scheduler.config))
    tmp = out_dir.with_name(out_dir.name + ".partial")
    pipeline.save_pretrained(tmp)
    (tmp / card_name).write_text(json.dumps(card, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def fit_generator(
    photos: Sequence[Photo],
    out_dir: str | Path,
    config: FitConfig = FitConfig(),
    threads: int = 2,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train the small UNet on real crops and save a diffusers DDPM pipeline folder at `out_dir`.

    Deterministic for `config.seed` (and a fixed `threads`). Returns `out_dir`."""
    import torch

    if not photos:
        raise ValueError("fit_generator needs at least one photo")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        pool = crop_pool(photos, config.pool, config.size, config.seed)
        unet, noise_scheduler, losses = train_unet(pool, config, progress)
        card = {
            "config": asdict(config),
            "photos": [p.photo_id for p in photos],
            "parameters": int(sum(p.numel() for p in unet.parameters())),
            "loss_first": float(np.mean(losses[:20])),
            "loss_last": float(np.mean(losses[-20:])),
            "fit_seconds": round(time.perf_counter() - started, 1),
            "threads": threads,
        }
        save_pipeline(unet, noise_scheduler, out_dir, card)
        if log:
            log(
                f"fit-generator: {card['parameters']:,} parameters, loss {card['loss_first']:.4f} -> "
                f"{card['loss_last']:.4f} in {card['fit_seconds']} s -> {out_dir}"
            )
        return out_dir
    finally:
        torch.set_num_threads(previous_threads)


def generator_dir(cache_root: str | Path, config: FitConfig, photos: Sequence[Photo]) -> Path:
    """Where the model trained with `config` on `photos` is cached."""
    return Path(cache_root) / f"ddpm-{config.key([p.photo_id for p in photos])}"


def ensure_generator(
    cache_root: str | Path,
    photos: Sequence[Photo],
    config: FitConfig = FitConfig(),
    threads: int = 2,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The cached model folder for `config`, training it first when it is not there yet."""
    folder = generator_dir(cache_root, config, photos)
    if (folder / CARD_NAME).is_file() and (folder / "unet").is_dir():
        if log:
            log(f"fit-generator: reusing {folder}")
        return folder
    return fit_generator(photos, folder, config, threads=threads, progress=progress, log=log)


def load_diffusion(model: str | Path) -> DiffusionBundle:
    """A pixel-space UNet2DModel and its scheduler config from a diffusers model id or a local folder (a
    pipeline folder with `unet/` and `scheduler/`, or a bare UNet2DModel folder)."""
    from diffusers import DDIMScheduler, UNet2DModel

    source = str(model)
    errors = []
    unet = None
    for subfolder in ("unet", None):
        try:
            unet = UNet2DModel.from_pretrained(source, subfolder=subfolder, low_cpu_mem_usage=False)
            break
        except (OSError, ValueError, EnvironmentError) as exc:  # noqa: UP024 - diffusers raises either
            errors.append(f"{subfolder or '.'}: {exc}")
    if unet is None:
        raise ValueError(f"no diffusers UNet2DModel found at {source!r} ({'; '.join(errors)})")
    if unet.config.in_channels != 3 or unet.config.out_channels != 3:
        raise ValueError(
            f"{source!r}: a pixel-space RGB UNet2DModel is needed (in/out channels 3), "
            f"got {unet.config.in_channels}/{unet.config.out_channels}; latent models are not supported"
        )
    try:
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler")
    except (OSError, ValueError):
        scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    info: dict[str, Any] = {}
    card = Path(source) / CARD_NAME
    if card.is_file():
        info = json.loads(card.read_text())
    return DiffusionBundle(
        unet_config=dict(unet.config),
        state_dict={k: v.detach().clone() for k, v in unet.state_dict().items()},
        scheduler_config=dict(scheduler.config),
        source=source,
        info=info,
    )


class SDEditGenerator:
    """Real crop -> regenerated crop: noise to `strength`, then `round(steps * strength)` DDIM steps (eta 0).

    `color_fix` matches each channel's mean and standard deviation to the input's afterwards (the AdaIN
    colour correction of StableSR), so a small, briefly trained model's colour drift is not a free label.
    Deterministic for a seed (the initial noise comes from a seeded torch.Generator; one image at a time so
    batch composition cannot change the arithmetic)."""

    def __init__(
        self,
        bundle: DiffusionBundle,
        strength: float = 0.25,
        steps: int = 20,
        threads: int = 1,
        color_fix: bool = True,
    ):
        import torch
        from diffusers import DDIMScheduler, UNet2DModel

        if not 0 < strength <= 1:
            raise ValueError(f"SDEdit strength must be in (0, 1], got {strength}")
        torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.unet = UNet2DModel.from_config(bundle.unet_config)
        self.unet.load_state_dict(bundle.state_dict)
        self.unet.eval()
        self.scheduler = DDIMScheduler.from_config(bundle.scheduler_config)
        self.scheduler.set_timesteps(steps)
        keep = max(1, int(round(steps * strength)))
        self.timesteps = self.scheduler.timesteps[-keep:]
        self.multiple = 2 ** (len(self.unet.config.down_block_types) - 1)
        self.color_fix = color_fix

    def __call__(self, image: np.ndarray, seed: int = 0) -> np.ndarray:
        torch = self.torch
        height, width = image.shape[:2]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))  # a writable copy
        x0 = pixels.permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1.0
        if pad_h or pad_w:
            x0 = torch.nn.functional.pad(x0, (0, pad_w, 0, pad_h), mode="reflect")
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(x0.shape, generator=generator)
        sample = self.scheduler.add_noise(x0, noise, self.timesteps[:1])
        with torch.inference_mode():
            for t in self.timesteps:
                model_output = self.unet(sample, t).sample
                sample = self.scheduler.step(model_output, t, sample, eta=0.0).prev_sample
        out = sample[0, :, :height, :width]
        if self.color_fix:
            ref = x0[0, :, :height, :width]
            mean, std = out.mean(dim=(1, 2), keepdim=True), out.std(dim=(1, 2), keepdim=True)
            out = (out - mean) / (std + 1e-5) * ref.std(dim=(1, 2), keepdim=True) + ref.mean(dim=(1, 2), keepdim=True)
        out = out.clamp(-1, 1)
        return ((out + 1.0) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
