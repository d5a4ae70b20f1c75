"""The linear-probe recipe's core (no Ray): features are the head's inputs, the probe folds into the head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydetect.models.backbones import build_backbone
from raydetect.models.views import ViewPolicy, make_views
from raydetect.train.probe import affine, fit_probe, head_inputs, image_features, set_head


def test_the_probe_is_one_affine_map_of_the_raw_features():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(80, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 2] > 0).astype(int)
    probe = fit_probe(x, y, c=1.0)
    w, b = affine(probe)
    np.testing.assert_allclose(x @ w + b, probe.decision_function(x), rtol=1e-6, atol=1e-6)


def test_a_probe_written_into_the_head_gives_the_models_logits():
    torch.manual_seed(0)
    model = build_backbone("tinycnn", "none").eval()
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, size=(40, 72, 3), dtype=np.uint8)
    views = make_views(photo, ViewPolicy(size=32))  # 3 x 2 tiles
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    feats = head_inputs(model, views, mean, std)
    assert feats.shape == (len(views), model.fc.in_features)
    w, b = rng.normal(size=feats.shape[1]), 0.3
    set_head(model, w, b)
    with torch.no_grad():
        from raydetect.models.views import normalize

        logits = model(normalize(views, mean, std)).reshape(-1).numpy()
    np.testing.assert_allclose(logits, feats @ w + b, rtol=1e-4, atol=1e-5)
    pooled = image_features(model, [views], mean, std, max_batch=4)[0]
    assert pooled @ w + b == pytest.approx(float(logits.mean()), abs=1e-4)  # mean features == mean logits
