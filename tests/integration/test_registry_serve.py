"""Serve from the registry: `production` is resolved when the app is built, `/v1/model` names the registry
version, and after a rollback a redeploy reloads the previous version in the running replica."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from ray import serve

from raydetect import registry
from tests.serve_support import deploy, make_model, serve_instance, settings_for_tests, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_serve_answers_with_the_production_version_and_follows_a_rollback(ray_cluster, tmp_path: Path):
    base = settings_for_tests(tmp_path)
    settings = base.model_copy(update={"tracking": base.tracking.model_copy(
        update={"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})})  # fmt: skip
    first = make_model(tmp_path / "m1", "tinycnn", image_size=64, version="m1", seed=1)
    second = make_model(tmp_path / "m2", "tinycnn", image_size=48, version="m2", seed=2)
    for model in (first, second):
        version = registry.register(settings, model)
        assert registry.promote(settings, version, force=True, reason="test models carry no metrics").forced

    with serve_instance() as url:
        deploy(settings, "production")
        wait_ready(url)
        info = httpx.get(f"{url}/v1/model", timeout=60).json()
        assert (info["registry_version"], info["model_ref"], info["version"]) == ("2", "production", "m2")
        assert info["model_uri"] == second

        assert registry.rollback(settings) == ("2", "1")
        deploy(settings, "production")  # serve.run again: resolved anew (in place: test_serve_redeploy.py)
        wait_ready(url)
        after = httpx.get(f"{url}/v1/model", timeout=60).json()
        assert (after["registry_version"], after["version"], after["model_uri"]) == ("1", "m1", first)
        assert after["image_size"] == 64

        # a models:/ reference in user_config itself: the replica looks it up; a new revision re-resolves it
        serve.delete("raydetect")
        deploy_reference(settings, revision=1)
        wait_ready(url + "/ref")
        held = httpx.get(f"{url}/ref/v1/model", timeout=60).json()
        assert (held["registry_version"], held["model_ref"]) == ("1", "models:/raydetect@production")
        assert registry.promote(settings, "2", force=True, reason="back to m2").forced
        deploy_reference(settings, revision=2)
        moved = httpx.get(f"{url}/ref/v1/model", timeout=60).json()
        assert (moved["registry_version"], moved["version"], moved["image_size"]) == ("2", "m2", 48)
        assert moved["revision"] == 2  # (in-place reloads of a user_config change: test_serve_config.py)


def deploy_reference(settings, revision: int) -> None:
    from raydetect.serve.app import DetectorModel, IngressOptions, RayDetectAPI

    model = DetectorModel.options(
        num_replicas=1, ray_actor_options={"num_cpus": 0.5},
        user_config={"model_uri": "models:/raydetect@production", "revision": revision},
    ).bind(device="cpu", torch_threads=1, registry_uri=settings.mlflow_uri())  # fmt: skip
    options = IngressOptions.from_settings(settings)
    ingress = RayDetectAPI.options(ray_actor_options={"num_cpus": 0.1}).bind(model, options)
    serve.run(ingress, name="ref", route_prefix="/ref")
