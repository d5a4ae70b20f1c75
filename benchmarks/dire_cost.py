"""What each DIRE configuration costs and what it is worth: UNet passes per view, images/s and validation AUC.

    python benchmarks/dire_cost.py .raydetect/benchmark --diffusion .raydetect/dire/diffusion \\
        --n 160 --n-full 40 --set dire.tile=128 --set dire.max_tiles=1

Configurations: one-step at two noise levels, truncated inversion to 2 and to 5 of 20 DDIM steps, and full
DIRE (20 inversion + 20 reconstruction steps, the paper's 40 passes) on the first `--n-full` images of the
sample only (it costs 40x a one-step map). The sample is drawn from train.csv, stratified by label, seeded;
each image's native views (`dire.tile`, `dire.max_tiles`) are reconstructed in this process (no Ray: the
UNet's own speed, torch threads `--threads`). The AUC is the statistics classifier's (`raydetect.dire.stats`)
over the grouped folds of the sample, image level; `auc@full` is the same on full's sub-sample, so every
configuration is compared with full on the same images. `holdout` is the AUC on the fold the diffusion UNet
never saw (`dire.fit.holdout_fold`; trained on the other folds of the sample). Prints the table and the
cheapest configuration within `--tolerance` (0.02) AUC of full, which is what `dire.mode` and friends in
defaults.yaml should say. `--out FILE.json` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

CONFIGS = {
    "onestep t=0.1": {"mode": "onestep", "noise_level": 0.1},
    "onestep t=0.3": {"mode": "onestep", "noise_level": 0.3},
    "truncated 2/20": {"mode": "truncated", "steps": 20, "truncated_steps": 2},
    "truncated 5/20": {"mode": "truncated", "steps": 20, "truncated_steps": 5},
    "full 20+20": {"mode": "full", "steps": 20},
}
FULL = "full 20+20"


def sample_rows(root: str, settings, n: int, seed: int) -> pd.DataFrame:
    """`n` training images, half of each label, seeded; with their CV fold."""
    from raydetect.dire.maps import manifest_rows

    rows = manifest_rows(root, settings, "train")
    per_label = [g.sample(min(len(g), n // 2), random_state=seed) for _, g in rows.groupby("label")]
    return pd.concat(per_label).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def load_views(rows: pd.DataFrame, settings) -> list[np.ndarray]:
    from raydetect import storage
    from raydetect.data.images import decode_image
    from raydetect.models.dire import dire_policy
    from raydetect.models.views import make_views

    policy = dire_policy(settings.dire)
    return [make_views(decode_image(storage.read_bytes(p)), policy) for p in rows["path"]]


def feature_rows(rows: pd.DataFrame, per_image: list[np.ndarray]) -> pd.DataFrame:
    from raydetect.models.dire import FEATURE_NAMES

    records = []
    for (_, row), feats in zip(rows.iterrows(), per_image, strict=True):
        meta = {"key": row["key"], "label": row["label"], "fold": row["fold"], "generator": row.get("generator")}
        for j, f in enumerate(feats):
            records.append({**meta, "view": j, **dict(zip(FEATURE_NAMES, f, strict=True))})
    return pd.DataFrame(records)


def measure(name: str, overrides: dict, unet, scheduler_config, settings, views: list[np.ndarray]) -> dict:
    """Maps + statistics of every image's views under one configuration; passes and images/s."""
    from raydetect.models.dire import Reconstructor, error_features, unet_passes
    from raydetect.models.views import map_views

    dire = settings.dire.model_copy(update=overrides)
    rec = Reconstructor(unet, scheduler_config, dire)
    started = time.perf_counter()
    per_image = map_views(lambda batch: error_features(rec.errors(batch)), views, dire.batch_size)
    seconds = time.perf_counter() - started
    return {"config": name, "passes": unet_passes(dire), "images": len(views), "seconds": seconds,
            "images_per_s": len(views) / seconds, "features": per_image}  # fmt: skip


def auc(features: pd.DataFrame, c: float) -> float:
    from raydetect.dire.stats import cross_validate

    table = cross_validate(features, c)
    return float(table[table["fold"] == "mean"].iloc[0]["auc"])


def holdout_auc(features: pd.DataFrame, fold: int | None, c: float) -> float:
    from raydetect.dire.stats import _metrics, fit_pipeline, image_scores, usable

    rows = usable(features)
    if fold is None or rows.loc[rows["fold"] == fold, "label"].nunique() < 2:
        return float("nan")
    model = fit_pipeline(rows[rows["fold"] != fold], c)
    return float(_metrics(image_scores(model, rows[rows["fold"] == fold]))["auc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    parser.add_argument("--diffusion", required=True, help="The DIRE UNet folder (raydetect dire fit-diffusion).")
    parser.add_argument("--n", type=int, default=160, help="Sampled training images (half real, half AI).")
    parser.add_argument("--n-full", type=int, default=40, help="Of them, how many full DIRE reconstructs.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from raydetect.config import load_settings
    from raydetect.models.dire import load_unet

    torch.set_num_threads(args.threads)
    settings = load_settings(overrides=args.overrides)
    rows = sample_rows(args.root, settings, args.n, settings.seed)
    views = load_views(rows, settings)
    unet, scheduler_config = load_unet(args.diffusion)
    n_full = min(args.n_full, len(rows))
    c = settings.dire.classifier_c
    results = []
    for name, overrides in CONFIGS.items():
        count = n_full if name == FULL else len(rows)
        result = measure(name, overrides, unet, scheduler_config, settings, views[:count])
        features = feature_rows(rows.head(count), result.pop("features"))
        full_sample = features[features["key"].isin(rows["key"].head(n_full))]
        result.update(auc=auc(features, c), auc_at_full=auc(full_sample, c),
                      holdout=holdout_auc(features, settings.dire.fit.holdout_fold, c))  # fmt: skip
        results.append(result)
        print(f"{name}: {result['images_per_s']:.2f} images/s, AUC {result['auc']:.3f}", flush=True)
    table = pd.DataFrame(results)
    print(f"\nDIRE configurations ({len(rows)} images, full on {n_full}; tile {settings.dire.tile}, "
          f"{args.threads} thread(s)):")  # fmt: skip
    print(table[["config", "passes", "images", "images_per_s", "auc", "auc_at_full", "holdout"]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))  # fmt: skip
    full_auc = float(table.loc[table["config"] == FULL, "auc_at_full"].iloc[0])
    good = table[table["auc_at_full"] >= full_auc - args.tolerance].sort_values(["passes", "auc_at_full"],
                                                                               ascending=[True, False])  # fmt: skip
    pick = good.iloc[0]["config"] if len(good) else FULL
    print(f"cheapest within {args.tolerance:.2f} AUC of full ({full_auc:.3f}): {pick} -> {CONFIGS[pick]}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"rows": results, "pick": pick, "settings": settings.dire.model_dump()}, handle, indent=2)


if __name__ == "__main__":
    main()
