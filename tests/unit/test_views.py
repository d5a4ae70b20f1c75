"""The one image -> model-input function (no Ray): native tiles, the legacy resize view, aggregation, packing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from skimage import data

from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard
from raydetect.models.views import (
    TILE_ALIGN,
    ViewError,
    ViewPolicy,
    aggregate,
    append_views,
    image_logits,
    make_views,
    normalize,
    read_views,
    resize_center_crop,
    view_boxes,
    view_logits,
)

PHOTO = data.astronaut()  # 512 x 512 RGB, a real photograph shipped by scikit-image


def _detector(policy: ViewPolicy | None, backbone: str = "resnet18", input_filter: str = "npr") -> Detector:
    torch.manual_seed(0)
    model = build_backbone(backbone, "none", input_filter).eval()
    card = ModelCard(backbone=backbone, image_size=64, views=policy.to_dict() if policy else None)
    return Detector(model, card, torch.device("cpu"))


def test_a_2x2_mosaic_scores_like_the_image_itself():
    tile = PHOTO[100:164, 200:264]  # 64 px: the model's input size
    mosaic = np.tile(tile, (2, 2, 1))  # 128 x 128: four grid-aligned copies
    assert mosaic.shape == (128, 128, 3)
    detector = _detector(ViewPolicy(size=64))
    views = make_views(mosaic, detector.policy)
    assert views.shape == (4, 64, 64, 3) and all(np.array_equal(v, tile) for v in views)
    whole, tiled = detector.predict_image(tile), detector.predict_image(mosaic)
    assert tiled == pytest.approx(whole, abs=1e-5)


def test_a_150px_image_reaches_the_model_at_150px():
    seen: list[tuple[int, ...]] = []
    detector = _detector(ViewPolicy(size=224))
    detector.model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    image = Image.fromarray(PHOTO[:150, :150])
    prob = detector.predict_image(image)
    assert seen == [(1, 3, 150, 150)] and 0.0 <= prob <= 1.0
    assert make_views(image, ViewPolicy(size=224, small="pad")).shape == (1, 224, 224, 3)  # padded, not upscaled


def test_a_card_without_a_view_policy_is_scored_as_before():
    card = ModelCard(backbone="tinycnn", image_size=48)
    assert card.view_policy == ViewPolicy(mode="resize", size=48)
    detector = _detector(None, "tinycnn", "none")
    image = Image.fromarray(PHOTO[:300, :200])
    # what scoring did before view policies: shorter side to 64 (bicubic), centre crop, normalise, forward
    crop = np.asarray(resize_center_crop(image, 64), dtype=np.float32) / 255.0
    legacy = (crop - np.array(card.mean, np.float32)) / np.array(card.std, np.float32)
    expected = detector.predict(legacy.transpose(2, 0, 1)[None])[0]
    assert detector.predict_image(image) == pytest.approx(float(expected), abs=1e-6)


def test_tiles_cover_the_image_on_the_block_grid_and_respect_the_cap():
    full = view_boxes(700, 500, ViewPolicy(size=224, max_tiles=16))
    assert len(full) == 4 * 3  # ceil(700/224) x ceil(500/224)
    assert all(r - left == 224 and b - t == 224 for left, t, r, b in full)
    assert all(left % TILE_ALIGN == 0 and t % TILE_ALIGN == 0 for left, t, _, _ in full)
    assert min(b[0] for b in full) == 0 and max(b[2] for b in full) > 700 - TILE_ALIGN  # edge to edge
    capped = view_boxes(4000, 2000, ViewPolicy(size=224, max_tiles=8))
    assert len(capped) <= 8 and len(capped) >= 6
    xs, ys = sorted({b[0] for b in capped}), sorted({b[1] for b in capped})
    assert xs[0] == 0 and xs[-1] > 3000 and ys[0] == 0 and ys[-1] > 1500  # spread over the whole image
    assert view_boxes(224, 224, ViewPolicy(size=224)) == [(0, 0, 224, 224)]
    assert view_boxes(150, 600, ViewPolicy(size=224)) == [(0, 0, 150, 224), (0, 184, 150, 408), (0, 376, 150, 600)]


def test_resize_boxes_are_where_the_centre_crop_came_from():
    (box,) = view_boxes(300, 100, ViewPolicy(mode="resize", size=50))
    assert box == (100, 0, 200, 100)


def test_too_small_images_are_refused_not_upscaled():
    with pytest.raises(ViewError, match="too_small"):
        make_views(np.zeros((8, 100, 3), np.uint8), ViewPolicy(size=64))


def test_aggregation_rules():
    logits = np.array([-2.0, 0.0, 1.0, 3.0])
    assert aggregate(logits, ViewPolicy()) == pytest.approx(0.5)
    assert aggregate(logits, ViewPolicy(aggregate="max")) == 3.0
    assert aggregate(logits, ViewPolicy(aggregate="topk", top_k=2)) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        ViewPolicy(aggregate="median")


def test_views_are_packed_by_shape_into_bounded_forward_passes():
    calls: list[tuple[int, ...]] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch.reshape(len(batch), -1).mean(axis=1)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8) for n, h, w in [(1, 8, 8), (3, 8, 8), (2, 6, 9)]]
    out = view_logits(forward, images, max_batch=3)
    assert sorted(calls) == sorted([(3, 8, 8, 3), (1, 8, 8, 3), (2, 6, 9, 3)])
    for views, got in zip(images, out, strict=True):
        np.testing.assert_allclose(got, views.reshape(len(views), -1).mean(axis=1))
    per_image = image_logits(forward, images, ViewPolicy(aggregate="max"))
    np.testing.assert_allclose(per_image, [o.max() for o in out])


def test_views_round_trip_through_arrow_columns():
    policy = ViewPolicy(size=32)
    views = [make_views(PHOTO[:40, :70], policy), None, make_views(PHOTO[:32, :32], policy)]
    table = append_views(pa.table({"path": ["a", "b", "c"]}), policy, views)
    back = read_views(table, policy)
    assert back[0].shape == (6, 32, 32, 3) and np.array_equal(back[0], views[0])
    assert back[1].shape == (0, 0, 0, 3) and np.array_equal(back[2], views[2])


def test_normalize_is_the_imagenet_arithmetic():
    grey = np.full((1, 4, 4, 3), 128, np.uint8)
    out = normalize(grey, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).numpy()
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert out.shape == (1, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), expected, atol=1e-6)


def test_forward_passes_default_to_the_devices_batch_and_give_the_same_probabilities():
    """`predict_images` without `max_batch` packs `Detector.FORWARD_BATCH[device]` views a pass (8 on CPU); any
    packing gives the same P(AI)."""
    detector = _detector(ViewPolicy(size=64))
    passes: list[int] = []
    detector.model.register_forward_hook(lambda _m, args, _out: passes.append(len(args[0])))
    images = [make_views(PHOTO[i * 20 : i * 20 + 64, :128], detector.policy) for i in range(10)]  # 2 views each
    default = detector.predict_images(images)
    assert detector.forward_batch == Detector.FORWARD_BATCH["cpu"] == 8
    assert passes == [8, 8, 4]
    passes.clear()
    wide = detector.predict_images(images, max_batch=32)
    assert passes == [20]
    np.testing.assert_allclose(default, wide, rtol=0, atol=1e-5)
