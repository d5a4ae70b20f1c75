"""How good are the frozen backbones' features? Nearest-neighbour retrieval and a linear probe on real photos.

    .venv/bin/python benchmarks/foundation_features.py [--views 4] [--data ROOT] [--variants dinov2_vits14:imagenet,...]

Takes the offline benchmark's real photographs (`raydetect.data.benchmark.sources`, 48 with the Debian
wallpapers), cuts `--views` random crops of each (40-65 % of the shorter side, so two crops of a photo often
share little content; half of them mirrored; resized to 224 px) and embeds them with each backbone's pooled
features (what its linear head sees), frozen. Prints, per variant:
- `nn_top1`: the share of crops whose nearest neighbour (cosine, itself left out) is a crop of the same photo;
- `nearest_photo`: the share of crops whose most similar photo (mean cosine to its other crops) is their own;
- `margin`: mean cosine similarity to crops of the same photo minus to crops of other photos (comparable
  between trained models only: random features are all alike);
- `probe`: a logistic regression naming a crop's photo, trained on the other crops (leave one view out).
`dinov2_vits14:imagenet:patchmean` pools the mean patch token instead of the class token; `:none` variants
(random weights) are the floor.

With `--data ROOT` (a benchmark in the Kaggle layout) it also fits the UnivFD probe: a logistic regression on
the frozen features of `train.csv`'s images (at their own size, RGB), 5-fold CV grouped by `group`, and
prints its AI-vs-real AUC and F1 per variant.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from raydetect.data.benchmark.sources import find_photos, load_photo
from raydetect.models.backbones import build_backbone, default_normalization
from raydetect.models.views import normalize

DEFAULT_VARIANTS = (
    "clip_vit_b16:imagenet,dinov2_vits14:imagenet,dinov2_vits14:imagenet:patchmean,efficientnet_lite0:imagenet,"
    "clip_vit_b16:none,dinov2_vits14:none"
)


def views(photo: np.ndarray, count: int, rng: np.random.Generator, size: int = 224) -> list[Image.Image]:
    """`count` random square crops (40-65 % of the shorter side), half of them mirrored, resized to `size`."""
    image = Image.fromarray(photo)
    scale = 448 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    crops = []
    for _ in range(count):
        side = int(rng.uniform(0.40, 0.65) * min(image.size))
        left, top = int(rng.integers(0, image.width - side + 1)), int(rng.integers(0, image.height - side + 1))
        crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        crops.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return crops


@torch.inference_mode()
def embed(backbone: str, weights: str, pool: str, crops: list[Image.Image], batch: int = 16) -> np.ndarray:
    """Pooled features (before the linear head) of every crop, L2-normalised."""
    torch.manual_seed(0)
    model = build_backbone(backbone, weights).eval()
    mean, std = default_normalization(backbone)
    out = []
    for start in range(0, len(crops), batch):
        x = normalize(np.stack([np.asarray(c.convert("RGB")) for c in crops[start : start + batch]]), mean, std)
        tokens = model.forward_features(x)
        out.append(
            tokens[:, model.num_prefix_tokens :].mean(1)
            if pool == "patchmean"
            else model.forward_head(tokens, pre_logits=True)
        )
    features = torch.cat(out).float().numpy()
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def retrieval(features: np.ndarray, photo: np.ndarray) -> tuple[float, float, float]:
    """(nearest-neighbour top-1 accuracy, nearest-photo accuracy, margin): each crop's nearest other crop, and
    the photo whose other crops are on average most similar to it, should be of its own photo; the margin is
    the mean cosine similarity to crops of the same photo minus that to crops of other photos."""
    sim = features @ features.T
    np.fill_diagonal(sim, np.nan)
    same = photo[:, None] == photo[None, :]
    top1 = float((photo[np.nanargmax(sim, 1)] == photo).mean())
    per_photo = np.stack([np.nanmean(sim[:, photo == p], axis=1) for p in range(photo.max() + 1)], axis=1)
    nearest_photo = float((per_photo.argmax(1) == photo).mean())
    return top1, nearest_photo, float(np.nanmean(sim[same]) - sim[~same].mean())


def identity_probe(features: np.ndarray, photo: np.ndarray, view: np.ndarray) -> float:
    """Accuracy of a logistic regression naming the photo of a crop, trained on the photos' other crops
    (leave one view out)."""
    from sklearn.linear_model import LogisticRegression

    correct = 0
    for held in np.unique(view):
        probe = LogisticRegression(C=10.0, max_iter=3000).fit(features[view != held], photo[view != held])
        correct += int((probe.predict(features[view == held]) == photo[view == held]).sum())
    return correct / len(photo)


def detection_probe(features: np.ndarray, label: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """(AUC, F1) of a logistic regression for AI vs real, 5-fold CV grouped by photo."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    scores = cross_val_predict(probe, features, label, groups=group, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(label, scores)), float(f1_score(label, scores >= 0.5))


def photo_table(variants: list[str], count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    photos = find_photos()
    crops = [crop for entry in photos for crop in views(load_photo(entry.path), count, rng)]
    photo = np.repeat(np.arange(len(photos)), count)
    view = np.tile(np.arange(count), len(photos))
    print(f"{len(photos)} photos, {len(crops)} crops")
    print(f"{'variant':<36} {'nn_top1':>7} {'nearest_photo':>13} {'margin':>6} {'probe':>6} {'wall_s':>6}")
    for variant in variants:
        backbone, weights, *pool = variant.split(":")
        start = time.perf_counter()
        features = embed(backbone, weights, pool[0] if pool else "head", crops)
        top1, nearest_photo, margin = retrieval(features, photo)
        probe = identity_probe(features, photo, view)
        wall = time.perf_counter() - start
        print(f"{variant:<36} {top1:7.3f} {nearest_photo:13.3f} {margin:6.3f} {probe:6.3f} {wall:6.0f}")


def detection_table(variants: list[str], root: str) -> None:
    from raydetect.data.manifest import read_manifest

    rows = read_manifest(root, split="train")
    images = [Image.open(path).convert("RGB") for path in rows["path"]]
    label, group = rows["label"].to_numpy(int), rows["group"].to_numpy()
    print(f"AI vs real, {len(rows)} images of {root}, 5-fold CV grouped by photo")
    print(f"{'variant':<36} {'auc':>6} {'f1':>6}")
    for variant in variants:
        backbone, weights, *pool = variant.split(":")
        auc, f1 = detection_probe(embed(backbone, weights, pool[0] if pool else "head", images), label, group)
        print(f"{variant:<36} {auc:6.3f} {f1:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=4, help="crops per photo (0: skip the photo table)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="backbone:weights[:patchmean], comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="a benchmark root: also fit an AI-vs-real linear probe")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if args.views:
        photo_table(variants, args.views, args.seed)
    if args.data:
        detection_table(variants, args.data)


if __name__ == "__main__":
    main()
