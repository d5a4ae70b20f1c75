"""Helpers for the serving tests: tiny model directories, a Serve instance on a free port, images.

Used by tests/integration/test_serve_*.py and tests/e2e/test_serve_browser.py (each file starts Serve on
the shared `ray_cluster`, deploys what it needs and shuts Serve down at the end).
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raydetect.config import Settings, load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_model(path: Path, backbone: str = "tinycnn", image_size: int = 64, version: str = "1", seed: int = 0,
               name: str = "test-detector", input_filter: str = "none", views: str | None = None,
               temperature: float | None = None) -> str:
    """A randomly initialised model directory (weights `none`), deterministic for a seed; `views` = native
    or resize records that view policy in the card (None: a card without one, scored as `resize`);
    `temperature` records a calibration with it (threshold and band unchanged)."""
    import torch

    from raydetect.models.backbones import build_backbone
    from raydetect.models.bundle import ModelCard, save_model
    from raydetect.models.views import ViewPolicy

    torch.manual_seed(seed)
    model = build_backbone(backbone, "none", input_filter=input_filter).eval()
    policy = ViewPolicy(mode=views, size=image_size).to_dict() if views else None
    card = ModelCard(backbone=backbone, name=name, version=version, image_size=image_size, threshold=0.5,
                     review_band=[0.45, 0.55], input_filter=input_filter, views=policy)
    if temperature is not None:
        card = card.calibrated({"temperature": temperature, "threshold": 0.5, "review_band": [0.45, 0.55],
                                "threshold_rule": "fixed"})
    return save_model(model, card, str(path))


def settings_for_tests(tmp: Path, **serve: Any) -> Settings:
    """Small limits so oversized bodies are cheap; one replica of each deployment; little CPU."""
    serve_section = {
        "max_body_bytes": 1_000_000,
        "max_batch_images": 4,
        "min_replicas": 1,
        "max_replicas": 1,
        "replica_num_cpus": 0.5,
        "ingress_num_cpus": 0.1,
        "torch_threads": 1,
        "audit_log": str(tmp / "audit.jsonl"),
        **serve,
    }
    return load_settings(overrides={"workdir": str(tmp / "work"), "device": "cpu",
                                    "images": {"max_pixels": 4_000_000}, "serve": serve_section})


@contextmanager
def serve_instance() -> Iterator[str]:
    """Serve's HTTP proxy on 127.0.0.1:<free port> (on the already running Ray); yields the base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def haproxy_binds(port: int) -> list[str]:
    """The running HAProxy processes (Serve's HAProxy ingress) whose configuration binds `port`: their
    `bind` lines. Read from /proc: the processes' command lines name their configuration files."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "haproxy":
                continue
            args = (entry / "cmdline").read_bytes().decode().split("\0")
            config = Path(args[args.index("-f") + 1]).read_text()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not one of Serve's
        found += [line.strip() for line in config.splitlines() if line.strip().startswith("bind ")
                  and line.strip().endswith(f":{port}")]
    return found


def deploy(settings: Settings, model_uri: str, name: str = "raydetect", route_prefix: str = "/") -> None:
    from ray import serve

    from raydetect.serve.app import build_app

    serve.run(build_app(settings, model_uri), name=name, route_prefix=route_prefix)


def wait_ready(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} never became healthy")


def photo(seed: int = 0, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """A smooth photo-like uint8 HxWx3 array of (width, height) `size`."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.uniform(0, 255, size=(height // 12 + 2, width // 12 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return (smooth + rng.normal(0, 6, smooth.shape)).clip(0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg_with_orientation(array: np.ndarray, orientation: int = 6) -> bytes:
    """A JPEG whose EXIF says 'rotate when showing' (6 = 90° clockwise)."""
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def direct_prediction(model_uri: str, data: bytes) -> tuple[float, str]:
    """What calling the model directly gives: safe decode -> the model's views -> Detector.predict_images."""
    from raydetect.data.images import decode_image
    from raydetect.models.bundle import Detector

    detector = Detector.load(model_uri, device="cpu")
    prob = detector.predict_image(decode_image(data))
    return prob, detector.card.decide(prob)


def ray_log_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path())


def wait_for_version(client, version: str, timeout_s: float = 180) -> dict:
    """Poll `/v1/model` (an httpx.Client with the app's base_url) until `version` answers; its JSON."""
    import httpx

    deadline, info = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            response = client.get("/v1/model")
            info = response.json() if response.status_code == 200 else {}
        except httpx.HTTPError:
            info = {}
        if info.get("version") == version:
            return info
        time.sleep(0.5)
    raise TimeoutError(f"model version {version} never answered (last: {info})")
