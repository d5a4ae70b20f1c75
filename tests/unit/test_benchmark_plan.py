"""The benchmark plan: balanced generators, whole photos per split, seeded, label-free names; sizes per
pair, real images downsampled from their photos, hard negatives."""

from __future__ import annotations

import re

import pytest

from raydetect.data.benchmark.plan import min_short_side, plan_pairs, split_photos
from raydetect.data.benchmark.sources import Photo

GENERATORS = ["esrgan", "esrgan-anime", "waifu2x", "ddpm"]


def _photos() -> list[Photo]:
    photos = [Photo(f"pkg/p{i:02d}", f"/x/p{i}.jpg", "other", "pkg", 640 + 300 * i, 480 + 200 * i) for i in range(12)]
    photos += [Photo(f"pkg/h{i}", f"/x/h{i}.jpg", "human", "pkg", 512, 512) for i in range(3)]
    return photos


def test_plan_is_balanced_grouped_and_seeded():
    plan = plan_pairs(_photos(), 400, GENERATORS, 224, seed=3)
    assert len(plan) == 400 and plan["pair"].tolist() == list(range(400))
    assert plan["generator"].value_counts().to_dict() == dict.fromkeys(GENERATORS, 100)
    assert (plan["split"] == "test").sum() == 80
    # a photo (group) sits on one side only, and each category is on both sides
    assert plan.groupby("group")["split"].nunique().max() == 1
    assert set(plan.loc[plan["split"] == "test", "category"]) == {"human", "other"}
    # crops stay inside their photo
    sizes = {p.photo_id: (p.width, p.height) for p in _photos()}
    for row in plan.itertuples():
        width, height = sizes[row.group]
        assert 224 <= row.side <= min(width, height)
        assert 0 <= row.left <= width - row.side and 0 <= row.top <= height - row.side
    # file names: unique, random hex, in the split's folder, no hint of the label
    names = plan["real_name"].tolist() + plan["ai_name"].tolist()
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"(train_data|test_data_v2)/[0-9a-f]{24}\.png", n) for n in names)
    in_test = plan["ai_name"].str.startswith("test_data_v2/") & plan["real_name"].str.startswith("test_data_v2/")
    assert (in_test == (plan["split"] == "test")).all()
    # the processing share is the same for both classes
    real = (plan["real_processing"] != "none").mean()
    fake = (plan["ai_processing"] != "none").mean()
    assert abs(real - 0.3) < 0.08 and abs(fake - 0.3) < 0.08
    # deterministic for a seed, different for another
    assert plan.equals(plan_pairs(_photos(), 400, GENERATORS, 224, seed=3))
    assert not plan.equals(plan_pairs(_photos(), 400, GENERATORS, 224, seed=4))


def test_jpeg_encoding_names_and_tiny_plans():
    plan = plan_pairs(_photos()[:2], 3, ["waifu2x"], 64, seed=0, encoding="jpeg")
    assert plan["real_name"].str.endswith(".jpg").all()
    assert sorted(plan["split"].value_counts().to_dict().items()) == [("test", 1), ("train", 2)]
    assert set(plan_pairs(_photos(), 5, GENERATORS, 64, 0, test_share=0.0)["split"]) == {"train"}


def test_split_photos_keeps_whole_categories_apart():
    import numpy as np

    split = split_photos(_photos(), 0.2, np.random.default_rng(0))
    assert sum(v == "test" for v in split.values()) == 2 + 1  # round(12*0.2)=2 other, max(1, round(0.6))=1 human


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        plan_pairs(_photos(), 0, GENERATORS, 64, 0)
    with pytest.raises(ValueError, match="no photographs"):
        plan_pairs([], 4, GENERATORS, 64, 0)


def test_sizes_per_pair_downsampling_and_hard_negatives():
    photos = _photos()
    sizes = {p.photo_id: (p.width, p.height) for p in photos}
    plan = plan_pairs(photos, 600, GENERATORS, [64, 128, 256], seed=5, min_downscale=2.0, hardneg_share=0.4,
                      test_sizes=[256, 384])  # fmt: skip
    train, test = plan[plan["split"] == "train"], plan[plan["split"] == "test"]
    assert set(train["size"]) == {64, 128, 256}
    assert set(test["size"]) <= {256, 384} and 256 in set(test["size"])
    for row in plan.itertuples():
        short = min(sizes[row.group])
        assert short >= min_short_side(row.size, 2.0, row.hardneg)  # the photo is large enough
        if row.hardneg == "resize":  # downsampled >= 2x overall: from the photo to the box, then by the resize
            assert row.side / (row.size * row.hardneg_cap) >= 2.0 - 1e-6 and 0.5 <= row.hardneg_cap <= 1.0
        else:
            assert row.side >= 2 * row.size and row.hardneg_cap == 1.0
    modes = plan["hardneg"].value_counts(normalize=True)
    assert abs(modes["resize"] - 0.28) < 0.06 and abs(modes["blur"] - 0.12) < 0.05
    # sizes and hard negatives are drawn per pair, never per label (a pair's two images share the size)
    assert plan.groupby("group")["split"].nunique().max() == 1
    assert plan.equals(plan_pairs(photos, 600, GENERATORS, [64, 128, 256], seed=5, min_downscale=2.0,
                                  hardneg_share=0.4, test_sizes=[256, 384]))  # fmt: skip
    with pytest.raises(ValueError, match="large enough"):
        plan_pairs(photos, 10, GENERATORS, [2048], seed=0, min_downscale=2.0)
