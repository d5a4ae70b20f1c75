"""FGSM / PGD: the budget holds, they hurt a trained toy model, and adversarial training helps it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raydetect.config import EvaluateSettings
from raydetect.data.manifest import read_manifest
from raydetect.evaluate.adversarial import adversarial_eval, attack, attack_normalised
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard, save_model
from raydetect.train.loop import LoopConfig, fit, tensor_batches
from tests.datasets import ai_counterpart, make_kaggle_dataset, smooth_photo

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
EPS = 3 / 255


def _checker_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """32 px photos and their AI twins with a faint (8 grey levels) checkerboard, normalised NCHW."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        photo = smooth_photo(rng, 32)
        images += [photo, ai_counterpart(photo, 8.0)]
        labels += [0, 1]
    x = (np.stack(images).astype(np.float32) / 255 - 0.5) / 0.25
    return torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.float32)


def _accuracy(model, x, y, method: str | None = None) -> float:
    model.eval()
    if method:
        x = attack_normalised(model, x, y, method, EPS, MEAN, STD, steps=5)
    with torch.no_grad():
        return float(((model(x).reshape(-1) > 0).float() == y).float().mean())


def _trained(adv: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone("tinycnn", "none")
    x, y = _checker_set(48, 0)
    config = LoopConfig(epochs=12, lr=3e-3, patience=20, mean=MEAN, std=STD, adv=adv, adv_eps=EPS, precision="fp32")
    fit(model, tensor_batches(x, y, 16, shuffle=True), tensor_batches(x, y, 96), config)
    return model


def test_attacks_stay_in_the_budget_and_the_valid_range():
    torch.manual_seed(1)
    model = build_backbone("tinycnn", "none").eval()
    x = torch.rand(4, 3, 16, 16)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    for method in ("fgsm", "pgd"):
        adv = attack(lambda a: model(a).reshape(-1), x, y, method, eps=4 / 255, steps=3)
        assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert not torch.equal(adv, x)
        assert torch.equal(adv, attack(lambda a: model(a).reshape(-1), x, y, method, eps=4 / 255, steps=3))
    with pytest.raises(ValueError):
        attack(lambda a: model(a).reshape(-1), x, y, "cw")


def test_fgsm_hurts_a_trained_toy_model_and_adversarial_training_helps():
    x, y = _checker_set(24, 1)  # held-out photos
    plain, robust = _trained(None), _trained("fgsm")
    clean_plain, attacked_plain = _accuracy(plain, x, y), _accuracy(plain, x, y, "fgsm")
    attacked_robust = _accuracy(robust, x, y, "fgsm")
    assert clean_plain >= 0.9
    assert attacked_plain <= clean_plain - 0.2  # 3 grey levels undo most of what it learnt
    assert attacked_robust >= attacked_plain + 0.1  # trained on its own FGSM copies, it holds better
    assert _accuracy(robust, x, y) >= 0.9  # and still classifies the clean images


def test_adversarial_eval_attacks_through_the_detector(tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "data", n_pairs=4, size=48)
    labelled = read_manifest(str(root), split="train")
    torch.manual_seed(0)
    uri = save_model(build_backbone("tinycnn"), ModelCard(backbone="tinycnn", image_size=32), str(tmp_path / "m"))
    detector = Detector.load(uri, device="cpu", precision="fp32")
    settings = EvaluateSettings(adversarial_sample=8, attack_eps_255=[2, 8], pgd_steps=2)
    table = adversarial_eval(detector, labelled, settings)
    assert table[["attack", "eps_255"]].values.tolist() == [["none", 0.0], ["fgsm", 2.0], ["fgsm", 8.0],
                                                             ["pgd", 2.0], ["pgd", 8.0]]  # fmt: skip
    assert (table["n"] == 8).all() and table["accuracy"].between(0, 1).all()
    # the unattacked row is the detector's own scoring of the same images (views, temperature, threshold)
    from PIL import Image

    from raydetect.evaluate.metrics import binary_metrics
    from raydetect.models.views import make_views

    views = [make_views(Image.open(p).convert("RGB"), detector.policy) for p in labelled["path"]]
    clean = binary_metrics(labelled["label"].to_numpy(), detector.predict_images(views), detector.card.threshold)
    assert table.loc[0, "accuracy"] == pytest.approx(clean["accuracy"])
    assert table.loc[0, "auc_roc"] == pytest.approx(clean["auc_roc"], abs=1e-6)


def test_train_settings_and_cli_reach_the_loop():
    from typer.testing import CliRunner

    from raydetect.cli import app
    from raydetect.config import load_settings
    from raydetect.train.trainer import loop_config

    config = loop_config(load_settings(None, {"train": {"adv": "pgd", "adv_eps_255": 4, "adv_steps": 3}}))
    assert (config.adv, config.adv_eps, config.adv_steps) == ("pgd", pytest.approx(4 / 255), 3)
    assert loop_config(load_settings()).adv == "none"
    help_text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    assert "--adv " in help_text and "--adv-eps" in help_text
