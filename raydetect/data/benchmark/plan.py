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


def plan_pairs(
    photos: Sequence[Photo],
    n_pairs: int,
    generators: Sequence[str],
    size: int,
    seed: int,
    processing_share: float = 0.3,
    test_share: float = 0.2,
    encoding: str = "png",
) -> pd.DataFrame:
    """One row per (real, AI) pair: pair, split, photo (group, category, path), crop box, generator (in
    rotation over all pairs, so every generator gets n_pairs / len(generators)), the independent processing
    of the real and the AI image, the AI noise seed and both file names (random hex: names carry no label)."""
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

    for split, count in (("test", n_test), ("train", n_pairs - n_test)):
        members = [p for p in photos if split_of[p.photo_id] == split]
        if not count:
            continue
        weights = np.asarray([photo_weight(p, size) for p in members])
        chosen = rng.choice(len(members), size=count, p=weights / weights.sum())
        folder = TEST_DIR if split == "test" else TRAIN_DIR
        for index in chosen:
            photo = members[int(index)]
            left, top, side = sample_box(rng, photo.width, photo.height, size)
            rows.append(
                {
                    "split": split,
                    "generator": generators[len(rows) % len(generators)],  # rotation over all pairs
                    "group": photo.photo_id,
                    "category": photo.category,
                    "photo_path": photo.path,
                    "left": left,
                    "top": top,
                    "side": side,
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
