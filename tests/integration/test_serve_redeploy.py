"""Serve follows a rollback in place: serve_config.yaml deployed with `serve deploy` to a Ray head the test
starts (`ray_head`, its dashboard), the model replica resolving `models:/raydetect@production` itself; after
a rollback, `raydetect model deploy` points the application at the restored version and the same replica
(same replica id and process) answers `/v1/model` with it; a second deploy finds nothing to change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from raydetect import registry
from tests.ray_head import RAY
from tests.serve_support import free_port, make_model, settings_for_tests, wait_for_version

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVE = str(Path(RAY).parent / "serve")
REFERENCE = "models:/raydetect@production"


def _config(settings_file: Path, port: int) -> dict:
    """serve_config.yaml with this test's settings, port, one small model replica and the model reference."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    app["args"] = {"config": str(settings_file), "overrides": []}
    app["runtime_env"] = {"env_vars": {"PYTHONPATH": str(REPO)}}  # the replicas import this checkout
    model = next(d for d in app["deployments"] if d["name"] == "DetectorModel")
    model["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    model["user_config"]["model_uri"] = REFERENCE
    return config


def _raydetect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raydetect.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)  # fmt: skip


def test_model_deploy_after_a_rollback_reloads_the_same_replica(ray_head: tuple[str, dict[str, str]],
                                                                tmp_path: Path):  # fmt: skip
    address, head_env = ray_head
    base = settings_for_tests(tmp_path, replica_num_cpus=0.5)
    settings = base.model_copy(update={"tracking": base.tracking.model_copy(
        update={"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})})  # fmt: skip
    first = make_model(tmp_path / "m1", "tinycnn", image_size=64, version="m1", seed=1)
    second = make_model(tmp_path / "m2", "tinycnn", image_size=48, version="m2", seed=2)
    for model in (first, second):
        registry.promote(settings, registry.register(settings, model), force=True, reason="test models")
    settings_file = tmp_path / "raydetect.yaml"
    settings_file.write_text(yaml.safe_dump(settings.model_dump()))
    port = free_port()
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(yaml.safe_dump(_config(settings_file, port)))
    env = {**head_env, "PYTHONPATH": str(REPO), "RAY_DASHBOARD_ADDRESS": address}
    cli_flags = ["--config", str(settings_file)]

    deployed = subprocess.run([SERVE, "deploy", str(config_file), "--address", address], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    before = wait_for_version(httpx.Client(base_url=url, timeout=10), "m2")
    assert (before["registry_version"], before["model_ref"]) == ("2", REFERENCE)

    assert registry.rollback(settings) == ("2", "1")  # `raydetect model rollback`
    moved = _raydetect(env, "model", "deploy", *cli_flags)
    assert moved.returncode == 0 and "registry version 1" in moved.stdout, moved.stdout + moved.stderr[-3000:]

    after = wait_for_version(httpx.Client(base_url=url, timeout=10), "m1")
    assert (after["registry_version"], after["model_uri"], after["image_size"]) == ("1", first, 64)
    assert (after["replica"], after["pid"]) == (before["replica"], before["pid"])  # reconfigured, not restarted
    again = _raydetect(env, "model", "deploy", *cli_flags)  # the alias has not moved since: nothing to do
    assert again.returncode == 0 and "nothing deployed" in again.stdout, again.stdout + again.stderr[-3000:]
