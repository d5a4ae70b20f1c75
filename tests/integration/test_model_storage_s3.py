"""Model directories on an S3 endpoint named only in the settings (`storage.endpoint_url`).

The endpoint is a second moto server, in a process of its own (moto keeps its buckets per process): neither
this process's environment (AWS_ENDPOINT_URL is removed) nor the Ray workers' (they inherited the session
server's AWS_ENDPOINT_URL, where this bucket does not exist) know it. Saving, loading, exporting,
registering, resolving and batch scoring (in the model actors) a model there work through the settings alone.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from raydetect import registry
from raydetect.config import StorageSettings, load_settings
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard, load_card, load_detector, save_model
from raydetect.train.trainer import export_model
from tests.conftest import _free_port
from tests.datasets import encode, smooth_photo

pytestmark = [pytest.mark.s3]

BUCKET = "raydetect-private"


@pytest.fixture(scope="module")
def private_endpoint(s3_server: str) -> Iterator[str]:
    """A moto server only the settings will name (the session's fixture exported the test credentials)."""
    import boto3

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.2)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def no_endpoint_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


def _settings(tmp: Path, endpoint: str):
    return load_settings(overrides=[f"storage.endpoint_url={endpoint}", f"workdir={tmp}",
                                    f"tracking.mlflow_uri=sqlite:///{tmp / 'mlflow.db'}"])  # fmt: skip


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_backbone("tinycnn").eval()
    with torch.no_grad():  # spread the untrained outputs so images get different scores
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
    return model


def test_save_load_export_register_and_resolve_with_the_endpoint_only_in_the_settings(
    private_endpoint: str, s3_server: str, no_endpoint_env: None, tmp_path: Path
):
    settings = _settings(tmp_path, private_endpoint)
    model, card = _tiny(3), ModelCard(backbone="tinycnn", version="s1", image_size=32)
    uri = save_model(model, card, f"s3://{BUCKET}/models/s1", settings.storage)
    assert uri == f"s3://{BUCKET}/models/s1"

    detector = load_detector(uri, device="cpu", precision="fp32", storage_settings=settings.storage)
    image = smooth_photo(np.random.default_rng(0), 32)
    local = Detector(model, card, torch.device("cpu"), precision="fp32")
    assert detector.predict_image(image) == pytest.approx(local.predict_image(image), abs=1e-6)

    exported = export_model(uri, f"s3://{BUCKET}/models/s1-final", {"cv_f1_mean": 0.8}, settings.storage,
                            version="s1-final")  # fmt: skip
    assert load_card(exported, settings.storage).metrics["cv_f1_mean"] == 0.8
    assert registry.resolve_model(uri, settings).uri == uri  # a directory: its model.json is looked for
    version = registry.register(settings, exported)  # reads the card for the version's tags
    assert registry.version_tags(settings, version)["card_version"] == "s1-final"
    registry.promote(settings, version, force=True, reason="a test model has no metrics")
    assert registry.resolve_model("production", settings) == registry.ResolvedModel(exported, version, "production")

    with pytest.raises(OSError):  # the model is on the settings' endpoint only, not on the session's server
        load_card(uri, StorageSettings(endpoint_url=s3_server))


@pytest.mark.ray
@pytest.mark.slow
def test_score_cli_loads_an_s3_model_in_the_actors_from_the_settings_endpoint(
    private_endpoint: str, no_endpoint_env: None, ray_cluster: None, tmp_path: Path
):
    from raydetect.cli import app

    uri = save_model(_tiny(4), ModelCard(backbone="tinycnn", version="s2", image_size=32),
                     f"s3://{BUCKET}/models/s2", StorageSettings(endpoint_url=private_endpoint))  # fmt: skip
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        (folder / f"{i}.png").write_bytes(encode(smooth_photo(rng, 32)))
    args = ["score", str(folder), "--model", uri, "--output", str(tmp_path / "out"), "--run-id", "s3model",
            "--actors", "1:1", "--set", f"storage.endpoint_url={private_endpoint}"]  # fmt: skip

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    rows = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "out" / "run=s3model").glob("*.parquet")))
    assert len(rows) == 4 and rows["error"].isna().all() and (rows["model_version"] == "s2").all()
