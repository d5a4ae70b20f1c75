"""serve_config.yaml: valid for Serve's schema, current, and deployable; user_config reloads in place.

The deploy test goes through the same controller call as `serve run serve_config.yaml` / `serve deploy`
(`deploy_apps` with the parsed `ServeDeploySchema`), so the builder runs from its `import_path`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serve_support import (
    direct_prediction,
    encode,
    make_model,
    photo,
    serve_instance,
    settings_for_tests,
    wait_for_version,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "serve_config.yaml"


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_serve_config_yaml_validates_against_serve_schema():
    from ray._common.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    from raydetect.serve.app import app_builder

    schema = ServeDeploySchema.model_validate(_config())
    (app,) = schema.applications
    assert app.import_path == "raydetect.serve.app:app_builder"
    assert import_attr(app.import_path) is app_builder
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"DetectorModel", "RayDetectAPI"}
    model = deployments["DetectorModel"]
    assert set(model.autoscaling_config) >= {"min_replicas", "max_replicas", "target_ongoing_requests"}
    assert model.user_config["model_uri"] and model.user_config["max_batch_size"] >= 1
    assert model.max_ongoing_requests >= model.user_config["max_batch_size"]


def test_serve_config_yaml_is_what_the_generator_writes():
    from raydetect.serve.config_file import render

    assert CONFIG.read_text() == render(), "regenerate: python -m raydetect.serve.config_file"


def test_app_builder_takes_args_and_sets_serve_options(tmp_path: Path):
    from pydantic import ValidationError
    from ray.serve._private.build_app import build_app as serve_build_app

    from raydetect.serve.app import app_builder

    app = app_builder({"model_uri": str(tmp_path / "m"), "overrides": ["serve.max_batch_size=4",
                                                                       "serve.max_replicas=3"]})
    built = {d.name: d for d in serve_build_app(app, name="x").deployments}
    model = built["DetectorModel"]
    config = model._deployment_config
    assert config.user_config == {"model_uri": str(tmp_path / "m"), "max_batch_size": 4,
                                  "batch_wait_timeout_s": 0.0}
    assert (config.autoscaling_config.min_replicas, config.autoscaling_config.max_replicas) == (1, 3)
    assert config.autoscaling_config.target_ongoing_requests == 8
    assert config.max_ongoing_requests == 32
    assert model.ray_actor_options["num_gpus"] == 0  # no GPU on this machine
    with pytest.raises(ValidationError):
        app_builder({"model": "typo"})
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        app_builder({"overrides": ["serve.max_batch_size=64"]})


def test_topology_auto_fuses_a_cpu_model_into_the_ingress_but_not_from_a_config_file(tmp_path: Path):
    """`serve.topology: auto`: one deployment where model replicas run on CPU (`raydetect serve` here), two
    where they get a GPU; an app deployed from a Serve config file (`app_builder`) is split, as the file's
    deployment entries are."""
    from ray.serve._private.build_app import build_app as serve_build_app

    from raydetect.config import load_settings
    from raydetect.serve.app import app_builder, build_app, resolved_topology

    assert [resolved_topology("auto", gpus) for gpus in (0.0, 0.5, 1.0)] == ["fused", "split", "split"]
    assert (resolved_topology("split", 0.0), resolved_topology("fused", 1.0)) == ("split", "fused")
    model = str(tmp_path / "m")

    def deployments(app) -> dict:
        return {d.name: d for d in serve_build_app(app, name="x").deployments}

    (only,) = deployments(build_app(load_settings(overrides=["device=cpu"]), model)).values()
    config = only._deployment_config  # the model's options on the ingress
    assert only.name == "RayDetectAPI" and config.user_config["model_uri"] == model
    assert config.autoscaling_config.max_replicas == 2 and only.ray_actor_options["num_cpus"] == 1.0
    gpu = deployments(build_app(load_settings(overrides=["device=cpu", "serve.num_gpus=1"]), model))
    assert set(gpu) == {"DetectorModel", "RayDetectAPI"} and gpu["DetectorModel"].ray_actor_options["num_gpus"] == 1
    from_file = deployments(app_builder({"model_uri": model, "overrides": ["device=cpu"]}))
    assert set(from_file) == {"DetectorModel", "RayDetectAPI"}
    fused = deployments(app_builder({"model_uri": model, "overrides": ["device=cpu", "serve.topology=fused"]}))
    assert set(fused) == {"RayDetectAPI"}


@pytest.mark.slow
@pytest.mark.ray
def test_config_deploy_then_user_config_reload_without_restart(ray_cluster, tmp_path: Path):
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    model1 = make_model(tmp_path / "model1", "tinycnn", image_size=64, version="1", seed=1)
    model2 = make_model(tmp_path / "model2", "tinycnn", image_size=48, version="2", seed=2)
    settings_file = tmp_path / "raydetect.yaml"
    settings_file.write_text(yaml.safe_dump(settings_for_tests(tmp_path).model_dump()))

    config = _config()
    config.pop("http_options")  # Serve is already listening on the test's own port
    app = config["applications"][0]
    app["args"] = {"config": str(settings_file), "overrides": []}
    model_cfg = next(d for d in app["deployments"] if d["name"] == "DetectorModel")
    model_cfg["user_config"]["model_uri"] = model1
    model_cfg["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    images = [encode(photo(i, (90, 70)), "PNG") for i in range(3)]

    with serve_instance() as url:
        client_api = _get_global_client()
        client_api.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
        wait_ready(url)
        with httpx.Client(base_url=url, timeout=60) as client:
            before = wait_for_version(client, "1")
            for data in images:
                body = client.post("/v1/predict", content=data).json()
                assert body["prob_ai"] == pytest.approx(direct_prediction(model1, data)[0], abs=1e-5)

            # edit user_config only, as an operator would in serve_config.yaml, and deploy again
            edited = copy.deepcopy(config)
            new_cfg = next(d for d in edited["applications"][0]["deployments"] if d["name"] == "DetectorModel")
            new_cfg["user_config"].update(model_uri=model2, max_batch_size=1)
            client_api.deploy_apps(ServeDeploySchema.model_validate(edited), _blocking=True)
            after = wait_for_version(client, "2")
            assert after["model_uri"] == model2 and after["image_size"] == 48 and after["max_batch_size"] == 1
            assert (after["replica"], after["pid"]) == (before["replica"], before["pid"])  # reconfigured in place
            assert after["ingress"] == before["ingress"]  # the ingress was not restarted either
            for data in images:  # the ingress still crops at 64 until the model says "stale": re-crop at 48
                body = client.post("/v1/predict", content=data).json()
                assert body["model_version"] == "2"
                assert body["prob_ai"] == pytest.approx(direct_prediction(model2, data)[0], abs=1e-5)
