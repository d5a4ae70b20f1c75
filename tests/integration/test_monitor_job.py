"""jobs/monitor.py submitted through the Ray Job SDK (`JobSubmissionClient`, the public API behind `ray job
submit`) to a Ray head started by the test (`ray_head`): the job's exit status is 0 on "ok" and 1 on
"retrain", as a scheduler reads it (the job SUCCEEDED or FAILED)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from raydetect import registry
from raydetect.config import load_settings
from raydetect.data.manifest import read_manifest
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import ModelCard, save_model
from tests.datasets import make_kaggle_dataset, predictions_for

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Runs in a process of its own, with the head's environment (its auth token): submit every entry point, wait
# for each to end, print status, exit code and logs as JSON.
SUBMIT = """
import json, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient

address, working_dir, entrypoints = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = JobSubmissionClient(address)
ids = [client.submit_job(entrypoint=e, runtime_env={"working_dir": working_dir}) for e in entrypoints]
ended = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
deadline = time.monotonic() + 240
while time.monotonic() < deadline and not all(client.get_job_status(i) in ended for i in ids):
    time.sleep(0.5)
jobs = [client.get_job_info(i) for i in ids]
print(json.dumps([{"status": j.status.value, "exit_code": j.driver_exit_code, "logs": client.get_job_logs(i)}
                  for i, j in zip(ids, jobs)]))
"""


def _entrypoint(tmp: Path, root: Path, predictions: str, *extra: str) -> str:
    args = ["jobs/monitor.py", "--data", str(root), "--split", "train", "--predictions", predictions, *extra,
            "--set", f"workdir={tmp}", "--set", f"tracking.mlflow_uri=sqlite:///{tmp / 'mlflow.db'}"]  # fmt: skip
    return shlex.join([sys.executable, *args])


def test_monitor_job_exits_zero_on_ok_and_non_zero_on_retrain(ray_head: tuple[str, dict[str, str]], tmp_path: Path):
    address, env = ray_head
    settings = load_settings(overrides=[f"workdir={tmp_path}",
                                        f"tracking.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    root = make_kaggle_dataset(tmp_path / "train", n_pairs=8, size=32)
    training = read_manifest(root, "train", settings)
    card = ModelCard(backbone="tinycnn", version="m1", image_size=32, metrics={"f1": 0.9, "auc_roc": 0.95})
    version = registry.register(settings, save_model(build_backbone("tinycnn"), card, str(tmp_path / "m1")),
                                training=training)  # fmt: skip
    assert registry.promote(settings, version).passed
    same = predictions_for(training, tmp_path / "p" / "run=same")
    worse = predictions_for(training, tmp_path / "p" / "run=worse", wrong=3)  # F1 more than 5 % below 0.9
    # the ok job also checks drift against the training data itself (a dataset as the reference)
    entrypoints = [_entrypoint(tmp_path, root, same, "--reference", str(root)), _entrypoint(tmp_path, root, worse)]

    out = subprocess.run([sys.executable, "-c", SUBMIT, address, str(REPO), json.dumps(entrypoints)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip

    assert out.returncode == 0, out.stderr[-3000:]
    ok, retrain = json.loads(out.stdout.strip().splitlines()[-1])
    assert (ok["status"], ok["exit_code"]) == ("SUCCEEDED", 0), ok["logs"][-3000:]
    assert '"decision": "ok"' in ok["logs"] and '"reference_kind": "dataset"' in ok["logs"]
    assert (retrain["status"], retrain["exit_code"]) == ("FAILED", 1), retrain["logs"][-3000:]
    assert '"decision": "retrain"' in retrain["logs"] and "below the registered 0.9000" in retrain["logs"]
