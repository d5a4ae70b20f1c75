"""The benchmark plan: which crop of which photo, which generator, which processing, which file name.

Everything random is drawn here, in the driver, from one seeded generator, so a build is deterministic
for a seed whatever the order in which Ray's actors process the rows. The plan is a DataFrame with one
row per pair; the workers only execute it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from raydetect.data.benchmark.degrade import draw_processing, extension
from raydetect.data.benchmark.diffusion import sample_box
from raydetect.data.benchmark.sources import Photo

TRAIN_DIR = "train_data"
TEST_DIR = "test_data_v2"


def photo_weight(photo: Photo, size: int) -> float:
    """Bigger photos hold more distinct crops, but not proportionally more: 1 + log2(pixels / size^2)."""
    return 1.0 + math.log2(max(1.0, photo.pixels / float(size * size)))


def split_photos(photos: Sequence[Photo], test_share: float, rng: np.random.Generator) -> dict[str, str]:
    """photo_id -> "train" | "test": whole photos (groups) go to one side, chosen per category so every
    category with two or more photos has some on each side."""
    split = {p.photo_id: "train" for p in photos}
    if test_share <= 0:
        return split
    categories = sorted({p.category for p in photos})
    for category in categories:
        members = sorted((p for p in photos if p.category == category), key=lambda p: p.photo_id)
        if len(members) < 2:
            continue
        k = min(len(members) - 1, max(1, round(len(members) * test_share)))
        for index in rng.permutation(len(members))[:k]:
            split[members[index].photo_id] = "test"
    if len(photos) >= 2 and "test" not in split.values():  # every category had a single photo
        split[photos[int(rng.integers(len(photos)))].photo_id] = "test"
    return split


def draw_hardneg(rng: np.random.Generator, share: float, blur_share: float) -> str:
    """`none`, or (with probability `share`) a hard negative: `blur` with probability `blur_share`, else
    `resize`; the step itself is matched to the pair's AI image when it is built (`match_sharpness`)."""
    if rng.random() >= share:
        return "none"
    return "blur" if rng.random() < blur_share else "resize"


RESIZE_CAP = 0.5  # a resized hard negative may always go down to half size: photos >= min_downscale * size / 2


def min_short_side(size: int, min_downscale: float, hardneg: str) -> float:
    """The shorter photo side a pair of `size` needs so that its real image is downsampled from the photo
    by at least `min_downscale` (codec traces of the photo shrink below the pixel grid; the AI image,
    regenerated from a downscaled crop, has none). A resized hard negative is downsampled again by its own
    step, which may always go down to `RESIZE_CAP`, so a photo of half that side serves it."""
    return min_downscale * size * (RESIZE_CAP if hardneg == "resize" else 1.0)


def _box_and_cap(
    rng: np.random.Generator, photo: Photo, size: int, min_downscale: float, hardneg: str
) -> tuple[int, int, int, float]:
    """The crop box (left, top, side) and, for a resized hard negative, the largest factor its resize may
    use (side / (min_downscale * size): the real image stays downsampled by `min_downscale` overall)."""
    short = min(photo.width, photo.height)
    least = min(short, math.ceil(min_downscale * size))
    left, top, side = sample_box(rng, photo.width, photo.height, size, least)
    cap = math.floor(1e4 * min(1.0, side / (min_downscale * size))) / 1e4 if hardneg == "resize" else 1.0
    return left, top, side, cap


def plan_pairs(
    photos: Sequence[Photo],
    n_pairs: int,
    generators: Sequence[str],
    sizes: int | Sequence[int],
    seed: int,
    processing_share: float = 0.3,
    test_share: float = 0.2,
    encoding: str = "png",
    test_sizes: Sequence[int] | None = None,
    min_downscale: float = 1.0,
    hardneg_share: float = 0.0,
    hardneg_blur_share: float = 0.3,
) -> pd.DataFrame:
    """One row per (real, AI) pair: pair, split, size, photo (group, category, path), crop box, generator
    (in rotation over all pairs, so every generator gets n_pairs / len(generators)), the hard-negative
    mode of the real image and its resize cap, the independent processing of the real and the AI image,
    the AI noise seed and both file names (random hex: names carry no label).

    A pair's size is drawn uniformly from `sizes` (`test_sizes` for the test split) among the sizes some
    photo of the split is large enough for (`min_short_side`); the photo is then drawn among those large
    enough, weighted by `photo_weight`. Real and AI of a pair share the size, so sizes carry no label."""
    if n_pairs <= 0:
        raise ValueError("n_pairs must be positive")
    if not generators:
        raise ValueError("at least one generator is needed")
    if not photos:
        raise ValueError("no photographs found: install scikit-image, scikit-learn or matplotlib")
    rng = np.random.default_rng(seed)
    photos = sorted(photos, key=lambda p: p.photo_id)
    split_of = split_photos(photos, test_share, rng)
    n_test = round(n_pairs * test_share) if "test" in split_of.values() else 0
    if n_test >= n_pairs and n_pairs > 1:
        n_test = n_pairs - 1
    ext = extension(encoding)
    rows = []
    used_names: set[str] = set()

    def name(folder: str) -> str:
        while True:
            candidate = f"{folder}/{rng.bytes(12).hex()}.{ext}"
            if candidate not in used_names:
                used_names.add(candidate)
                return candidate

    train_sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    for split, count in (("test", n_test), ("train", n_pairs - n_test)):
        if not count:
            continue
        members = [p for p in photos if split_of[p.photo_id] == split]
        wanted = list(test_sizes) if split == "test" and test_sizes else train_sizes
        usable = [s for s in wanted if any(min(p.width, p.height) >= min_short_side(s, min_downscale, "none")
                                           for p in members)]  # fmt: skip
        if not usable:
            raise ValueError(
                f"no {split} photo is large enough for any size in {wanted} downsampled {min_downscale}x "
                f"(largest shorter side {max(min(p.width, p.height) for p in members)} px)"
            )
        folder = TEST_DIR if split == "test" else TRAIN_DIR
        for _ in range(count):
            size = int(usable[int(rng.integers(len(usable)))])
            hardneg = draw_hardneg(rng, hardneg_share, hardneg_blur_share)
            need = min_short_side(size, min_downscale, hardneg)
            eligible = [p for p in members if min(p.width, p.height) >= need]
            weights = np.asarray([photo_weight(p, size) for p in eligible])
            photo = eligible[int(rng.choice(len(eligible), p=weights / weights.sum()))]
            left, top, side, cap = _box_and_cap(rng, photo, size, min_downscale, hardneg)
            rows.append(
                {
                    "split": split,
                    "size": size,
                    "generator": generators[len(rows) % len(generators)],  # rotation over all pairs
                    "group": photo.photo_id,
                    "category": photo.category,
                    "photo_path": photo.path,
                    "left": left,
                    "top": top,
                    "side": side,
                    "hardneg": hardneg,
                    "hardneg_cap": cap,
                    "real_processing": draw_processing(rng, processing_share),
                    "ai_processing": draw_processing(rng, processing_share),
                    "noise_seed": int(rng.integers(0, 2**31 - 1)),
                    "real_name": name(folder),
                    "ai_name": name(folder),
                }
            )
    plan = pd.DataFrame(rows)
    plan.insert(0, "pair", np.arange(len(plan), dtype=np.int64))
    return plan
