"""The `dire` input filter (models/filters.py) with tiny real diffusers UNets (no mocks): its output is
`models.dire`'s error map (one implementation), independent of the batch; its UNet never trains and is not
given to the optimiser; and a CNN with it is a self-describing model directory that scores the same from
anywhere once the diffusion folder it was trained from is gone."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from raydetect.config import DireSettings
from raydetect.data.benchmark.diffusion import FitConfig, build_unet, save_pipeline
from raydetect.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from raydetect.models.backbones import build_backbone, stem_parameters
from raydetect.models.bundle import Detector, ModelCard, load_detector, save_model
from raydetect.models.dire import Reconstructor
from raydetect.models.filters import (
    DireFilter,
    dire_filter_spec,
    frozen_parameters,
    load_filter_unet,
)
from raydetect.models.views import normalize
from raydetect.train.loop import LoopConfig, fit, set_stem_frozen, tensor_batches, trainable_parameters
from tests.datasets import ai_counterpart, smooth_photo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = {
    "onestep": DireSettings(mode="onestep", noise_level=0.2, seed=3),
    "truncated": DireSettings(mode="truncated", steps=10, truncated_steps=2),
}


def _diffusion(folder, seed: int = 0):
    """A tiny random UNet (output scaled down, like a half-trained one) saved as a diffusion folder."""
    torch.manual_seed(seed)
    unet = build_unet(FitConfig(channels=(8, 16), size=16))
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return save_pipeline(unet.eval(), scheduler, folder, {"purpose": "test"}), unet


def _views(n: int = 3, size: int = 20) -> np.ndarray:  # 20: reflect-padded to the UNet's multiple, cropped back
    rng = np.random.default_rng(0)
    photos = [smooth_photo(rng, size) for _ in range(n)]
    return np.stack([p if i % 2 == 0 else ai_counterpart(p) for i, p in enumerate(photos)])


def _dire_model(folder, backbone: str = "tinycnn", settings: DireSettings = SETTINGS["onestep"]):
    spec = dire_filter_spec(str(folder), settings, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(1)
    model = build_backbone(backbone, "none", "dire", spec)
    load_filter_unet(model, str(folder))
    return model.eval(), spec


@pytest.mark.parametrize("mode", sorted(SETTINGS))
def test_the_filter_is_models_dire_error_map_whatever_the_batch(tmp_path, mode: str):
    folder, unet = _diffusion(tmp_path / "diffusion")
    settings = SETTINGS[mode]
    filt = DireFilter(dire_filter_spec(str(folder), settings, IMAGENET_MEAN, IMAGENET_STD))
    filt.dire.unet.load_state_dict(unet.state_dict())
    views = _views()
    x = normalize(views, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))  # what the backbone's stem gets
    with torch.no_grad():
        out = filt(x)
        alone = filt(x[1:2])
    expected = Reconstructor(unet, filt.dire.ddim.config, settings).errors(views)  # NHWC in [0, 1]
    assert out.shape == x.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy() / filt.scale, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(alone.numpy() / filt.scale, out[1:2].numpy() / filt.scale, atol=1e-6, rtol=0)
    assert expected.max() > 1e-3  # a real map, not zeros


def test_the_unet_gets_no_gradient_and_is_not_in_the_optimiser(tmp_path, monkeypatch):
    folder, _ = _diffusion(tmp_path / "diffusion")
    model, _ = _dire_model(folder)
    unet = {id(p) for p in model.features[0].dire.unet.parameters()}
    assert unet and {id(p) for p in frozen_parameters(model)} == unet
    assert not unet & {id(p) for p in trainable_parameters(model)}
    assert not unet & {id(p) for p in stem_parameters(model)}
    set_stem_frozen(model, True)
    set_stem_frozen(model, False)  # unfreezing the stem never unfreezes the filter
    assert not any(p.requires_grad for p in frozen_parameters(model))

    given: list[int] = []

    class Recording(torch.optim.AdamW):  # the real AdamW, remembering what it was given
        def __init__(self, params, **kwargs):
            params = list(params)
            given.extend(id(p) for p in params)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    before = {k: v.clone() for k, v in model.features[0].dire.unet.state_dict().items()}
    head = model.fc.weight.detach().clone()
    views = _views(8, 16)
    x = normalize(views, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu")).numpy()
    y = np.arange(8, dtype=np.float32) % 2
    config = LoopConfig(epochs=2, lr=1e-2, weight_decay=0.5, freeze_stem_epochs=1, patience=5)
    fit(model, tensor_batches(x, y, 4), tensor_batches(x, y, 8), config, steps_per_epoch=math.ceil(8 / 4))
    assert given and not unet & set(given)
    assert len(given) == len(list(model.parameters())) - len(unet)
    after = model.features[0].dire.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weight decay did not touch it either
    assert not torch.equal(head, model.fc.weight)  # the CNN did train
    assert all(p.grad is None for p in frozen_parameters(model))


def test_a_dire_cnn_directory_scores_the_same_from_elsewhere_without_the_diffusion_folder(tmp_path):
    folder, _ = _diffusion(tmp_path / "diffusion")
    model, spec = _dire_model(folder, "resnet18")
    card = ModelCard(backbone="resnet18", input_filter="dire", image_size=16, params={"filter": spec},
                     views={"mode": "native", "size": 16, "max_tiles": 2})  # fmt: skip
    original = save_model(model, card, str(tmp_path / "model"))
    views = _views(4, 16)
    images = [views[i : i + 1] for i in range(4)] + [views[:2]]  # one and two native tiles
    before = load_detector(original, device="cpu", precision="fp32").predict_images(images)

    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(original, moved)
    shutil.rmtree(folder)
    shutil.rmtree(original)
    detector = load_detector(str(moved), device="cpu", precision="fp32")
    assert isinstance(detector, Detector) and detector.card.kind == "cnn" and detector.card.input_filter == "dire"
    assert any(isinstance(m, DireFilter) for m in detector.model.modules())
    after = detector.predict_images(images)
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
    assert len(np.unique(np.round(after, 6))) > 1  # different images, different scores


def test_the_dire_filter_without_its_spec_is_refused():
    with pytest.raises(ValueError, match="needs its spec"):
        build_backbone("tinycnn", "none", "dire")
