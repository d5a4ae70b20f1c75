"""The model registry on a real MLflow SQLite store: register, list, gates, force, rollback, archive, and
resolving registry references to model directories (the one resolver of score, Serve and evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from raydetect import registry
from raydetect.cli import app
from raydetect.config import load_settings
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import ModelCard, save_model
from raydetect.score.pipeline import parse_models

runner = CliRunner()


def _tiny(path: Path, version: str, f1: float, auc: float) -> str:
    torch.manual_seed(0)
    card = ModelCard(backbone="tinycnn", version=version, image_size=32, metrics={"f1": f1, "auc_roc": auc})
    return save_model(build_backbone("tinycnn"), card, str(path))


def _evaluation(path: Path, f1: float, auc: float, category_acc: tuple[float, float] = (0.9, 0.88)) -> str:
    summary = {
        "overall": {"n": 200, "accuracy": f1, "f1": f1, "auc_roc": auc},
        "groups": {"category": [{"category": "human", "accuracy": category_acc[0], "n": 50},
                                {"category": "other", "accuracy": category_acc[1], "n": 150}]},
        "context": {"data": "bench-v1"},
    }  # fmt: skip
    path.write_text(json.dumps(summary))
    return str(path)


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, list[str]]:
    flags = ["--set", f"workdir={tmp_path}", "--set", f"tracking.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    return tmp_path, flags


def _cli(flags: list[str], *args: str):
    return runner.invoke(app, ["model", *args, *flags])


def test_lifecycle_register_promote_gates_force_rollback_archive(workdir):
    tmp, flags = workdir
    settings = load_settings(overrides=[f"workdir={tmp}", f"tracking.mlflow_uri=sqlite:///{tmp / 'mlflow.db'}"])
    a, b, c = (_tiny(tmp / n, n, f1, auc) for n, f1, auc in [("a", 0.85, 0.9), ("b", 0.9, 0.95), ("c", 0.95, 0.97)])
    evaluations = [_evaluation(tmp / "ea.json", 0.85, 0.9), _evaluation(tmp / "eb.json", 0.9, 0.95)]
    for model, evaluation in zip([a, b], evaluations, strict=True):
        result = _cli(flags, "register", model, "--evaluation", evaluation)
        assert result.exit_code == 0, result.output
    assert _cli(flags, "register", c).exit_code == 0  # card metrics only, evaluation attached at promotion
    assert _cli(flags, "register", a).output.startswith("registered raydetect version 1")  # same dir, same version
    tags = registry.client(settings).get_model_version("raydetect", "1").tags
    assert tags["eval.f1"] == "0.85" and tags["metric.auc_roc"] == "0.9" and tags["threshold"] == "0.5"
    assert tags["code_version"] and tags["model_uri"] == a

    assert _cli(flags, "promote", "1").exit_code == 0
    result = _cli(flags, "promote", "2")
    assert result.exit_code == 0 and "previous: 1" in result.output and "max_drop_f1" in result.output
    assert registry.alias_holder(settings) == "2"

    # version 3: a worse evaluation on the same data, and an unfair one -> refused, each failed gate named
    worse = _evaluation(tmp / "ec.json", 0.8, 0.94, category_acc=(0.5, 0.9))
    result = _cli(flags, "promote", "3", "--evaluation", worse)
    assert result.exit_code == 1
    assert "max_drop_f1" in result.output and "max_fairness_gap" in result.output
    assert "FAIL  max_drop_auc_roc" not in result.output and "PASS  min_f1" in result.output
    assert registry.alias_holder(settings) == "2"
    assert _cli(flags, "promote", "3", "--force").exit_code == 2  # a force needs a reason
    result = _cli(flags, "promote", "3", "--force", "--reason", "hotfix for a new generator")
    assert result.exit_code == 0, result.output
    tags = registry.client(settings).get_model_version("raydetect", "3").tags
    assert tags["forced"] == "true" and tags["force_reason"] == "hotfix for a new generator"
    assert registry.resolve_model_uri("production", settings) == c

    result = _cli(flags, "rollback")
    assert result.exit_code == 0 and "version 3 -> 2" in result.output
    assert registry.alias_holder(settings) == "2"
    assert "rolled_back_at" in registry.client(settings).get_model_version("raydetect", "3").tags

    assert _cli(flags, "archive", "2").exit_code == 2  # the serving version is never archived
    assert _cli(flags, "archive", "3").exit_code == 0
    assert "archived_at" in registry.client(settings).get_model_version("raydetect", "3").tags
    assert Path(c, "model.json").exists()  # artifacts kept
    assert _cli(flags, "promote", "3").exit_code == 2  # archived: not promotable

    listing = _cli(flags, "list").output.splitlines()
    row = {line.split()[0]: line for line in listing[1:]}
    assert "production" in row["2"] and "archived" in row["3"] and "0.9000" in row["2"]

    # references resolve to directories wherever a model is taken
    assert registry.resolve_model_uri("models:/raydetect@production", settings) == b
    assert registry.resolve_model("production", settings).version == "2"
    assert registry.resolve_model_uri("models:/raydetect/1", settings) == a
    assert registry.resolve_model_uri(a, settings) == a
    assert parse_models("production", settings=settings).uris == [b]
    assert parse_models(None, settings=settings).uris == [b]  # no model named: the production alias

    result = _cli(flags, "rollback")
    assert result.exit_code == 0 and "version 2 -> 1" in result.output
    assert _cli(flags, "rollback").exit_code == 2  # version 1 was the first holder
    log = [(e["action"], e["version"], e["from"]) for e in registry.alias_log(settings)]
    assert log == [("promote", "1", ""), ("promote", "2", "1"), ("force", "3", "2"), ("rollback", "2", "3"),
                   ("rollback", "1", "2")]  # fmt: skip


def test_resolution_falls_back_to_the_workdir_without_a_registry(tmp_path: Path):
    settings = load_settings(overrides=[f"workdir={tmp_path}", f"tracking.mlflow_uri=sqlite:///{tmp_path / 'no.db'}"])
    with pytest.raises(ValueError, match="model.json"):
        registry.resolve_model_uri("production", settings)
    model = _tiny(tmp_path / "models" / "production", "p", 0.9, 0.9)
    assert registry.resolve_model("production", settings) == registry.ResolvedModel(model, None, "production")
    assert not (tmp_path / "no.db").exists()  # looking never creates a store
    with pytest.raises(ValueError, match="model.json"):
        registry.resolve_model_uri(str(tmp_path / "nowhere"), settings)
    nowhere = str(tmp_path / "nowhere")
    assert registry.resolve_model_uri(nowhere, settings, must_exist=False) == nowhere


def test_figures_and_gates_from_tags_and_an_evaluation_summary():
    from raydetect.gates import check_gates, fairness_gap, robustness_drop

    card = registry.figures({"metric.f1": "0.8", "metric.auc": "0.9", "data_fingerprint": "abc"})
    assert (card.source, card.data, card.metrics["auc_roc"]) == ("card", "abc", 0.9)
    summary = {"overall": {"f1": 0.75, "auc_roc": 0.8},
               "groups": {"processing": [{"processing": "none", "accuracy": 0.9, "n": 10},
                                         {"processing": "jpeg", "accuracy": 0.5, "n": 30},
                                         {"processing": "blur", "accuracy": 0.7, "n": 10}]}}  # fmt: skip
    assert robustness_drop(summary) == pytest.approx(0.9 - (0.5 * 30 + 0.7 * 10) / 40)
    evaluated = registry.figures(registry.evaluation_tags(summary, data="d"))
    assert evaluated.source == "evaluation" and evaluated.fairness_gap is None
    gates = {g.name: g for g in check_gates(evaluated, card, load_settings().registry.gates)}
    assert gates["max_robustness_drop"].passed is False  # 0.41 > 0.3
    assert gates["max_drop"].passed and "different data" in gates["max_drop"].detail  # d vs abc: not compared
    assert gates["max_fairness_gap"].passed and gates["min_f1"].passed
    # the evaluation report's own fairness and robustness figures win when it has them
    richer = {**summary, "fairness": {"equalized_odds_difference": 0.3},
              "robustness": [{"perturbation": "clean", "accuracy_drop": 0.0}, {"accuracy_drop": 0.12}]}
    assert (fairness_gap(richer), robustness_drop(richer)) == (0.3, 0.12)
