from pathlib import Path

import pytest
from pydantic import ValidationError

from raydetect.config import load_settings, parse_override


def test_defaults_load_and_are_typed():
    settings = load_settings()
    assert settings.images.size == 224
    assert settings.train.backbone == "efficientnet_lite0"
    assert "esrgan" in settings.benchmark.generators


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.01\nscore:\n  batch_size: 8\n")
    settings = load_settings(path, ["train.epochs=9", "benchmark.generators=[esrgan]"])
    assert settings.train.epochs == 9  # the override beats the file
    assert settings.train.lr == 0.01  # the file beats the defaults
    assert settings.score.batch_size == 8
    assert settings.benchmark.generators == ["esrgan"]


def test_unknown_and_invalid_keys_are_rejected(tmp_path: Path):
    with pytest.raises(ValidationError):
        load_settings(overrides=["train.epochz=3"])
    with pytest.raises(ValidationError):
        load_settings(overrides=["train.epochs=0"])
    with pytest.raises(ValueError):
        parse_override("train.epochs")


def test_mlflow_uri_falls_back_to_sqlite_in_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings(overrides={"workdir": str(tmp_path)})
    assert settings.mlflow_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert settings.mlflow_uri() == "http://127.0.0.1:5000"


def test_the_demo_trains_its_own_recipe_over_train():
    settings = load_settings(overrides=["train.epochs=3"]).for_demo()
    assert (settings.train.recipe, settings.train.backbone, settings.train.input_filter) == (
        "probe", "clip_vit_b16_mid", "none")
    assert settings.train.probe_c == 0.05 and settings.train.epochs == 3  # the rest of `train:` stays
    assert settings.evaluate.attacks == ["fgsm"] and settings.evaluate.robustness_sample == 120
    mine = load_settings(overrides=["demo.train.backbone=tinycnn"]).for_demo()
    assert (mine.train.backbone, mine.train.recipe) == ("tinycnn", "probe")  # deep-merged into demo.train
    assert load_settings(overrides=["demo.train=null"]).for_demo().train == load_settings().train
    with pytest.raises(ValidationError):
        load_settings(overrides=["demo.train.epochz=3"]).for_demo()


def test_the_demo_dire_stage_runs_demo_dire_over_dire_and_null_switches_it_off():
    settings = load_settings(overrides=["dire.fit.lr=0.002", "dire.batch_size=4"])
    demo = settings.for_demo()
    assert (demo.dire.fit.steps, demo.dire.tile, demo.dire.max_tiles) == (150, 128, 1)  # demo.dire
    assert demo.dire.fit.lr == 0.002 and demo.dire.batch_size == 4 and demo.dire.fit.size == 48  # deep-merged
    assert demo.demo.dire_sample == 200 and settings.dire.fit.steps == 400  # `dire:` itself is unchanged
    mine = load_settings(overrides=["demo.dire.fit.steps=5", "demo.dire_sample=12"]).for_demo()
    assert (mine.dire.fit.steps, mine.dire.tile, mine.demo.dire_sample) == (5, 128, 12)
    off = load_settings(overrides=["demo.dire=null"])
    assert off.demo.dire is None and off.for_demo().dire == off.dire  # run_demo skips the stage
    with pytest.raises(ValidationError):
        load_settings(overrides=["demo.dire.tilez=3"]).for_demo()
