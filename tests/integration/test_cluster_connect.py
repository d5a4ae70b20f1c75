"""`raydetect.cluster.connect`, the one way every command reaches Ray: it joins $RAY_ADDRESS (as under
`ray job submit`) instead of starting a cluster of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


SIGTERM_PROBE = """
import os, sys, time, ray
from raydetect.cluster import connect
connect("local", num_cpus=1)
try:
    ray.get(ray.remote(lambda: 1).remote())  # the cluster works: workers started, the core worker busy
    print("ready", flush=True)
    time.sleep(120)
finally:
    print("unwound", flush=True)
"""


@pytest.mark.slow
def test_sigterm_to_a_driver_that_started_ray_unwinds_it_instead_of_aborting():
    """Ray's core worker installs a native SIGTERM handler in the driver that dumps a stack and aborts (134);
    after `connect`, SIGTERM raises SystemExit(143): `finally` runs and the local cluster stops with the driver."""
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_PROBE], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()[-2000:]
        session = next(Path("/tmp/ray").glob("session_latest"), None)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err[-2000:]
    assert out.strip() == "unwound" and "SIGTERM received" not in err
    deadline, pattern = time.monotonic() + 20, f"raylet.*{session.resolve().name}"
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:  # 0: a raylet matches
        assert time.monotonic() < deadline, "the local cluster outlived its driver"
        time.sleep(0.5)
