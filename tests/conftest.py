"""Shared test infrastructure: one local Ray cluster per session and a moto S3 server on 127.0.0.1.

The S3 server starts first and exports the standard AWS variables, so the Ray workers started after it
inherit them (that is how `raydetect.storage` finds the endpoint inside tasks and actors).
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_BUCKET = "raydetect-test"
RAY_TEST_CPUS = 4  # logical CPUs for the shared cluster: room for actors *and* read tasks on 2 cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL and exports AWS_* for this process tree."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A fresh, empty bucket for one test (the server is reset afterwards); yields `s3://bucket`."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=TEST_BUCKET)
    yield f"s3://{TEST_BUCKET}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST")).read()


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray cluster for the whole session (starting one costs ~6 s)."""
    import ray

    from raydetect.cluster import connect
    from raydetect.config import load_settings

    os.environ.pop("RAY_ADDRESS", None)  # a stale address makes ray.init() hang for minutes
    # started as raydetect starts its own (Serve's environment: HAProxy ingress); a no-op when Ray is up
    connect("local", num_cpus=RAY_TEST_CPUS, log_to_driver=False, settings=load_settings(), configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head of the test's own with the job API (tests/ray_head.py): (dashboard address, environment)."""
    from tests.ray_head import started_head

    with started_head() as head:
        yield head


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave things a person may want to look at (screenshots, reports)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and other tests share the cores); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
