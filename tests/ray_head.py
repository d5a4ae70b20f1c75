"""A Ray head of a test's own, started with `ray start --head` in subprocesses (its own ports, temp dir and
auth token), for real `ray job submit` / Job SDK submissions; stopped by its temp dir, never `ray stop`."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def started_head(num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """A head with the dashboard (the job API), token auth on with a token of its own; stopped after.
    Yields the dashboard's address and the environment that reaches it (the token included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray 2.60 turns token auth on for new clusters: give this one its own token (never ~/.ray/auth_token).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    gcs, dashboard = _free_port(), _free_port()
    temp_dir = Path("/tmp") / f"rdjob-{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    command = [
        RAY, "start", "--head", f"--num-cpus={num_cpus}", f"--port={gcs}", "--include-dashboard=true",
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
    for sig, grace_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 20)):  # a test's cluster needs no long goodbye
        for pid in ours:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in ours):
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
