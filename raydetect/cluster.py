"""One way to reach Ray, for every command: the cluster at `address` or $RAY_ADDRESS (what `ray job submit`
and `ray start` give a driver), else a local cluster started here, without the dashboard.

`address="local"` always starts a new local cluster (`raydetect serve` on this machine). A no-op when Ray is
already initialised in this process (tests share one cluster; the demo's stages share one).
"""

from __future__ import annotations

import os


def connect(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Initialise Ray once; `num_cpus` applies only to a cluster started here."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # 2.60's default; a stale 0 would bring back Train V1
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    # "local", not None: ray.init(address=None) would join any cluster already running on this machine
    # (someone else's `ray start`, another command's cluster), which is not what a plain command asks for
    started_here = target == "local"
    kwargs = {"num_cpus": num_cpus, "include_dashboard": False} if started_here else {}
    ray.init(address=target, log_to_driver=log_to_driver, **kwargs)
