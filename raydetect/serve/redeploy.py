"""`raydetect model deploy`: point a running Serve application at the model a reference resolves to now.

After `raydetect model promote` or `rollback`, the application deployed from serve_config.yaml (`serve
deploy`, a RayService) still serves the version it loaded: an unchanged config file changes nothing (Serve
re-runs neither the builder nor `reconfigure` when the import path, args and user_config are the same).
This module reads the application's deployed config from the cluster (`serve config`), resolves the model
reference on the driver (`registry.resolve_model`: `--model`, else the `model_ref` the application's
`DetectorModel.user_config` records, else the serving alias), writes the resolved directory, registry
version and reference into that `user_config` and deploys the config again (`serve deploy`). Only
`user_config` changed, so Serve calls `DetectorModel.reconfigure` on the running replicas: they load the
new model in place, without a restart (no new actors). When the alias has not moved, nothing is deployed.

It drives the Serve CLI (`serve config` / `serve deploy` against the dashboard address), the public
interface to a cluster's declarative applications; the deploy replaces the cluster's declarative config,
so every application it reports is deployed again as it was, only this one's `user_config` changed.
"""

from __future__ import annotations

import subprocess  # nosec B404 # only the Serve CLI of this environment (_serve), no shell
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from raydetect.config import Settings
from raydetect.registry import ResolvedModel, resolve_model
from raydetect.serve.app import MODEL_DEPLOYMENT, carries_model

APP_NAME = "raydetect"


def _serve(*args: str) -> str:
    """Run the Serve CLI of this Python environment; its stdout (RuntimeError with its stderr on failure)."""
    serve = Path(sys.executable).parent / "serve"
    command = [str(serve) if serve.exists() else "serve", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)  # nosec B603 # argv list, no shell
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def deployed_configs(address: str) -> list[dict[str, Any]]:
    """The declarative configs of the cluster's applications (`serve config`), [] when there are none."""
    text = _serve("config", "--address", address)
    if text.strip().startswith("No configuration"):
        return []
    return [doc for doc in yaml.safe_load_all(text) if doc]


def model_options(app_config: dict[str, Any]) -> dict[str, Any]:
    """The entry of an application config whose user_config names the model: the `DetectorModel` deployment's,
    or the ingress's when the model runs in it (`serve.topology: fused`); a `DetectorModel` entry is created
    when there is neither."""
    deployments = app_config.setdefault("deployments", [])
    for deployment in deployments:
        if carries_model(deployment):
            return deployment
    deployments.append({"name": MODEL_DEPLOYMENT})
    return deployments[-1]


def reference_of(user_config: dict[str, Any], model: str | None) -> str | None:
    """What to resolve: `model`, else the recorded reference, else a `models:/` model_uri; None: the default."""
    uri = str(user_config.get("model_uri") or "")
    return model or user_config.get("model_ref") or (uri if uri.startswith("models:/") else None)


def point_at(user_config: dict[str, Any], resolved: ResolvedModel) -> bool:
    """Write `resolved` into `user_config`; False when it already names that directory and version."""
    wanted = {"model_uri": resolved.uri, "registry_version": resolved.version, "model_ref": resolved.ref}
    if all(user_config.get(k) == v for k, v in wanted.items()):
        return False
    user_config.update(wanted)
    return True


def redeploy(settings: Settings, address: str, model: str | None = None,
             app: str = APP_NAME) -> tuple[ResolvedModel, bool]:
    """Point application `app` on the cluster at `address` (its dashboard) at the model `model` (see the
    module doc) resolves to now; returns it and whether anything was deployed."""
    configs = deployed_configs(address)
    target = next((c for c in configs if c.get("name") == app), None)
    if target is None:
        raise ValueError(f"no application {app!r} deployed from a config at {address} (serve deploy it first)")
    user_config = model_options(target).setdefault("user_config", {})
    resolved = resolve_model(reference_of(user_config, model), settings, serve=True)
    if not point_at(user_config, resolved):
        return resolved, False
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="raydetect-serve-") as handle:
        yaml.safe_dump({"applications": configs}, handle, sort_keys=False)
        handle.flush()
        _serve("deploy", handle.name, "--address", address)
    return resolved, True
