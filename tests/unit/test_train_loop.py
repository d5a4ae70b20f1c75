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
    predict_batches,
    tensor_batches,
)
from tests.datasets import ai_counterpart, smooth_photo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_zero_weight_rows_count_for_nothing() -> None:
    """Rows that failed to decode (weight 0) change neither the loss nor the validation metrics."""
    torch.manual_seed(0)
    model = build_backbone("tinycnn", "none").eval()
    x, y = separable_arrays(4)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    garbage = torch.zeros_like(x_t[:3])
    with_bad = {
        "image": torch.cat([x_t, garbage]),
        "label": torch.cat([y_t, torch.ones(3)]),
        "weight": torch.cat([torch.ones(len(y_t)), torch.zeros(3)]),
    }
    labels, probs, loss = predict_batches(model, [with_bad], torch.device("cpu"))
    labels_ref, probs_ref, loss_ref = predict_batches(model, [(x_t, y_t)], torch.device("cpu"))
    np.testing.assert_array_equal(labels, labels_ref)
    np.testing.assert_allclose(probs, probs_ref, rtol=1e-6)
    assert loss == pytest.approx(loss_ref)


def test_training_batch_marks_decode_errors() -> None:
    from raydetect.train.trainer import _training_batch

    images = np.zeros((3, 3, 8, 8), dtype=np.float32)
    batch = _training_batch(
        {"image": images, "label": np.array([0, 1, 1]), "error": np.array([None, "corrupt: bad", None], dtype=object)}
    )
    assert batch["weight"].tolist() == [1.0, 0.0, 1.0] and batch["label"].dtype == torch.float32
    all_ok = _training_batch({"image": images, "label": np.array([0, 1, 1]), "error": np.full(3, np.nan)})
    assert all_ok["weight"].tolist() == [1.0, 1.0, 1.0]


def _fold_run(fold: int, f1: float):
    from raydetect.train.trainer import FoldRun

    metrics = {"val_loss": 0.5, "val_accuracy": f1, "val_precision": f1, "val_recall": f1, "val_f1": f1, "val_auc": f1}
    return FoldRun(f"r{fold}", fold, "/x", None, 2, metrics, [metrics, metrics], 10, 5, 1.0)


def test_cv_table_has_per_fold_rows_and_mean_std() -> None:
    from raydetect.train.cv import cv_table, format_cv_table

    table = cv_table([_fold_run(0, 0.8), _fold_run(1, 1.0)])
    assert list(table["fold"]) == [0, 1, "mean", "std"]
    assert table.loc[2, "f1"] == pytest.approx(0.9) and table.loc[3, "f1"] == pytest.approx(0.1)
    text = format_cv_table(table, "title")
    assert text.startswith("title") and "f1 0.9000 ± 0.1000" in text


def test_summary_row_gives_mean_and_spread_per_metric() -> None:
    from raydetect.train.cv import cv_table, summary_row

    two = summary_row("v", cv_table([_fold_run(0, 0.8), _fold_run(1, 1.0)]), 12.34)
    assert two["folds"] == 2 and two["f1"] == "0.9000 ± 0.1000" and two["loss"] == "0.5000 ± 0.0000"
    assert two["wall_s"] == 12.3
    assert summary_row("v", cv_table([_fold_run(0, 0.8)]), 1.0)["f1"] == "0.8000"  # one fold: no spread
    none = summary_row("v", cv_table([]), 0.0)
    assert none["folds"] == 0 and none["auc"] == "n/a"


def test_leaderboard_ranks_finished_trials_by_objective() -> None:
    from types import SimpleNamespace

    import pandas as pd

    from raydetect.train.tune import _leaderboard

    def result(trial, objective, complete, lr):
        metrics = {
            "trial_id": trial,
            "objective": objective,
            "objective_std": 0.0,
            "folds_done": 1,
            "cv_complete": float(complete),
            "time_total_s": 3.0,
        }
        config = {"backbone": "tinycnn", "lr": lr, "weight_decay": 0.0, "augment_strength": 0.0, "epochs": 2}
        return SimpleNamespace(
            metrics=metrics, config=config, metrics_dataframe=pd.DataFrame([{}, {}]), path=f"/runs/{trial}", error=None
        )

    board = _leaderboard([result("a", 0.7, True, 1e-3), result("b", 0.9, False, 2e-3), result("c", 0.8, True, 3e-3)], 1)
    assert list(board["trial"]) == ["c", "a", "b"]  # an ASHA-stopped trial ranks after the finished ones
    assert list(board["rank"]) == [1, 2, 3] and board.loc[0, "lr"] == 3e-3


def test_trial_settings_and_search_space() -> None:
    from raydetect.config import load_settings
    from raydetect.train.tune import search_space, trial_settings

    config = {"lr": 0.01, "epochs": 4.0, "backbone": "resnet18", "input_filter": "npr", "other": 1}
    settings = trial_settings(load_settings(), config)
    assert settings.train.lr == 0.01 and settings.train.epochs == 4 and settings.train.backbone == "resnet18"
    assert settings.train.input_filter == "npr"
    assert settings.train.torch_threads == 1  # trials share nodes: each keeps to its CPU reservation
    pinned = load_settings(overrides=["train.torch_threads=3"])
    assert trial_settings(pinned, {}).train.torch_threads == 3
    space = search_space(backbones=["tinycnn"], epochs=[1, 2], augment=(0.5, 0.5))
    assert space["augment_strength"] == 0.5 and list(space["epochs"].categories) == [1, 2]
    assert list(space["input_filter"].categories) == ["none", "npr"]  # searched by default (dire when asked)
    assert search_space(input_filters=["dire"])["input_filter"] == "dire"
    assert search_space(input_filters=["npr"])["input_filter"] == "npr"
    with pytest.raises(ValueError, match="unknown input filter"):
        search_space(input_filters=["srm"])


