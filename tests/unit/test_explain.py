"""Explanations without Ray: LIME / KernelSHAP maps (captum) of the image's size, and reasons that name the
evidence, on constructed images and a model whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from raydetect.config import ExplainSettings
from raydetect.explain.attributions import attribution_maps, superpixels, view_weights
from raydetect.explain.core import check_method, explain_image
from raydetect.explain.reasons import evidence_band, evidence_region, reason
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard
from raydetect.models.views import ViewPolicy, make_views

FAST = ExplainSettings(n_samples=24, n_segments=9)


class HighPassEnergy(nn.Module):
    """A detector whose evidence is known: logit = mean squared Laplacian of the grey input - 0.5. Fine
    texture (noise) raises it, smooth content does not."""

    def __init__(self):
        super().__init__()
        self.laplacian = nn.Conv2d(1, 1, 3, bias=False)
        with torch.no_grad():
            self.laplacian.weight[:] = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        response = self.laplacian(x.mean(1, keepdim=True))
        return (4 * (response**2).mean((1, 2, 3)) - 0.5)[:, None]


def _smooth(width: int = 128, height: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([100 + 60 * np.sin(xx / 20), 120 + 50 * np.cos(yy / 25), 90 + 0.5 * xx], -1)


def _noisy_corner(width: int = 128, height: int = 128, seed: int = 0) -> Image.Image:
    """A smooth image with a noise patch over its lower-right quarter."""
    array = _smooth(width, height)
    array[height // 2 :, width // 2 :] += np.random.default_rng(seed).normal(0, 40, (height // 2, width // 2, 3))
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def _detector(model: nn.Module, size: int, **views) -> Detector:
    card = ModelCard(backbone="test", image_size=size, views=ViewPolicy(size=size, **views).to_dict())
    return Detector(model.eval(), card, torch.device("cpu"), precision="fp32")


def _random_detector(backbone: str, size: int = 64, seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    return _detector(build_backbone(backbone, "none"), size)


@pytest.mark.parametrize("method", ["lime", "shap"])
@pytest.mark.parametrize("backbone", ["tinycnn", "resnet18"])
def test_lime_and_shap_give_maps_of_the_image_size(method: str, backbone: str, one_torch_thread):
    detector = _random_detector(backbone)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 150, 3), dtype=np.uint8))
    explanation = explain_image(detector, image, method, FAST)  # 150 x 100 under 64 px tiles: 3 x 2 views
    assert explanation.views == 6 and explanation.method == method
    assert explanation.heat.shape == (100, 150) and explanation.heat.dtype == np.float32
    assert explanation.overlay.size == image.size
    assert explanation.heat.min() >= 0.0 and 0.5 < explanation.heat.max() <= 1.0  # averaged where tiles overlap
    assert explanation.prob_ai == pytest.approx(detector.predict_image(image), abs=1e-6)
    again = explain_image(detector, image, method, FAST)
    assert np.array_equal(again.heat, explanation.heat) and again.reason == explanation.reason  # seeded
    assert torch.rand(1).item() != pytest.approx(torch.rand(1).item())  # torch's own generator is untouched


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_attribution_finds_the_evidence_and_the_reason_names_it(method: str, one_torch_thread):
    detector = _detector(HighPassEnergy(), 64)
    image = _noisy_corner()
    explanation = explain_image(detector, image, method, FAST)
    assert explanation.decision == "ai"
    heat = explanation.heat
    assert heat[64:, 64:].sum() > 0.9 * heat.sum()  # the noise patch carries the evidence
    assert explanation.reason.startswith(f"AI (P(AI)={explanation.prob_ai:.2f}): evidence for AI concentrated "
                                         "in the lower-right quarter")
    assert "fine high-frequency texture" in explanation.reason


def test_views_keep_their_place_and_weight_in_the_aggregate(one_torch_thread):
    image = _noisy_corner(192, 128)  # 3 x 2 tiles of 64 px; the patch covers x 96-192, y 64-128
    mean = _detector(HighPassEnergy(), 64)
    maps = attribution_maps(mean, make_views(image, mean.policy), "shap", 1.0, FAST)
    assert [m.shape for m in maps] == [(64, 64)] * 6 and max(m.max() for m in maps) == pytest.approx(1.0)
    assert maps[5].sum() > 10 * (maps[0].sum() + maps[1].sum() + maps[3].sum())  # the tile inside the patch
    top = _detector(HighPassEnergy(), 64, aggregate="max")  # only the strongest tile makes the score
    maps = attribution_maps(top, make_views(image, top.policy), "shap", 1.0, FAST)
    assert sum(m.max() > 0 for m in maps) == 1
    np.testing.assert_allclose(view_weights([1.0, 3.0, 2.0], ViewPolicy(aggregate="topk", top_k=2)), [0, 0.5, 0.5])


def test_superpixels_are_dense_labels_and_fall_back_to_a_grid_on_noise():
    smooth = _smooth(64, 64).clip(0, 255).astype(np.uint8)
    labels = superpixels(smooth, ExplainSettings(n_segments=16))
    assert labels.shape == (64, 64) and labels.min() == 0 and len(np.unique(labels)) == labels.max() + 1 >= 8
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # SLIC merges it all
    grid = superpixels(noise, ExplainSettings(n_segments=16))
    assert len(np.unique(grid)) == 16 and grid[0, 0] == 0 and grid[-1, -1] == 15
    assert np.array_equal(superpixels(smooth, ExplainSettings(superpixels="grid", n_segments=9)),
                          superpixels(noise, ExplainSettings(superpixels="grid", n_segments=9)))


def test_reason_names_the_corner_and_the_band_of_a_constructed_case():
    image = _noisy_corner(120, 90)
    heat = np.zeros((90, 120), np.float32)
    heat[45:, 60:] = 1.0  # the attribution points at the noise patch
    line = reason(image, heat, 0.93, "ai", 0.5)
    assert line.startswith("AI (P(AI)=0.93): evidence for AI concentrated in the lower-right quarter "
                           "(100 % of the attribution in 25 % of the area), mostly fine high-frequency texture")
    assert "\n" not in line and line == reason(image, heat, 0.93, "ai", 0.5)


def test_reason_for_a_small_hot_spot_a_smooth_area_a_spread_map_and_an_empty_map():
    image = _noisy_corner(120, 90)
    spot = np.zeros((90, 120), np.float32)
    spot[5:25, 5:35] = 1.0  # a spot in the top-left corner, where only slow colour gradients are
    region = evidence_region(spot)
    assert (region.name, region.share) == ("top-left corner", 1.0)
    line = reason(image, spot, 0.2, "real", 0.5)
    assert line.startswith("real (P(AI)=0.20): evidence for real concentrated in the top-left corner (100 % of "
                           "the attribution in 11 % of the area), mostly coarse low-frequency structure")
    flat = np.full((90, 120, 3), 128.0)
    flat[45:, 60:] += np.random.default_rng(0).normal(0, 40, (45, 60, 3))
    flat_image = Image.fromarray(flat.clip(0, 255).astype(np.uint8))  # grey, noise in the lower-right quarter
    assert evidence_band(flat_image, spot, region).ratio < 0.2
    assert "in comparatively smooth parts" in reason(flat_image, spot, 0.2, "real", 0.5)
    assert "spread over the whole image" in reason(image, np.ones((90, 120), np.float32), 0.5, "review", 0.5)
    assert "no localised evidence for AI" in reason(image, np.zeros((90, 120), np.float32), 0.5, "review", 0.5)


def test_a_mid_band_pattern_is_told_from_fine_texture():
    yy, xx = np.mgrid[0:96, 0:96]
    stripes = 128 + 60 * np.sin(2 * np.pi * xx / 12.0) * (xx < 48)  # 12 px stripes on the left half only
    image = np.repeat(stripes[..., None], 3, axis=-1).astype(np.uint8)
    heat = (xx < 48).astype(np.float32)
    band = evidence_band(image, heat, evidence_region(heat))
    assert band.name == "mid" and band.ratio > 1.5


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="unknown explanation method 'occlusion'"):
        check_method("occlusion")
