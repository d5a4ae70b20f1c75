"""The per-worker training loop on in-memory tensors (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raydetect.models.backbones import build_backbone, stem_parameters
from raydetect.train.loop import (
    EarlyStopping,
    LoopConfig,
    classification_metrics,
    cosine_schedule,
    fit,
    tensor_batches,
)
from tests.datasets import ai_counterpart, smooth_photo


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and other tests share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def separable_arrays(n_pairs: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real smooth fields and their checkerboard 'AI' counterparts, normalised NCHW float32."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n_pairs):
        photo = smooth_photo(rng, size)
        for label, array in ((0, photo), (1, ai_counterpart(photo))):
            images.append((array.astype(np.float32) / 255.0 - 0.5) / 0.25)
            labels.append(label)
    return np.stack(images).transpose(0, 3, 1, 2).copy(), np.asarray(labels, dtype=np.float32)


def _run(config: LoopConfig, **kwargs):
    torch.manual_seed(config.seed)
    model = build_backbone("tinycnn", "none")
    x_train, y_train = separable_arrays(24, seed=1)
    x_val, y_val = separable_arrays(8, seed=2)
    result = fit(
        model,
        tensor_batches(x_train, y_train, 8, shuffle=True, seed=config.seed),
        tensor_batches(x_val, y_val, 32),
        config,
        steps_per_epoch=math.ceil(len(x_train) / 8),
        **kwargs,
    )
    return model, result


def test_loss_falls_and_validation_beats_chance() -> None:
    _, result = _run(LoopConfig(epochs=6, lr=3e-3, patience=6, seed=0))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.best_metrics["val_accuracy"] > 0.75, result.history
    assert result.best_metrics["val_f1"] == max(r["val_f1"] for r in result.history)
    assert set(result.history[0]) >= {
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_precision",
        "val_recall",
        "val_f1",
        "val_auc",
        "lr",
    }
    assert result.best_state is not None


def test_seeded_runs_are_identical() -> None:
    _, first = _run(LoopConfig(epochs=2, lr=1e-3, seed=3))
    _, second = _run(LoopConfig(epochs=2, lr=1e-3, seed=3))
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]


def test_early_stopping_stops_when_f1_stalls() -> None:
    # lr=0: nothing changes, F1 never improves after epoch 1 -> stop after 1 + patience epochs.
    _, result = _run(LoopConfig(epochs=10, lr=1e-12, weight_decay=0.0, patience=2))
    assert result.stopped_early
    assert len(result.history) == 3
    assert result.history[-1]["stopping"] == 1.0


def test_frozen_stem_does_not_move_but_the_head_does() -> None:
    epochs_seen: list[tuple[int, list[torch.Tensor], list[torch.Tensor]]] = []

    def snapshot(record, model, improved):
        stem = [p.detach().clone() for p in stem_parameters(model)]
        head = [p.detach().clone() for p in model.fc.parameters()]
        epochs_seen.append((int(record["epoch"]), stem, head))

    model = build_backbone("tinycnn", "none")
    before_stem = [p.detach().clone() for p in stem_parameters(model)]
    before_bn = model.features[1].running_mean.clone()
    before_head = [p.detach().clone() for p in model.fc.parameters()]
    x, y = separable_arrays(8)
    fit(
        model,
        tensor_batches(x, y, 8),
        tensor_batches(x, y, 16),
        LoopConfig(epochs=2, freeze_stem_epochs=1, lr=1e-2, patience=5),
        on_epoch=snapshot,
    )
    _, stem_after_1, head_after_1 = epochs_seen[0]
    _, stem_after_2, _ = epochs_seen[1]
    assert all(torch.equal(a, b) for a, b in zip(before_stem, stem_after_1, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(before_head, head_after_1, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(stem_after_1, stem_after_2, strict=True))
    assert not torch.equal(before_bn, model.features[1].running_mean)  # BN stats update once unfrozen
    assert all(p.requires_grad for p in model.parameters())


def test_cosine_schedule_warms_up_decays_and_holds() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    schedule = cosine_schedule(optimizer, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:10], lrs[2:11], strict=True))
    assert lrs[10] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.1)


def test_metrics_and_early_stopping_helpers() -> None:
    labels = np.array([0, 0, 1, 1])
    metrics = classification_metrics(labels, np.array([0.1, 0.6, 0.7, 0.9]))
    assert metrics["accuracy"] == 0.75 and metrics["recall"] == 1.0 and metrics["auc"] == 1.0
    assert metrics["f1"] == pytest.approx(0.8)
    assert math.isnan(classification_metrics(np.array([1, 1]), np.array([0.2, 0.9]))["auc"])
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.5, 1.0) and not stopper.update(0.5, 1.1) and stopper.update(0.5, 0.9)
    assert not stopper.update(0.4, 0.1) and not stopper.update(float("nan"), 0.1) and stopper.should_stop


def test_loop_config_ignores_unknown_keys() -> None:
    config = LoopConfig.from_dict({"epochs": 2, "lr": 0.1, "backbone": "tinycnn"})
    assert config.epochs == 2 and config.lr == 0.1
