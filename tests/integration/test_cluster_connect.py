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
