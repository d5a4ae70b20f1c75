"""DIRE's maths and formats with tiny real diffusers UNets (no mocks): the DDIM inversion -> reconstruction
round trip, the one-step and truncated paths' shapes and ranges, lossless maps stored one way for both
classes, fixed-length statistics, and a DIRE model directory loaded through `bundle.load_detector`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from raydetect.config import DireSettings
from raydetect.data.benchmark.diffusion import FitConfig, build_unet
from raydetect.models.bundle import Detector, load_card, load_detector
from raydetect.models.dire import (
    FEATURE_NAMES,
    DireDetector,
    Reconstructor,
    decode_map,
    encode_map,
    error_features,
    save_dire_model,
    unet_passes,
)
from tests.datasets import ai_counterpart, smooth_photo

SCHEDULER = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").config)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unet(seed: int = 0, out_scale: float | None = 0.1, bias: float | None = None):
    torch.manual_seed(seed)
    unet = build_unet(FitConfig(channels=(8, 16), size=16))
    with torch.no_grad():
        if out_scale is not None:
            unet.conv_out.weight.mul_(out_scale)
        if bias is not None:  # a prediction that ignores the input: the round trip must be exact
            unet.conv_out.weight.zero_()
            unet.conv_out.bias.fill_(bias)
    return unet.eval()


def _x(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_full_round_trip_is_exact_when_the_prediction_ignores_the_input():
    x = _x()
    for steps in (5, 20):
        out = Reconstructor(_unet(bias=0.3), SCHEDULER, DireSettings(mode="full", steps=steps)).reconstruct(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def test_round_trip_of_a_random_unet_converges_with_the_step_count():
    x, unet = _x(), _unet()

    def relative_error(steps: int) -> float:
        settings = DireSettings(mode="truncated", steps=steps, truncated_steps=steps // 2)  # to t0 = T/2
        out = Reconstructor(unet, SCHEDULER, settings).reconstruct(x)
        return float((out - x).norm() / x.norm())

    coarse, fine = relative_error(10), relative_error(200)
    assert fine < 0.005 and fine < coarse / 5  # first order in the step size


def test_onestep_and_truncated_shapes_ranges_and_passes():
    views = np.stack([smooth_photo(np.random.default_rng(i), 20) for i in range(3)])  # 20: padded to 2x
    for settings, passes in (
        (DireSettings(mode="onestep", noise_level=0.3), 1),
        (DireSettings(mode="truncated", steps=10, truncated_steps=2), 4),
        (DireSettings(mode="full", steps=3), 6),
    ):
        rec = Reconstructor(_unet(), SCHEDULER, settings)
        recon, error = rec.maps(views)
        assert rec.passes == unet_passes(settings) == passes
        assert recon.shape == error.shape == (3, 20, 20, 3) and error.dtype == np.float32
        assert recon.min() >= 0 and recon.max() <= 1 and error.min() >= 0 and error.max() <= 1
        np.testing.assert_allclose(error, np.abs(views / 255.0 - recon), atol=1e-5)


def test_onestep_maps_do_not_depend_on_the_batch():
    views = np.stack([smooth_photo(np.random.default_rng(i), 16) for i in range(3)])
    rec = Reconstructor(_unet(), SCHEDULER, DireSettings(mode="onestep", noise_level=0.2))
    np.testing.assert_allclose(rec.errors(views)[1:2], rec.errors(views[1:2]), atol=1e-6)


@pytest.mark.parametrize("fmt", ["npy", "png16"])
def test_maps_of_both_classes_are_stored_one_lossless_way(fmt: str):
    photo = smooth_photo(np.random.default_rng(0), 16)
    rec = Reconstructor(_unet(), SCHEDULER, DireSettings(mode="onestep"))
    real, fake = rec.errors(np.stack([photo, ai_counterpart(photo)]))
    blobs = [encode_map(m, fmt) for m in (real, fake)]
    magic = {"npy": b"\x93NUMPY", "png16": b"\x89PNG"}[fmt]
    assert all(b.startswith(magic) for b in blobs)  # the same container whatever the label
    tolerance = 0 if fmt == "npy" else 0.5 / 65535
    for blob, original in zip(blobs, (real, fake), strict=True):
        back = decode_map(blob, fmt)
        assert back.shape == original.shape and back.dtype == np.float32
        np.testing.assert_allclose(back, original, atol=tolerance + 1e-7, rtol=0)


def test_statistics_have_a_fixed_length_whatever_the_size():
    rng = np.random.default_rng(0)
    small, large = rng.uniform(0, 0.1, (2, 16, 16, 3)), rng.uniform(0, 0.1, (1, 40, 24, 3))
    for maps in (small, large):
        features = error_features(maps)
        assert features.shape == (len(maps), len(FEATURE_NAMES)) == (len(maps), 27)
        assert np.isfinite(features).all()
    assert (error_features(small * 2)[:, 0] > error_features(small)[:, 0]).all()  # log mean grows with the error


def test_dire_model_directory_loads_through_the_one_dispatch_point(tmp_path):
    settings = DireSettings(mode="onestep", tile=16, max_tiles=2, batch_size=4)
    unet = _unet()
    rec = Reconstructor(unet, SCHEDULER, settings)
    rng = np.random.default_rng(1)
    photos = [smooth_photo(rng, 16) for _ in range(6)]
    views = np.stack(photos + [ai_counterpart(p) for p in photos])
    labels = np.array([0] * 6 + [1] * 6)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(error_features(rec.errors(views)), labels)
    uri = save_dire_model(str(tmp_path / "dire"), unet, SCHEDULER, pipeline, settings, name="dire", version="1")

    assert load_card(uri).kind == "dire"
    detector = load_detector(uri, device="cpu")
    assert isinstance(detector, DireDetector) and not isinstance(detector, Detector)
    image = np.concatenate([photos[0], photos[1]], axis=1)  # 16 x 32: two native tiles
    probs = detector.predict_images([views[i : i + 1] for i in range(12)], max_batch=5)
    expected = pipeline.predict_proba(error_features(rec.errors(views)))[:, 1]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert 0 <= detector.predict_image(image) <= 1
    heat = detector.explain_views(views[:2])
    assert len(heat) == 2 and heat[0].shape == (16, 16) and 0 <= heat[0].min() <= heat[0].max() <= 1


def test_statistics_classifier_cv_and_leave_one_generator_out_tables():
    import pandas as pd

    from raydetect.dire.stats import cross_validate, cross_validate_oof, format_table, leave_generator_out
    from raydetect.evaluate.metrics import binary_metrics

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label, generator = (0, "real") if i % 2 == 0 else (1, "a" if i % 4 == 1 else "b")
        features = rng.normal(size=len(FEATURE_NAMES)) + (1.5 * label)  # every statistic shifts with the label
        for view in range(2):
            rows.append({"key": f"k{i}", "path": f"train_data/{i}.png", "processing": "none", "label": label,
                         "fold": (i // 2) % 5, "generator": generator,
                         "view": view, **dict(zip(FEATURE_NAMES, features + 0.1 * view, strict=True))})  # fmt: skip
    features = pd.DataFrame(rows)

    table = cross_validate(features)
    assert list(table["fold"]) == [0, 1, 2, 3, 4, "mean", "std"]
    per_fold = table[table["fold"].isin(range(5))]
    assert (per_fold["n"] == 12).all()  # image level: the two views of an image are one prediction
    assert table.loc[table["fold"] == "mean", "auc"].iloc[0] > 0.95
    same, oof = cross_validate_oof(features)  # out-of-fold rows: one per image, each in its own fold
    pd.testing.assert_frame_equal(same, table)
    assert sorted(oof["path"]) == sorted(features["path"].unique()) and oof["path"].is_unique
    first = features.drop_duplicates("key").set_index("path")
    assert (oof["fold"].to_numpy() == first.loc[oof["path"], "fold"].to_numpy()).all()
    assert {"generator", "processing", "logit", "prob_ai"} <= set(oof.columns)
    fold0 = oof[oof["fold"] == 0]  # the rows reproduce the table's per-fold figure
    auc0 = binary_metrics(fold0["label"].to_numpy(), fold0["prob_ai"].to_numpy())["auc_roc"]
    assert auc0 == pytest.approx(table.loc[table["fold"] == 0, "auc"].iloc[0])
    held = leave_generator_out(features, "a")
    assert list(held["fold"])[-2:] == ["mean", "std"] and held.loc[held["fold"] == "mean", "auc"].iloc[0] > 0.9
    per_fold = held[held["fold"].isin(range(5))]
    assert per_fold["ai_caught"].between(0, 1).all() and per_fold["real_passed"].between(0, 1).all()
    assert held.loc[held["fold"] == "mean", "ai_caught"].iloc[0] > 0.7  # a separable generator is caught
    assert "AI images caught" in format_table(held) and "caught" not in format_table(table)
    with pytest.raises(ValueError, match="another generator"):
        leave_generator_out(features[features["generator"] != "b"], "a")
