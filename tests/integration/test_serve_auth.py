"""API keys over real HTTP: off by default; with a key file or env var every /v1 route needs the Bearer key;
a missing or wrong key is 401; the key never reaches a log."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve_support import (
    encode,
    make_model,
    photo,
    ray_log_dir,
    serve_instance,
    settings_for_tests,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray]

V1 = [("GET", "/v1/model"), ("POST", "/v1/predict"), ("POST", "/v1/predict/batch"), ("POST", "/v1/explain")]


@pytest.fixture(scope="module")
def apps(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Three apps on one Serve instance: /open (no key), /file (key file), /env (key in the replica's env)."""
    from ray import serve

    from raydetect.serve.app import DetectorModel, IngressOptions, RayDetectAPI, build_app

    tmp = tmp_path_factory.mktemp("serve_auth")
    model = make_model(tmp / "model", "tinycnn", image_size=32)
    file_key, env_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    key_file = tmp / "api_key"
    key_file.write_text(file_key + "\n")
    open_settings = settings_for_tests(tmp / "open")
    file_settings = settings_for_tests(tmp / "file", api_key_file=str(key_file))
    env_settings = settings_for_tests(tmp / "env")
    with serve_instance() as url:
        serve.run(build_app(open_settings, model), name="open", route_prefix="/open")
        serve.run(build_app(file_settings, model), name="file", route_prefix="/file")
        # the env-var variant: RAYDETECT_API_KEY in the ingress replica's environment
        s = env_settings.serve
        model_app = DetectorModel.options(
            num_replicas=1, ray_actor_options={"num_cpus": s.replica_num_cpus}, user_config={"model_uri": model}
        ).bind(device="cpu", torch_threads=1)
        ingress = RayDetectAPI.options(
            ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": {"RAYDETECT_API_KEY": env_key}}}
        ).bind(model_app, IngressOptions.from_settings(env_settings))
        serve.run(ingress, name="env", route_prefix="/env")
        for prefix in ("/open", "/file", "/env"):
            wait_ready(url + prefix)
        with httpx.Client(base_url=url, timeout=60) as client:
            yield {"client": client, "file_key": file_key, "env_key": env_key, "tmp": tmp}


def _call(client: httpx.Client, method: str, path: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if method == "GET":
        return client.get(path, headers=headers)
    data = encode(photo(0, (40, 40)), "PNG")
    if path.endswith("/batch"):
        return client.post(path, files={"files": ("a.png", data, "image/png")}, headers=headers)
    return client.post(path, content=data, headers={**headers, "Content-Type": "image/png"})


def test_auth_off_by_default(apps):
    client = apps["client"]
    for method, path in V1:
        assert _call(client, method, "/open" + path).status_code == 200, path
    assert client.get("/open/v1/model").json()["auth"] == {"api_key": False}


@pytest.mark.parametrize("variant", ["file", "env"])
def test_every_v1_route_needs_the_key(apps, variant: str):
    client, key = apps["client"], apps[f"{variant}_key"]
    for method, path in V1:
        full = f"/{variant}{path}"
        missing = _call(client, method, full)
        assert missing.status_code == 401, full
        assert missing.json()["error"] == "unauthorized" and missing.headers["www-authenticate"] == "Bearer"
        assert _call(client, method, full, key="wrong-" + key).status_code == 401
        assert _call(client, method, full, key=key[:-1]).status_code == 401
        other = apps["env_key" if variant == "file" else "file_key"]
        assert _call(client, method, full, key=other).status_code == 401
        assert client.request(method, full, headers={"Authorization": f"Basic {key}"}).status_code == 401
        assert _call(client, method, full, key=key).status_code == 200, full
    # open routes stay open: health for load balancers, the page (it asks for the key), the docs
    for path in ("/healthz", "/", "/docs"):
        assert client.get(f"/{variant}{path}").status_code == 200
    assert client.get(f"/{variant}/v1/model", headers={"Authorization": f"Bearer {key}"}).json()["auth"] == {
        "api_key": True}


def test_keys_never_appear_in_logs_or_responses(apps):
    client, file_key = apps["client"], apps["file_key"]
    for method, path in V1:  # right and wrong keys, to give every log line a chance to leak it
        _call(client, method, "/file" + path, key=file_key)
        _call(client, method, "/file" + path, key=file_key + "x")
    body = client.get("/file/v1/model", headers={"Authorization": f"Bearer {file_key}"}).text
    assert file_key not in body
    audit = (apps["tmp"] / "file" / "audit.jsonl").read_text()
    assert '"unauthorized"' in audit and file_key not in audit
    leaks = []
    for path in Path(ray_log_dir()).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            try:
                if file_key.encode() in path.read_bytes():
                    leaks.append(str(path))
            except OSError:
                continue
    assert not leaks, leaks
