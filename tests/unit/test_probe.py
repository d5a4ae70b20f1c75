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


def test_features_are_extracted_at_the_precision_scoring_uses():
    from raydetect.config import load_settings
    from raydetect.train.probe import extraction_precision

    torch.manual_seed(0)
    model = build_backbone("tinycnn", "none").eval()
    views = np.random.default_rng(2).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    fp32 = head_inputs(model, views, mean, std, "fp32")
    bf16 = head_inputs(model, views, mean, std, "bf16")
    assert not np.array_equal(fp32, bf16)  # autocast ran: bf16 rounds the convolutions' inputs
    np.testing.assert_allclose(bf16, fp32, rtol=0.05, atol=0.05 * float(np.abs(fp32).max()))
    assert extraction_precision(load_settings(overrides=["precision=fp32"])) == "fp32"
    assert extraction_precision(load_settings(overrides=["precision=bf16"])) == "bf16"


def test_leave_one_generator_out_trains_without_it_and_validates_on_it_and_the_real_images():
    import pandas as pd

    from raydetect.train.cv import generalisation_table, held_out
    from raydetect.train.probe import FEATURE_COLUMN, probe_folds
    from raydetect.train.trainer import FoldRun

    rng = np.random.default_rng(0)
    n = 60
    pair = np.arange(n) // 2
    frame = pd.DataFrame({"path": [f"p{i}" for i in range(n)], "label": np.arange(n) % 2, "fold": pair % 3})
    frame["generator"] = np.where(frame["label"] == 0, "real", np.where(pair % 2 == 0, "a", "b"))
    signal = np.where(frame["generator"] == "a", 2.0, np.where(frame["generator"] == "b", -2.0, 0.0))
    features = pd.DataFrame({"path": frame["path"], FEATURE_COLUMN: list(rng.normal(size=(n, 4)) + signal[:, None])})
    results = probe_folds(frame, features, 1.0, 0, leave_out="b")
    held = frame["generator"].eq("b")
    for r in results:
        fold = frame["fold"] == r["fold"]
        assert r["n_train"] == int((~fold & ~held).sum())  # b's AI images of the other folds are not trained on
        assert set(r["predictions"]["path"]) == set(frame.loc[fold & (held | frame["label"].eq(0)), "path"])
    runs = [FoldRun(name=f"f{r['fold']}", fold=r["fold"], path="", checkpoint_uri=None, best_epoch=1,
                    best_metrics=r["metrics"], history=[], n_train=r["n_train"], n_val=r["n_val"], wall_s=0.0,
                    predictions=r["predictions"]) for r in results]  # fmt: skip
    row = generalisation_table({"b": runs}).iloc[0]
    # b's AI images sit on the far side of the real ones from a's: a probe that only saw a misses them
    assert row["generator"] == "b" and row["n_val"] == int((held | frame["label"].eq(0)).sum())
    assert row["ai_caught"] < 0.2 and row["auc"] < 0.3
    untouched = held_out(frame["fold"] != 0, frame["fold"] == 0, frame, None)
    assert untouched[0].equals(frame["fold"] != 0)
    with pytest.raises(ValueError, match="generator"):
        held_out(frame["fold"] != 0, frame["fold"] == 0, frame.drop(columns="generator"), "b")
