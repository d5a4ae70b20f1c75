"""Calibration: temperature scaling, ECE, the threshold / review-band rules, and the card that carries them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from raydetect.config import load_settings
from raydetect.evaluate.calibration import (
    calibrate,
    calibrate_with,
    choose_review_band,
    choose_threshold,
    decision_summary,
    expected_calibration_error,
    fit_temperature,
    nll,
    sigmoid,
)
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import CARD_FILE, Detector, ModelCard, load_card, save_model
from raydetect.train.loop import LoopConfig, fit, tensor_batches

# the hand-made validation set of the rules' documentation
PROBS = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
LABELS = np.array([0, 0, 0, 1, 0, 1, 1, 1])


def overconfident(n: int = 2000, scale: float = 4.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) but logits reported as scale * z: a deliberately over-confident model."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < sigmoid(z)).astype(int)
    return scale * z, labels


def test_temperature_scaling_lowers_nll_and_ece_and_keeps_the_ranking():
    logits, labels = overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)  # it finds the scale the logits were blown up by
    before, after = sigmoid(logits), sigmoid(logits / temperature)
    assert nll(logits, labels, temperature) < nll(logits, labels) - 0.1
    assert expected_calibration_error(labels, after) < 0.5 * expected_calibration_error(labels, before)
    assert np.array_equal(np.argsort(before, kind="stable"), np.argsort(after, kind="stable"))


def test_ece_of_hand_made_bins():
    # two bins: P(AI) 0.2 (observed 0 of 2) and 0.8 (observed 2 of 2): |0 - 0.2| and |1 - 0.8|
    assert expected_calibration_error([0, 0, 1, 1], [0.2, 0.2, 0.8, 0.8], n_bins=10) == pytest.approx(0.2)
    assert expected_calibration_error([0, 1], [0.5, 0.5], n_bins=10) == pytest.approx(0.0)


def test_threshold_rules_pick_the_documented_values():
    # F1 of P(AI) >= t: 0.667 0.727 0.8 0.889 0.75 0.857 0.667 0.4 -> the maximum at 0.4
    assert choose_threshold(LABELS, PROBS, "max_f1") == pytest.approx(0.4)
    # FPR of P(AI) >= t over the 4 real images: 1, .75, .5, .25 (at 0.4), .25 (0.6), 0 (0.7)...
    assert choose_threshold(LABELS, PROBS, "target_fpr", target_fpr=0.25) == pytest.approx(0.4)
    assert choose_threshold(LABELS, PROBS, "target_fpr", target_fpr=0.0) == pytest.approx(0.7)
    assert choose_threshold(LABELS, PROBS, "fixed", fixed=0.55) == 0.55
    with pytest.raises(ValueError):
        choose_threshold(LABELS, PROBS, "youden")


def test_review_band_is_where_precision_falls_below_the_target():
    # ai decisions from 0.4: precision 0.8, from 0.6: 0.75, from 0.7: 1.0 -> high 0.7;
    # real decisions below 0.4 (0.1, 0.2, 0.3) are all real -> low stays at the threshold
    band = choose_review_band(LABELS, PROBS, 0.4, review_precision=0.9)
    assert band == pytest.approx([0.4, 0.7])
    summary = decision_summary(LABELS, PROBS, 0.4, band)
    assert summary == pytest.approx({"review_share": 0.25, "precision_ai": 1.0, "npv_real": 1.0})
    # a lenient target needs no band; an unreachable one sends everything from the threshold up to review
    assert choose_review_band(LABELS, PROBS, 0.4, review_precision=0.75) == pytest.approx([0.4, 0.4])
    assert choose_review_band(np.array([1, 0]), np.array([0.2, 0.9]), 0.5, review_precision=0.9) == [0.0, 1.0]
    assert ModelCard(backbone="x", threshold=0.4, review_band=band).decide(0.6) == "review"


def test_calibrate_records_rule_and_values_and_skips_tiny_folds():
    logits, labels = overconfident(400)
    settings = load_settings().calibration
    cal = calibrate_with(logits, labels, settings, "validation fold 0")
    assert cal["threshold_rule"] == "max_f1" and cal["review_precision"] == 0.95 and cal["n"] == 400
    assert cal["ece_after"] < cal["ece_before"] and cal["nll_after"] < cal["nll_before"]
    assert cal["review_band"][0] <= cal["threshold"] <= cal["review_band"][1]
    assert 0 < cal["review_share"] < 1 and cal["fitted_on"] == "validation fold 0"
    json.dumps(cal)  # goes into model.json as it is
    skipped = calibrate(logits[:5], labels[:5], min_samples=20)
    assert skipped["temperature"] == 1.0 and skipped["threshold"] == 0.5 and "skipped" in skipped


def _tiny(tmp_path: Path, card: ModelCard) -> str:
    torch.manual_seed(0)
    model = build_backbone("tinycnn")
    with torch.no_grad():  # spread the untrained outputs out
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return save_model(model, card, str(tmp_path))


def test_detector_applies_the_cards_temperature(tmp_path: Path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8) for _ in range(6)]
    plain = ModelCard(backbone="tinycnn", image_size=32)
    base = Detector.load(_tiny(tmp_path / "plain", plain), device="cpu")
    raw = base.predict_images(images)
    logits = np.log(raw) - np.log1p(-raw)

    # an old card (written before calibration existed) loads, with temperature 1: the same P(AI) as before
    old = json.loads((tmp_path / "plain" / CARD_FILE).read_text())
    old.pop("calibration")
    (tmp_path / "plain" / CARD_FILE).write_text(json.dumps(old))
    legacy = Detector.load(str(tmp_path / "plain"), device="cpu")
    assert legacy.card.calibration is None and legacy.card.temperature == 1.0
    np.testing.assert_allclose(legacy.predict_images(images), raw)

    cal = {"temperature": 2.0, "threshold": 0.45, "review_band": [0.3, 0.5], "threshold_rule": "max_f1"}
    hot = Detector.load(_tiny(tmp_path / "hot", plain.calibrated(cal)), device="cpu")
    assert load_card(str(tmp_path / "hot")).calibration["temperature"] == 2.0
    np.testing.assert_allclose(hot.predict_images(images), sigmoid(logits / 2.0), rtol=1e-5)
    assert hot.card.threshold == 0.45 and hot.card.review_band == [0.3, 0.5]
    x = np.zeros((2, 3, 32, 32), np.float32)
    np.testing.assert_allclose(hot.predict(x), sigmoid(hot.logits(x) / 2.0), rtol=1e-6)
    assert asdict(hot.card)["calibration"]["threshold_rule"] == "max_f1"


def test_fit_keeps_the_best_epochs_validation_logits_for_calibration():
    rng = np.random.default_rng(0)
    y = np.tile([0.0, 1.0], 16)
    x = rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32) + y[:, None, None, None] * 0.8
    seen = []
    result = fit(build_backbone("tinycnn", "none"), tensor_batches(x, y, 8), tensor_batches(x, y, 16),
                 LoopConfig(epochs=2, lr=1e-2), on_validation=lambda v: seen.append(v.logits))  # fmt: skip
    labels, logits = result.best_val
    assert len(seen) == 2 and np.array_equal(labels, y) and logits.shape == (32,)
    assert np.array_equal(logits, seen[result.best_epoch - 1])
    val_loss = result.best_metrics["val_loss"]
    assert nll(logits, labels) == pytest.approx(val_loss, rel=1e-4)  # the loop's loss is the uncalibrated NLL


def test_the_cv_table_shows_each_folds_calibration():
    from raydetect.train.cv import cv_table, format_cv_table
    from raydetect.train.trainer import FoldRun

    def run(fold: int, temperature: float) -> FoldRun:
        cal = {"temperature": temperature, "threshold": 0.4 + fold / 10, "review_share": 0.2, "ece_before": 0.1,
               "ece_after": 0.05}  # fmt: skip
        return FoldRun(name=f"f{fold}", fold=fold, path="", checkpoint_uri=None, best_epoch=1,
                       best_metrics={"val_f1": 0.8}, history=[], n_train=10, n_val=5, wall_s=1.0,
                       calibration=cal)  # fmt: skip

    table = cv_table([run(0, 1.5), run(1, 0.7)])
    assert table["temperature"].tolist()[:2] == [1.5, 0.7] and table["threshold"].tolist()[:2] == [0.4, 0.5]
    text = format_cv_table(table)
    assert "temperature" in text.splitlines()[0] and "review_share" in text.splitlines()[0]
