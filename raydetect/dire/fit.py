"""`raydetect dire fit-diffusion ROOT`: DIRE's own small unconditional UNet, trained on the real images of
the training folds only — never on the test split, never on AI images, never on the held-out fold
(`dire.fit.holdout_fold`), so the validation of DIRE sees real images the UNet has not seen.

The training loop is the benchmark generator's (`benchmark.diffusion.train_unet`); the model is not that
generator (other channels and seed, epsilon prediction over every timestep), so DIRE cannot recognise the
benchmark's `ddpm` images as its own reconstructions. Crops are taken at native resolution (never
resampled), as the maps are made. Saved as a diffusers pipeline folder (`unet/`, `scheduler/`,
`raydetect_dire_diffusion.json`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from raydetect import storage
from raydetect.config import DireFitSettings, Settings
from raydetect.data.benchmark.diffusion import FitConfig

CARD_NAME = "raydetect_dire_diffusion.json"
DIRE_FOLDS = 5  # the project's grouped k-fold CV


def fit_config(fit: DireFitSettings) -> FitConfig:
    """The shared training loop's config for DIRE's UNet; refuses to be the benchmark generator's own."""
    config = FitConfig(
        channels=tuple(fit.channels),
        layers_per_block=fit.layers_per_block,
        size=fit.size,
        steps=fit.steps,
        batch_size=fit.batch_size,
        lr=fit.lr,
        t_max=fit.t_max,
        prediction_type=fit.prediction_type,
        pool=fit.pool,
        seed=fit.seed,
        mid_attention=True,  # DIRE's UNet runs on fixed-size tiles; its measured figures are with attention
    )
    generator = FitConfig()
    if (config.channels, config.seed, config.prediction_type) == (generator.channels, generator.seed, "sample"):
        raise ValueError("dire.fit must differ from the benchmark's ddpm generator (channels, seed or prediction)")
    return config


def training_reals(root: str, settings: Settings) -> pd.DataFrame:
    """The real (label 0) rows of train.csv outside the held-out fold, with their `fold`."""
    from raydetect.data.manifest import read_manifest
    from raydetect.train.cv import fold_assignment

    rows = fold_assignment(read_manifest(root, split="train", settings=settings), DIRE_FOLDS, settings, root=root)
    keep = rows["label"].astype(int).eq(0)
    if settings.dire.fit.holdout_fold is not None:
        keep &= rows["fold"].ne(settings.dire.fit.holdout_fold)
    reals = rows[keep].reset_index(drop=True)
    if reals.empty:
        raise ValueError(f"{root}: no real training images outside the held-out fold")
    return reals


def native_crops(images: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """`n` random size x size crops at native resolution (images smaller than `size` are reflect-padded),
    images weighted by sqrt(pixels)."""
    rng = np.random.default_rng(seed)
    weights = np.sqrt([im.shape[0] * im.shape[1] for im in images])
    picks = rng.choice(len(images), size=n, p=weights / weights.sum())
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for k, i in enumerate(picks):
        image = images[i]
        pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        out[k] = image[top : top + size, left : left + size]
    return out


def load_images(paths: list[str], settings: Settings) -> list[np.ndarray]:
    from raydetect.data.images import DecodeLimits, decode_image

    limits = DecodeLimits.from_settings(settings.images)
    return [np.asarray(decode_image(storage.read_bytes(p, settings.storage), limits)) for p in paths]


def default_diffusion_dir(settings: Settings) -> str:
    return settings.dire.diffusion or str(settings.workdir_path / "dire" / "diffusion")


def fit_diffusion(
    root: str,
    out: str | Path,
    settings: Settings,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train DIRE's UNet on the real training images of ROOT (training folds only); returns `out`."""
    import torch

    from raydetect.data.benchmark.diffusion import save_pipeline, train_unet

    fit = settings.dire.fit
    config = fit_config(fit)
    started = time.perf_counter()
    reals = training_reals(root, settings)
    previous = torch.get_num_threads()
    torch.set_num_threads(fit.threads)
    try:
        pool = native_crops(load_images(reals["path"].tolist(), settings), fit.pool, fit.size, fit.seed)
        unet, noise_scheduler, losses = train_unet(pool, config, progress, desc="dire fit-diffusion")
    finally:
        torch.set_num_threads(previous)
    card = {
        "purpose": "DIRE reconstruction model (not the benchmark's ddpm generator)",
        "config": asdict(config),
        "root": storage.normalize(root),
        "trained_on": "real images of train.csv outside the held-out fold (never test, never AI)",
        "holdout_fold": fit.holdout_fold,
        "folds": sorted(int(f) for f in reals["fold"].unique()),
        "images": len(reals),
        "parameters": int(sum(p.numel() for p in unet.parameters())),
        "loss_first": float(np.mean(losses[:20])),
        "loss_last": float(np.mean(losses[-20:])),
        "fit_seconds": round(time.perf_counter() - started, 1),
        "threads": fit.threads,
    }
    save_pipeline(unet, noise_scheduler, out, card, card_name=CARD_NAME)
    if log:
        log(
            f"dire fit-diffusion: {card['parameters']:,} parameters on {len(reals)} real images (folds "
            f"{card['folds']}), loss {card['loss_first']:.4f} -> {card['loss_last']:.4f} in "
            f"{card['fit_seconds']} s -> {out}"
        )
    return Path(out)