def test_export_model_copies_weights_and_merges_the_card(tmp_path) -> None:
    from raydetect.models.bundle import ModelCard, load_model, save_model
    from raydetect.train.trainer import export_model

    model = build_backbone("tinycnn", "none")
    save_model(model, ModelCard(backbone="tinycnn", image_size=32, metrics={"val_f1": 0.5}), str(tmp_path / "ckpt"))
    uri = export_model(str(tmp_path / "ckpt"), str(tmp_path / "out"), {"cv_f1_mean": 0.7}, version="v9")
    loaded, card = load_model(uri)
    assert card.metrics == {"val_f1": 0.5, "cv_f1_mean": 0.7} and card.version == "v9" and card.image_size == 32
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_tracker_logs_params_history_and_model(tmp_path) -> None:
    import mlflow

    from raydetect.config import load_settings
    from raydetect.models.bundle import ModelCard, save_model
    from raydetect.tracking import Tracker

    settings = load_settings(None, {"tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "t"}})
    save_model(build_backbone("tinycnn", "none"), ModelCard(backbone="tinycnn"), str(tmp_path / "model"))
    tracker = Tracker(settings)
    with tracker.run("parent", params={"lr": 0.1, "skip": None}) as run_id:
        with tracker.run("child", nested=True):
            tracker.log_history([{"epoch": 1, "val_f1": 0.5, "note": "x"}, {"epoch": 2, "val_f1": float("nan")}])
        tracker.log_model_dir(str(tmp_path / "model"))
    client = mlflow.MlflowClient(settings.mlflow_uri())
    assert client.get_run(run_id).data.params == {"lr": "0.1"}
    child = client.search_runs([client.get_run(run_id).info.experiment_id], "tags.mlflow.runName = 'child'")[0]
    assert [m.value for m in client.get_metric_history(child.info.run_id, "val_f1")] == [0.5]  # NaN skipped
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {"model/model.json", "model/weights.pt"}


def test_wandb_switched_on_without_the_package_is_a_clear_error(monkeypatch, tmp_path) -> None:
    import importlib.util

    from raydetect.config import load_settings
    from raydetect.tracking import Tracker, wandb_enabled, wandb_tune_callbacks

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert not wandb_enabled() and wandb_tune_callbacks("p") == []
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = load_settings(None, {"tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    with pytest.raises(RuntimeError, match="pip install wandb"):
        Tracker(settings)


def test_worker_threads_share_the_node_unless_configured() -> None:
    from raydetect.train.trainer import worker_threads

    assert worker_threads(3, workers_on_node=2, cores=16) == 3
    assert worker_threads(0, workers_on_node=1, cores=2) == 2
    assert worker_threads(0, workers_on_node=2, cores=2) == 1
    assert worker_threads(0, workers_on_node=4, cores=2) == 1  # never 0
    assert worker_threads(0, workers_on_node=4, cores=16) == 4


def test_augment_view_count_is_one_per_epoch_at_most_and_one_without_augmentation() -> None:
    from raydetect.config import load_settings
    from raydetect.train.trainer import augment_view_count

    def views(**train: object) -> int:
        return augment_view_count(load_settings(None, {"images": {"size": 64}, "train": train}))

    assert views(crop_size=32, augment_views=4, epochs=10) == 4
    assert views(crop_size=32, augment_views=4, epochs=2) == 2  # no view would go unused
    assert views(crop_size=None, augment_strength=0.0, augment_views=4, epochs=10) == 1  # nothing to vary
    assert views(crop_size=None, augment_strength=0.5, augment_views=3, epochs=10) == 3


def test_only_the_last_blocks_and_the_head_train_with_trainable_blocks() -> None:
    import timm

    from raydetect.models.backbones import early_parameters

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1, depth=3, embed_dim=32,
                            num_heads=2, img_size=32, patch_size=8)  # fmt: skip
    early = early_parameters(vit, 1)
    assert {id(p) for p in early} >= {id(vit.cls_token), id(vit.pos_embed), *map(id, vit.blocks[1].parameters())}
    assert not {id(p) for p in early} & {id(p) for p in [*vit.blocks[2].parameters(), *vit.head.parameters()]}
    before = {name: p.detach().clone() for name, p in vit.named_parameters()}
    x, y = separable_arrays(8)
    fit(vit, tensor_batches(x, y, 8), tensor_batches(x, y, 16), LoopConfig(epochs=2, lr=1e-2, trainable_blocks=1))
    moved = {name for name, p in vit.named_parameters() if not torch.equal(before[name], p.detach())}
    assert moved and all(name.startswith(("blocks.2.", "norm.", "head.")) for name in moved), moved
    assert any(name.startswith("blocks.2.") for name in moved) and "head.weight" in moved
    assert early_parameters(vit, 3) == [] and early_parameters(vit, None) == []
    with pytest.raises(ValueError, match="blocks"):
        early_parameters(build_backbone("tinycnn", "none"), 1)
