"""Grad-CAM for one-logit detectors (no Ray): maps, their placement on the image, overlays."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from raydetect.explain.core import explain_image, signed_target
from raydetect.explain.gradcam import gradcam_map, overlay, png_bytes, stitch, target_layers
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard
from raydetect.models.views import ViewPolicy, resize_center_crop, view_boxes


def _detector(backbone: str, size: int, seed: int = 0, views: ViewPolicy | None = None) -> Detector:
    torch.manual_seed(seed)
    model = build_backbone(backbone, "none").eval()
    card = ModelCard(backbone=backbone, image_size=size, views=views.to_dict() if views else None)
    return Detector(model, card, torch.device("cpu"))


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_target_layers_pick_the_last_conv_stage():
    resnet = build_backbone("resnet18", "none")
    assert target_layers(resnet) == [resnet.layer4[-1]]
    tiny = build_backbone("tinycnn", "none")
    assert target_layers(tiny) == [tiny.features]
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 3), torch.nn.Flatten())
    assert target_layers(plain) == [plain[1]]
    with pytest.raises(ValueError, match="no convolution"):
        target_layers(torch.nn.Linear(3, 1))


@pytest.mark.parametrize(("backbone", "size"), [("tinycnn", 64), ("resnet18", 64)])
def test_gradcam_map_shape_range_and_no_side_effects(backbone: str, size: int):
    detector = _detector(backbone, size)
    batch = np.random.default_rng(1).normal(size=(1, 3, size, size)).astype(np.float32)
    before = detector.predict(batch)
    heat = gradcam_map(detector.model, batch, sign=1.0)
    assert heat.shape == (size, size) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert all(p.grad is None for p in detector.model.parameters())  # gradients released
    assert not detector.model.training
    assert np.array_equal(detector.predict(batch), before)  # hooks removed: predictions unchanged
    flipped = gradcam_map(detector.model, batch, sign=-1.0)
    assert not np.allclose(heat, flipped)  # evidence for "real" differs from evidence for "AI"


def test_resize_box_matches_resize_center_crop():
    for width, height, size in [(130, 90, 64), (90, 130, 64), (64, 64, 64), (300, 100, 32), (50, 40, 64)]:
        ((left, top, right, bottom),) = view_boxes(width, height, ViewPolicy(mode="resize", size=size))
        # the crop of the original taken at that box, resized to size, is what the model sees
        image = _image(width, height, seed=width)
        model_view = np.asarray(resize_center_crop(image, size), dtype=np.float32)
        ours = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, right, bottom)),
                          dtype=np.float32)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert np.abs(model_view - ours).mean() < 12, (width, height, size)


def test_a_resized_view_map_is_placed_back_where_the_crop_came_from():
    cam = np.zeros((32, 32), dtype=np.float32)
    cam[:, :16] = 1.0  # heat on the left half of the crop
    boxes = view_boxes(200, 100, ViewPolicy(mode="resize", size=32))  # wide image: the centre 100 x 100
    heat = stitch([cam], boxes, (200, 100))
    assert heat.shape == (100, 200)
    assert heat[:, :45].max() == 0 and heat[:, 155:].max() == 0  # outside the crop: never seen, no heat
    assert heat[:, 55:95].mean() > 0.9 and heat[:, 105:150].mean() < 0.1


def test_tile_maps_are_stitched_at_native_resolution_and_averaged_where_they_overlap():
    boxes = view_boxes(100, 64, ViewPolicy(size=64))  # two tiles: x 0-64 and x 32-96 (aligned), overlap 32-64
    assert boxes == [(0, 0, 64, 64), (32, 0, 96, 64)]
    heat = stitch([np.ones((64, 64), np.float32), np.zeros((64, 64), np.float32)], boxes, (100, 64))
    assert heat[:, :32].min() == 1.0 and np.allclose(heat[:, 40:60], 0.5) and heat[:, 70:96].max() == 0
    assert heat[:, 96:].max() == 0  # the edge no tile reached


def test_overlay_has_the_image_size_and_keeps_cold_pixels():
    image = _image(70, 50)
    heat = np.zeros((50, 70), dtype=np.float32)
    heat[10:20, 10:20] = 1.0
    result = overlay(image, heat)
    assert result.size == (70, 50) and result.mode == "RGB"
    assert np.array_equal(np.asarray(result)[30:, 30:], np.asarray(image)[30:, 30:])
    assert not np.array_equal(np.asarray(result)[12:18, 12:18], np.asarray(image)[12:18, 12:18])
    png = png_bytes(result)
    assert Image.open(io.BytesIO(png)).size == (70, 50)


def test_signed_target_points_at_the_decision_taken():
    assert signed_target(0.7, 0.5) == 1.0 and signed_target(0.5, 0.5) == 1.0 and signed_target(0.3, 0.5) == -1.0


@pytest.mark.parametrize("backbone", ["tinycnn", "resnet18"])
def test_explain_image_end_to_end(backbone: str):
    detector = _detector(backbone, 64, seed=3)
    image = _image(120, 80, seed=4)
    explanation = explain_image(detector, image)
    assert explanation.overlay.size == image.size and explanation.heat.shape == (80, 120)
    assert explanation.decision == detector.card.decide(explanation.prob_ai)
    assert explanation.prob_ai == pytest.approx(detector.predict_image(image), abs=1e-6)
    assert explanation.reason.startswith(("AI (P(AI)=", "real (P(AI)=", "review (uncertain) (P(AI)="))
    assert explanation.method == "gradcam" and explanation.views == 1  # a card without views: one resized crop


def test_explain_covers_the_whole_image_with_native_tiles():
    detector = _detector("resnet18", 64, seed=3, views=ViewPolicy(size=64))
    image = _image(192, 128, seed=5)  # 3 x 2 tiles of 64 px
    explanation = explain_image(detector, image)
    assert explanation.heat.shape == (128, 192)
    assert explanation.prob_ai == pytest.approx(detector.predict_image(image), abs=1e-6)
    tiles_with_heat = sum(explanation.heat[y : y + 64, x : x + 64].max() > 0 for y in (0, 64) for x in (0, 64, 128))
    assert tiles_with_heat >= 4  # heat from tiles all over the image, not one centre crop


def test_gradcam_on_a_vit_reads_non_square_padded_patch_grids():
    torch.manual_seed(0)
    model = build_backbone("dinov2_vits14", "none").eval()  # 14 px patches, padded to whole patches
    batch = np.random.default_rng(2).normal(size=(1, 3, 42, 75)).astype(np.float32)  # 3 x 6 patches (75 padded)
    heat = gradcam_map(model, batch, sign=1.0)
    assert heat.shape == (42, 75) and heat.max() > 0
