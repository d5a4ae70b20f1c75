"""A real `ray job submit` of jobs/train_sweep.py to a Ray head started by the test (`ray start --head`)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.datasets import make_kaggle_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A 2-CPU head with the dashboard (the job API), token auth on with a token of its own; stopped after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray 2.60 turns token auth on for new clusters: give this one its own token (never ~/.ray/auth_token).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    gcs, dashboard = _free_port(), _free_port()
    temp_dir = Path("/tmp") / f"rdjob-{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    command = [
        RAY, "start", "--head", "--num-cpus=2", f"--port={gcs}", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    address = f"http://127.0.0.1:{dashboard}"
    try:
        yield address, env
    finally:
        _stop_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                table[int(entry.name)] = (parent, (entry / "cmdline").read_bytes())
    return table


def _stop_processes_of(temp_dir: Path) -> None:
    """Stop exactly this cluster: the processes whose command line names its temp dir, and their children.
    (`ray stop` would stop every Ray cluster on the machine, including other sessions'.)"""
    table = _processes()
    ours = {pid for pid, (_, cmdline) in table.items() if str(temp_dir).encode() in cmdline}
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in ours} - ours
        ours |= children
        grew = bool(children)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in ours):
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


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
