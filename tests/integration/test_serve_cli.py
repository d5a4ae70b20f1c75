"""`raydetect serve` as a newcomer runs it: a real process, its own local Ray, a printed URL, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.serve_support import free_port, make_model

RAYDETECT = [sys.executable, "-m", "raydetect.cli"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYDETECT_API_KEY")}
    env["RAYDETECT_MODEL_URI"] = ""
    return env


def test_bad_model_dir_is_a_clear_error_before_anything_starts(tmp_path: Path):
    result = subprocess.run([*RAYDETECT, "serve", "--model", str(tmp_path / "absent"), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120, env=_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "error:" in result.stderr and "absent" in result.stderr
    assert "Serving at" not in result.stdout


@pytest.mark.slow
def test_serve_command_prints_the_url_serves_and_stops_on_ctrl_c(tmp_path: Path):
    from raydetect.serve.local import smoke_check

    model = make_model(tmp_path / "model", "tinycnn", image_size=32, version="7")
    port = free_port()
    process = subprocess.Popen(
        [*RAYDETECT, "serve", "--model", model, "--port", str(port), "--set", "serve.replica_num_cpus=0.5",
         "--set", "serve.max_replicas=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path), cwd=tmp_path,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        url = None
        while time.monotonic() < deadline and process.poll() is None and url is None:
            match = next((re.search(r"Serving at (http://\S+/)", line) for line in lines if "Serving at" in line), None)
            url = match.group(1) if match else None
            time.sleep(0.5)
        assert url == f"http://127.0.0.1:{port}/", "".join(lines[-30:])
        body = smoke_check(url)
        assert body["model_version"] == "7" and body["decision"] in {"real", "ai", "review"}
        assert (tmp_path / ".raydetect" / "serve" / "audit.jsonl").exists()  # the default audit log, in the workdir
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=10)
    assert process.returncode == 0, "".join(lines[-30:])
