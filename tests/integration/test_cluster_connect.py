"""`raydetect.cluster.connect`, the one way every command reaches Ray: it joins $RAY_ADDRESS (as under
`ray job submit`) instead of starting a cluster of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
PROBE = "from raydetect.cluster import connect; connect(); import ray; print(ray.get_runtime_context().gcs_address)"


def test_connect_joins_the_cluster_in_ray_address(ray_cluster: None):
    import ray

    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == address


SERVE_ENV_PROBE = """
import os, ray
from raydetect.cluster import connect
from raydetect.config import load_settings
connect("local", num_cpus=1, settings=load_settings(overrides=%r))
seen = ray.get(ray.remote(lambda: os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")).remote())
print(seen, os.environ.get("RAY_SERVE_ENABLE_HA_PROXY"), os.environ.get("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "workers_see"), [([], "1"), (["serve.haproxy=false"], "None")])
def test_a_cluster_started_here_gives_its_workers_serves_environment_and_the_driver_keeps_its_own(
    overrides: list[str], workers_see: str
):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_SERVE_", "RAY_DATA_NON_TTY"))}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", SERVE_ENV_PROBE % overrides], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    # and Ray Data's status lines in a log once a minute, not every 10 s
    assert out.stdout.strip().splitlines()[-1] == f"{workers_see} None 60"
