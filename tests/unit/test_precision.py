"""The precision setting (models/precision.py): how `auto` resolves, the fp32 fallback on CPUs without native
bf16, and that bf16 / fp16 give the decisions of fp32 on a real network and real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from raydetect.config import load_settings
from raydetect.models import precision
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard
from raydetect.models.precision import autocast, cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")
NO_BF16 = {"avx2": True, "avx512_f": True, "avx512_vnni": True, "amx_bf16": False, "avx512_bf16": False}
CAPS = torch.cpu.get_capabilities()
NATIVE = {"bf16": cpu_has_native_bf16(), "fp16": bool(CAPS.get("avx512_fp16") or CAPS.get("amx_fp16"))}

# The agreement this project states for reduced precision (README, "Precision"): on every image P(AI) is
# within TOLERANCE of fp32, and the decision is fp32's unless fp32's P(AI) lies within MARGIN of a decision
# boundary (the threshold or an edge of the review band).
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
MARGIN = TOLERANCE


def test_native_bf16_is_read_from_the_cpu_features():
    assert cpu_has_native_bf16({"amx_bf16": True, "avx512_bf16": False})
    assert cpu_has_native_bf16({"avx512_bf16": True})
    assert not cpu_has_native_bf16(NO_BF16)
    assert not cpu_has_native_bf16({})  # another architecture: nothing known, nothing assumed


def test_auto_resolves_per_device_and_explicit_settings_are_kept(monkeypatch: pytest.MonkeyPatch):
    assert resolve_precision("auto", "cpu", cpu_bf16=lambda: True) == "bf16"
    assert resolve_precision("auto", "cpu", cpu_bf16=lambda: False) == "fp32"
    assert resolve_precision("auto", "mps", cpu_bf16=lambda: True) == "fp32"
    for supported, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        assert resolve_precision("auto", "cuda") == expected
    for setting in ("fp32", "bf16", "fp16"):
        assert resolve_precision(setting, "cpu", cpu_bf16=lambda: False) == setting
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", "cpu")
    with pytest.raises(ValueError, match="resolved precision"):
        autocast("auto", "cpu")


def test_setting_defaults_to_auto_and_is_validated():
    assert load_settings().precision == "auto"
    assert load_settings(overrides=["precision=bf16"]).precision == "bf16"
    with pytest.raises(ValidationError):
        load_settings(overrides=["precision=int8"])


def _tiny() -> tuple[torch.nn.Module, ModelCard, torch.Tensor]:
    torch.manual_seed(0)
    model = build_backbone("tinycnn", "none", "npr").eval()
    return model, ModelCard(backbone="tinycnn", image_size=32), torch.randn(6, 3, 32, 32)


def test_detector_falls_back_to_fp32_where_bf16_is_not_native(monkeypatch: pytest.MonkeyPatch):
    model, card, x = _tiny()
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: NO_BF16)
    fallback = Detector(model, card, CPU)  # precision auto
    assert fallback.precision == "fp32"
    assert np.array_equal(fallback.predict(x), Detector(model, card, CPU, precision="fp32").predict(x))
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {**NO_BF16, "avx512_bf16": True})
    assert Detector(model, card, CPU).precision == "bf16"


def test_autocast_really_runs_in_bf16():
    model, card, x = _tiny()
    fp32, bf16 = (Detector(model, card, CPU, precision=p).predict(x) for p in ("fp32", "bf16"))
    assert not np.array_equal(fp32, bf16)  # bf16 rounding shows
    assert np.abs(fp32 - bf16).max() < TOLERANCE["bf16"]
    with torch.no_grad(), autocast("bf16", CPU):
        assert model(x.contiguous(memory_format=torch.channels_last)).dtype == torch.bfloat16


def _photo_crops(side: int = 224, stride: int = 160) -> np.ndarray:
    """Normalised NCHW crops of photographs packaged with scikit-image (111 of them)."""
    from skimage import data

    from raydetect.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    crops = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina"):
        image = getattr(data, name)()
        for top in range(0, image.shape[0] - side + 1, stride):
            for left in range(0, image.shape[1] - side + 1, stride):
                crops.append(image[top : top + side, left : left + side])
    x = np.stack(crops).astype(np.float32) / 255.0
    return ((x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def lite0_and_crops() -> tuple[torch.nn.Module, ModelCard, np.ndarray, np.ndarray]:
    """The default model's network with real ImageNet features (EfficientNet-Lite0, NPR filter) and a head
    along the features' first principal component over the crops, scaled so that the fp32 logits have mean 0
    and std 2 (P(AI) from about 0.1 to 0.98, a few crops near each decision boundary), as a trained head
    follows directions in which the features vary. (A random head scaled alike mostly cancels large terms,
    which no trained head does, and exaggerates the rounding: bf16 then moves P(AI) by up to 0.05.)"""
    torch.manual_seed(0)
    model = build_backbone("efficientnet_lite0", "imagenet", "npr").eval()
    card = ModelCard(backbone="efficientnet_lite0", input_filter="npr")
    x = _photo_crops()
    with torch.inference_mode():
        features = model.forward_head(model.forward_features(torch.as_tensor(x)), pre_logits=True).double()
    centre = features.mean(0)
    direction = torch.linalg.svd(features - centre, full_matrices=False).Vh[0]
    scale = 2.0 / ((features - centre) @ direction).std()
    with torch.no_grad():
        model.classifier.weight.copy_((direction * scale).float()[None])
        model.classifier.bias.fill_(float(-(centre @ direction) * scale))
    return model, card, x, Detector(model, card, CPU, precision="fp32").predict(x)


def _near_a_boundary(card: ModelCard, prob: np.ndarray, margin: float) -> np.ndarray:
    low, high = card.review_band
    return np.min(np.abs(prob[:, None] - np.array([low, card.threshold, high])[None]), axis=1) < margin


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_reduced_precision_keeps_fp32_decisions_off_the_boundaries(name: str, lite0_and_crops):
    if not NATIVE[name]:
        pytest.skip(f"this CPU has no native {name}")
    model, card, x, fp32 = lite0_and_crops
    assert fp32.min() < 0.15 and fp32.max() > 0.85  # a spread of scores, not all near 0.5
    low = Detector(model, card, CPU, precision=name).predict(x)
    assert np.abs(low - fp32).max() <= TOLERANCE[name]
    decided = [card.decide(float(p)) for p in fp32], [card.decide(float(p)) for p in low]
    differ = np.array([a != b for a, b in zip(*decided, strict=True)])
    assert not (differ & ~_near_a_boundary(card, fp32, MARGIN[name])).any()
