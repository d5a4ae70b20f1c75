"""`serve.topology: fused`: the model inside the ingress replica, one deployment, over real HTTP on the shared
Ray cluster: same answers as a direct model call, user_config reaching the model in place, and the operator's
tools (serve_config.yaml's generator, `raydetect model deploy`'s lookup) finding the model's user_config there.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.serve_support import (
    deploy,
    direct_prediction,
    encode,
    make_model,
    photo,
    serve_instance,
    settings_for_tests,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _model_info(client: httpx.Client, max_batch_size: int, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.get("/v1/model").json()
        if info.get("max_batch_size") == max_batch_size:
            return info
        time.sleep(0.3)
    raise TimeoutError(f"the replica never reported max_batch_size {max_batch_size}")


def test_fused_app_serves_the_model_in_its_ingress_replica(ray_cluster, tmp_path: Path):
    from ray import serve

    model = make_model(tmp_path / "model", "tinycnn", image_size=64, version="3", seed=2, views="native")
    settings = settings_for_tests(tmp_path, topology="fused", max_batch_size=4)
    with serve_instance() as url:
        deploy(settings, model, name="fused")
        wait_ready(url)
        status = serve.status().applications["fused"]
        assert set(status.deployments) == {"RayDetectAPI"}  # no DetectorModel deployment, no hop
        with httpx.Client(base_url=url, timeout=60) as client:
            info = _model_info(client, 4)
            assert info["topology"] == "fused" and info["version"] == "3"
            assert info["ingress"]["pid"] == info["pid"]  # the model answers from the ingress's process
            for seed, fmt in ((0, "PNG"), (1, "JPEG")):
                data = encode(photo(seed, (90, 70)), fmt)
                prob, decision = direct_prediction(model, data)
                body = client.post("/v1/predict", content=data,
                                   headers={"Content-Type": "application/octet-stream"}).json()
                assert body["prob_ai"] == pytest.approx(prob, abs=1e-5) and body["decision"] == decision
            bad = client.post("/v1/predict", content=b"not an image",
                              headers={"Content-Type": "application/octet-stream"})
            assert bad.status_code in (415, 422), bad.text
        serve.delete("fused")


def test_fused_config_deploy_then_model_swap_in_place(ray_cluster, tmp_path: Path):
    """Deployed from the generated config (as `serve deploy`), then only user_config edited: the new model is
    loaded by the same replica, and views cut for the old model's size are cut again (`stale`) in-process."""
    import yaml
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from raydetect.serve.config_file import render
    from raydetect.serve.redeploy import model_options

    model1 = make_model(tmp_path / "model1", "tinycnn", image_size=64, version="1", seed=1)
    model2 = make_model(tmp_path / "model2", "tinycnn", image_size=48, version="2", seed=2)
    settings = settings_for_tests(tmp_path, topology="fused")
    settings_file = tmp_path / "raydetect.yaml"
    settings_file.write_text(yaml.safe_dump(settings.model_dump()))
    config = yaml.safe_load(render(settings))
    config.pop("http_options")  # Serve is already listening on the test's own port
    app = config["applications"][0]
    app["args"] = {"config": str(settings_file), "overrides": []}
    model_options(app)["user_config"].update(model_uri=model1, max_batch_size=4)
    data = encode(photo(5, (90, 70)), "PNG")
    with serve_instance() as url:
        client_api = _get_global_client()
        client_api.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
        wait_ready(url)
        with httpx.Client(base_url=url, timeout=60) as client:
            before = _model_info(client, 4)
            assert before["topology"] == "fused" and before["version"] == "1"
            assert client.post("/v1/predict", content=data).json()["prob_ai"] == pytest.approx(
                direct_prediction(model1, data)[0], abs=1e-5)
            model_options(app)["user_config"].update(model_uri=model2, max_batch_size=2)
            client_api.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
            after = _model_info(client, 2)
            assert after["version"] == "2" and after["image_size"] == 48
            assert (after["replica"], after["pid"]) == (before["replica"], before["pid"])  # reconfigured in place
            body = client.post("/v1/predict", content=data).json()
            assert body["model_version"] == "2"
            assert body["prob_ai"] == pytest.approx(direct_prediction(model2, data)[0], abs=1e-5)


def test_fused_app_keeps_its_model_options_where_operators_look(tmp_path: Path):
    """serve_config.yaml's generator and `raydetect model deploy` find the model's user_config (and strip the
    builder's resources) on the ingress deployment when the model runs in it."""
    import yaml

    from raydetect.serve.config_file import render
    from raydetect.serve.redeploy import model_options

    settings = settings_for_tests(tmp_path, topology="fused")
    (app,) = yaml.safe_load(render(settings))["applications"]
    (only,) = app["deployments"]
    assert only["name"] == "RayDetectAPI" and only["user_config"]["model_uri"]
    assert "ray_actor_options" not in only and only["autoscaling_config"]["max_replicas"] == 1
    assert model_options(app) is only
    split = yaml.safe_load(render(settings_for_tests(tmp_path)))["applications"][0]
    assert model_options(split)["name"] == "DetectorModel"
