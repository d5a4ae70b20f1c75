"""A real `ray job submit` of jobs/train_sweep.py to a Ray head started by the test (`ray start --head`,
the `ray_head` fixture)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.datasets import make_kaggle_dataset
from tests.ray_head import RAY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_train_sweep_succeeds(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_head
    root = make_kaggle_dataset(tmp_path / "data", n_pairs=12, size=32)
    out = tmp_path / "sweep"
    submit = [
        RAY, "job", "submit", f"--address={address}", f"--working-dir={REPO}", "--",
        sys.executable, "jobs/train_sweep.py", "tune", str(root),
        "--num-samples", "1", "--cv", "1", "--backbones", "tinycnn", "--epochs", "1", "--output", str(out),
        "--set", f"workdir={tmp_path / 'work'}", "--set", "images.size=32", "--set", "train.batch_size=8",
        "--set", "train.weights=none", "--set", f"tracking.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", logs), logs[-4000:]
    job_id = re.search(r"raysubmit_\w+", logs).group(0)
    status = subprocess.run(
        [RAY, "job", "status", f"--address={address}", job_id], env=env, capture_output=True, text=True, timeout=60
    )
    assert re.search(r"succeeded", status.stdout + status.stderr, re.IGNORECASE), status.stdout + status.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 1 and board["complete"].all()
    assert time.monotonic() - started < 900
