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

from tests.serve_support import free_port, haproxy_binds, make_model

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
    process, lines, url = _start_serve(tmp_path, model, port)
    try:
        assert url == f"http://127.0.0.1:{port}/", "".join(lines[-30:])
        body = smoke_check(url)
        assert body["model_version"] == "7" and body["decision"] in {"real", "ai", "review"}
        assert (tmp_path / ".raydetect" / "serve" / "audit.jsonl").exists()  # the default audit log, in the workdir
        assert haproxy_binds(port) == [f"bind 127.0.0.1:{port}"]  # serve.haproxy: its cluster runs Serve's HAProxy
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, "".join(lines[-30:])


@pytest.mark.slow
def test_sigterm_while_starting_stops_cleanly(tmp_path: Path):
    """SIGTERM after Ray has started but before the app serves (Ray's native handler would abort: 134): the
    command stops what it started and exits 0, and nothing listens on the port."""
    from raydetect.serve.local import port_is_free

    model = make_model(tmp_path / "model", "tinycnn", image_size=32, version="7")
    port = free_port()
    process = subprocess.Popen([*RAYDETECT, "serve", "--model", model, "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=_env(tmp_path), cwd=tmp_path,
                               start_new_session=True)  # fmt: skip
    lines: list[str] = []
    try:
        for line in iter(process.stdout.readline, ""):
            lines.append(line)
            if "Started a local Ray instance" in line:  # Serve and the app are next: several seconds
                process.send_signal(signal.SIGTERM)
                break
        lines.extend(process.communicate(timeout=120)[0].splitlines(keepends=True))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert process.returncode == 0, output[-3000:]
    assert "stopped before serving" in output and "Serving at" not in output and "SIGTERM received" not in output
    assert port_is_free("127.0.0.1", port)


def _start_serve(tmp_path: Path, model: str, port: int) -> tuple[subprocess.Popen, list[str], str]:
    process = subprocess.Popen(
        [*RAYDETECT, "serve", "--model", model, "--port", str(port), "--set", "serve.replica_num_cpus=0.5",
         "--set", "serve.max_replicas=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path), cwd=tmp_path,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    deadline, url = time.monotonic() + 300, None
    while time.monotonic() < deadline and process.poll() is None and url is None:
        match = next((re.search(r"Serving at (http://\S+/)", line) for line in lines if "Serving at" in line), None)
        url = match.group(1) if match else None
        time.sleep(0.5)
    assert url, "".join(lines[-30:])
    return process, lines, url


def _post(url: str, body: bytes) -> str:
    """One /v1/predict: `ok`, `refused` (503 shutting_down, or no connection: never accepted) or what broke."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + "v1/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return "ok" if "prob_ai" in json.loads(response.read()) else "bad answer"
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        return "refused" if exc.code == 503 and b"shutting_down" in payload else f"HTTP {exc.code} {payload[:200]!r}"
    except urllib.error.URLError as exc:
        return "refused" if isinstance(exc.reason, ConnectionRefusedError) else f"URLError {exc.reason!r}"
    except Exception as exc:  # noqa: BLE001 - a dropped connection mid-request is the failure we look for
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight_and_exits_0(tmp_path: Path):
    """`kill <pid>` (docker stop, Kubernetes) while clients are sending: every request the server accepted
    gets its answer, later ones are refused with 503 `shutting_down`, and the process exits 0."""
    from raydetect.serve.local import smoke_check
    from tests.serve_support import encode, photo

    model = make_model(tmp_path / "model", "tinycnn", image_size=32, version="7", views="native")
    process, lines, url = _start_serve(tmp_path, model, free_port())
    outcomes: list[tuple[float, float, str]] = []
    body = encode(photo(3, (1024, 768)))
    try:
        smoke_check(url)

        def client() -> None:
            while True:
                start = time.monotonic()
                outcome = _post(url, body)
                outcomes.append((start, time.monotonic(), outcome))
                if outcome != "ok":
                    return

        clients = [threading.Thread(target=client, daemon=True) for _ in range(12)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 120
        while sum(o == "ok" for *_, o in outcomes) < 12 and time.monotonic() < deadline:
            time.sleep(0.2)
        sigterm_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        for thread in clients:
            thread.join(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log = "".join(lines[-30:])
    assert process.returncode == 0, log
    broken = [o for *_, o in outcomes if o not in ("ok", "refused")]
    assert not broken, (broken, log)
    answered_during_drain = [o for start, end, o in outcomes if start < sigterm_at < end and o == "ok"]
    assert answered_during_drain, (outcomes[-20:], log)  # requests were in flight when the signal came
    assert "refusing new requests" in log
