"""Run the serving app on this machine (a local Ray cluster), and check a running server over HTTP.

`raydetect serve --model DIR` and the demo use `start_local` / `smoke_check` / `stop_local`.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from raydetect.config import Settings, load_settings

APP_NAME = "raydetect"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _unspecified(host: str) -> bool:
    """'' or a wildcard address (0.0.0.0, ::): the server listens everywhere; call it on the loopback."""
    try:
        return host == "" or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        return False


def local_url(settings: Settings) -> str:
    host = settings.serve.host
    shown = "127.0.0.1" if _unspecified(host) else host
    return f"http://{shown}:{settings.serve.port}/"


def start_local(settings: Settings | None = None, model_uri: str | None = None, num_cpus: int | None = None) -> str:
    """Start Ray (unless already up) and Serve on serve.host:serve.port, deploy the app, return its URL.

    Raises `RuntimeError` when the port is taken and `FileNotFoundError`/`ValueError` for a bad model dir,
    before anything is started.
    """
    from ray import serve

    from raydetect.cluster import connect
    from raydetect.models.bundle import load_card
    from raydetect.registry import resolve_model
    from raydetect.serve.app import build_app

    settings = settings or load_settings()
    resolved = resolve_model(model_uri, settings, must_exist=False, serve=True)
    card = load_card(resolved.uri, settings.storage)  # fail fast, with the file's own error, before starting Ray
    host, port = settings.serve.host, settings.serve.port
    if not port_is_free(host, port):
        raise RuntimeError(f"port {port} on {host} is in use: pass another with --port (or stop what holds it)")
    connect("local", num_cpus=num_cpus, log_to_driver=False, settings=settings)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings, resolved), name=APP_NAME, route_prefix="/")
    url = local_url(settings)
    wait_healthy(url)
    where = resolved.uri + (f" (registry version {resolved.version})" if resolved.version else "")
    print(f"raydetect serves {card.name} v{card.version} ({card.backbone}, {card.input_filter} input) from {where}")
    return url


def drain_local(timeout_s: float = 30.0, poll_s: float = 0.1) -> int:
    """Close the ingress's admission gate (new requests get 503 `shutting_down`) and wait until the requests
    it accepted have been answered, at most `timeout_s`; returns how many were still in flight then. Asks
    through the app's handle, which reaches the local app's one ingress replica."""
    from ray import serve

    try:
        handle = serve.get_app_handle(APP_NAME)
    except Exception:  # noqa: BLE001 - nothing deployed (yet): nothing to drain
        return 0
    deadline = time.monotonic() + timeout_s
    while True:
        in_flight = handle.drain.remote().result(timeout_s=max(1.0, timeout_s))["in_flight"]
        if in_flight == 0 or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    time.sleep(0.5)  # the last answers leave the proxy
    return in_flight


def stop_local() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30):
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url!r}")
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as response:  # nosec B310 # http(s) only, checked above
        return response.status, json.loads(response.read() or b"{}")


def wait_healthy(url: str, timeout_s: float = 120) -> dict[str, Any]:
    """Poll `GET /healthz` until it says ok; raise `TimeoutError` with the last error otherwise."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = _request(url.rstrip("/") + "/healthz", timeout=10)
            if status == 200 and body.get("status") == "ok":
                return body
            last = f"{status} {body}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy in {timeout_s:.0f} s ({last})")


def sample_png(size: int = 96, seed: int = 0) -> bytes:
    """A small synthetic photo-like PNG for smoke checks."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 1 - x * y], axis=-1) * 200 + rng.normal(0, 12, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def smoke_check(url: str, image: bytes | None = None, api_key: str | None = None) -> dict[str, Any]:
    """healthz, then one `POST /v1/predict` (with `api_key`, else $RAYDETECT_API_KEY when set); returns the
    prediction JSON (raises on any failure)."""
    wait_healthy(url, timeout_s=30)
    api_key = api_key if api_key is not None else os.environ.get("RAYDETECT_API_KEY") or None
    headers = {"Content-Type": "application/octet-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    status, body = _request(url.rstrip("/") + "/v1/predict", data=image or sample_png(), headers=headers)
    if status != 200 or "prob_ai" not in body:
        raise RuntimeError(f"unexpected answer from {url}v1/predict: {status} {body}")
    return body
