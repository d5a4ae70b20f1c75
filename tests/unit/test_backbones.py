"""The backbone registry, and proof that the offline EfficientNet-Lite ImageNet weights load correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raydetect.models import efficientnet
from raydetect.models.backbones import available_backbones, build_backbone, default_normalization, stem_parameters
from raydetect.models.views import ViewPolicy, preprocess

# ImageNet-1k class ids (timm.data.ImageNetInfo names them): every cat and every cup-like class.
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {504, 967, 968}  # coffee mug, espresso, cup


def _top5(model: torch.nn.Module, photo: np.ndarray, size: int) -> set[int]:
    mean, std = default_normalization("efficientnet_lite0")
    x = torch.from_numpy(preprocess(Image.fromarray(photo), ViewPolicy(mode="resize", size=size), mean, std))
    with torch.no_grad():
        return set(model(x)[0].topk(5).indices.tolist())


@pytest.mark.parametrize("variant", efficientnet.VARIANTS)
def test_efficientnet_lite_imagenet_weights_recognise_packaged_photos(variant: str) -> None:
    from skimage import data

    model = efficientnet.imagenet_model(variant)
    size = efficientnet.NATIVE_SIZE[variant]
    top_cat = _top5(model, data.chelsea(), size)
    top_cup = _top5(model, data.coffee(), size)
    assert top_cat & CATS, f"{variant}: chelsea() (a cat) -> top-5 {top_cat}"
    assert top_cup & CUPS, f"{variant}: coffee() (a cup) -> top-5 {top_cup}"
    # The single best guess is right too (a wrong mapping gives noise, not a near miss).
    with torch.no_grad():
        mean, std = default_normalization(variant)
        policy = ViewPolicy(mode="resize", size=size)
        x = torch.from_numpy(preprocess(Image.fromarray(data.chelsea()), policy, mean, std))
        assert int(model(x).argmax()) in CATS


def test_weight_mapping_is_complete_and_rejects_mismatches() -> None:
    model = efficientnet.timm_model("efficientnet_lite0")
    source = torch.load(efficientnet.packaged_weights_path("efficientnet_lite0"), weights_only=True)
    mapped = efficientnet.map_state_dict(source, model)
    assert set(mapped) == set(model.state_dict())
    with pytest.raises(efficientnet.WeightMappingError, match="shape"):
        # lite2's weights do not fit lite0 (wider, deeper): a clear error, not a silent partial load.
        efficientnet.map_state_dict(
            torch.load(efficientnet.packaged_weights_path("efficientnet_lite2"), weights_only=True), model
        )


@pytest.mark.parametrize("name", ["tinycnn", "resnet18", "efficientnet_lite0", "clip_vit_b16"])
def test_registry_builds_one_logit_classifiers(name: str) -> None:
    model = build_backbone(name, "none").eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1)
    stem = stem_parameters(model)
    assert 0 < len(stem) < len(list(model.parameters()))  # the head is not part of the stem


def test_imagenet_backbone_gets_a_fresh_one_logit_head() -> None:
    model = build_backbone("efficientnet_lite0", "imagenet")
    assert model.classifier.out_features == 1
    reference = efficientnet.imagenet_model("efficientnet_lite0")
    torch.testing.assert_close(model.conv_stem.weight, reference.conv_stem.weight)


def test_registry_lists_all_families_and_rejects_unknown_names() -> None:
    names = available_backbones()
    assert {"resnet18", "resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(names)
    assert {"clip_vit_b16", "clip_vit_l14"} <= set(names)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg11")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("tinycnn", "imagenet")


def test_state_dict_file_weights(tmp_path) -> None:
    source = build_backbone("tinycnn", "none")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = build_backbone("tinycnn", str(tmp_path / "w.pt"))
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


# --- the NPR input filter ------------------------------------------------------------------------------------


def test_npr_filter_keeps_pixel_relationships_and_drops_block_constant_content() -> None:
    from raydetect.models.filters import NPRFilter

    filt = NPRFilter(scale=1.0)
    blocks = torch.rand(2, 3, 8, 8)
    upsampled = blocks.repeat_interleave(2, -2).repeat_interleave(2, -1)  # what a nearest 2x upsampler makes
    assert torch.count_nonzero(filt(upsampled)) == 0
    noisy = torch.rand(2, 3, 16, 16)
    out = filt(noisy)
    # the top-left pixel of every 2x2 cell is the reference: zero there, the difference to it elsewhere
    assert torch.count_nonzero(out[..., ::2, ::2]) == 0
    torch.testing.assert_close(out[..., 1::2, 0::2], noisy[..., 1::2, 0::2] - noisy[..., 0::2, 0::2])
    assert filt(torch.rand(1, 3, 15, 9)).shape == (1, 3, 15, 9)  # odd sides keep their size
    assert NPRFilter()(noisy).abs().max() > out.abs().max()  # the default scale amplifies the residual


@pytest.mark.parametrize("name", ["tinycnn", "resnet18", "efficientnet_lite0", "clip_vit_b16"])
def test_npr_filter_sits_in_front_of_the_stem_and_survives_a_save_and_load(name: str, tmp_path) -> None:
    from raydetect.models.bundle import ModelCard, load_model, save_model
    from raydetect.models.filters import NPRFilter

    torch.manual_seed(0)
    model = build_backbone(name, "none", input_filter="npr").eval()
    assert any(isinstance(m, NPRFilter) for m in model.modules())
    x = torch.rand(2, 3, 64, 64)
    flat = torch.full_like(x, 0.3)  # no pixel relationships at all: every image looks the same to the model
    with torch.no_grad():
        assert torch.allclose(model(flat), model(torch.zeros_like(x)))
        expected = model(x)
    uri = save_model(model, ModelCard(backbone=name, input_filter="npr"), str(tmp_path / "m"))
    loaded, card = load_model(uri)
    assert card.input_filter == "npr"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    with pytest.raises(RuntimeError):  # the same weights do not fit a model without the filter
        build_backbone(name, "none").load_state_dict(model.state_dict())


def test_unknown_input_filter_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown input filter"):
        build_backbone("tinycnn", "none", input_filter="srm")
