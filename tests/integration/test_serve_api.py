"""The serving API over real HTTP, on a real Serve app on the shared Ray cluster.

One app (tiny CNN with the NPR input filter and native-resolution tile views, auth off, 1 MB body limit)
serves every test in this file.
Reloading through `user_config` is tested with the config file in test_serve_config.py.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from raydetect.explain.reasons import verdict
from raydetect.models.bundle import resolved_precision
from tests.serve_support import (
    deploy,
    direct_prediction,
    encode,
    haproxy_binds,
    jpeg_with_orientation,
    make_model,
    photo,
    serve_instance,
    settings_for_tests,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("serve_api")
    model1 = make_model(tmp / "model1", "tinycnn", image_size=64, version="1", seed=1, input_filter="npr",
                        views="native", temperature=0.5)
    settings = settings_for_tests(tmp)
    with serve_instance() as url:
        deploy(settings, model1)
        wait_ready(url)
        with httpx.Client(base_url=url, timeout=60) as client:
            yield {"url": url, "client": client, "model1": model1, "settings": settings,
                   "audit": tmp / "audit.jsonl"}


def test_requests_reach_the_app_through_serves_haproxy_ingress(server):
    """`serve.haproxy` (the default): the shared cluster started with raydetect's Serve environment, so Serve's
    HAProxy, not the Python proxy actor, listens on the app's port (and only on the loopback, as asked)."""
    port = int(server["url"].rsplit(":", 1)[1])
    assert haproxy_binds(port) == [f"bind 127.0.0.1:{port}"]
    assert server["client"].get("/healthz").json()["status"] == "ok"


def _images() -> dict[str, bytes]:
    return {
        "photo.png": encode(photo(0, (96, 72)), "PNG"),
        "photo.jpg": encode(photo(1, (80, 120)), "JPEG", quality=90),
        "photo.webp": encode(photo(2, (64, 64)), "WEBP", quality=85),
        "rotated.jpg": jpeg_with_orientation(photo(3, (100, 60)), orientation=6),
        "small.png": encode(photo(4, (20, 30)), "PNG"),
    }


def test_predict_equals_direct_model_calls(server):
    client, model = server["client"], server["model1"]
    for name, data in _images().items():
        prob, decision = direct_prediction(model, data)
        raw = client.post("/v1/predict", content=data, headers={"Content-Type": "application/octet-stream"})
        multipart = client.post("/v1/predict", files={"file": (name, data, "image/png")})
        for response in (raw, multipart):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["prob_ai"] == pytest.approx(prob, abs=1e-5), name
            assert body["decision"] == decision
            assert body["threshold"] == 0.5
            assert (body["model_name"], body["model_version"]) == ("test-detector", "1")
            assert body["sha256"] == __import__("hashlib").sha256(data).hexdigest()
            assert body["latency_ms"] > 0 and body["request_id"]
        assert multipart.json()["filename"] == name
    rotated = client.post("/v1/predict", content=_images()["rotated.jpg"]).json()
    assert (rotated["width"], rotated["height"]) == (60, 100)  # EXIF orientation applied before scoring
    assert rotated["views"] == 2  # 60 x 100 under 64 px tiles: the 60 px side whole, two tiles down
    small = client.post("/v1/predict", content=_images()["small.png"]).json()
    assert (small["width"], small["height"], small["views"]) == (20, 30, 1)  # scored whole, never upscaled


def test_score_serve_and_evaluate_give_the_same_prob_for_the_same_file(server, tmp_path):
    """One preprocessing path: the same bytes through `raydetect score`, `/v1/predict` and `evaluate`."""
    import pandas as pd
    import yaml
    from typer.testing import CliRunner

    from raydetect.cli import app
    from raydetect.score import results

    client, model = server["client"], server["model1"]
    root = tmp_path / "data"
    (root / "train_data").mkdir(parents=True)
    sizes = [(64, 64), (150, 100), (200, 130), (40, 90)]  # 1 view, 3 x 2 tiles, 4 x 3 tiles, 1 x 2 (40 px whole)
    rows = []
    for i, size in enumerate(sizes):
        name = f"train_data/{i}.png"
        (root / name).write_bytes(encode(photo(10 + i, size), "PNG"))
        rows.append({"file_name": name, "label": i % 2})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), "device": "cpu",
                                      "score": {"min_actors": 1, "max_actors": 1}}))
    runner = CliRunner()
    scored = runner.invoke(app, ["score", str(root), "--model", model, "--output", str(tmp_path / "out"),
                                 "--run-id", "same", "--split", "train", "--config", str(config)])
    assert scored.exit_code == 0, scored.output
    evaluated = runner.invoke(app, ["evaluate", "--data", str(root), "--model", model, "--split", "train",
                                    "--output", str(tmp_path / "report.html"), "--config", str(config)])
    assert evaluated.exit_code == 0, evaluated.output
    by_score = results.read_rows(str(tmp_path / "out" / "run=same"))[0].set_index("file_name")
    by_evaluate = results.read_rows(str(tmp_path / "work" / "predictions" / "run=evaluate-1"))[0]
    by_evaluate = by_evaluate.set_index("file_name")
    for row in rows:
        data = (root / row["file_name"]).read_bytes()
        served = client.post("/v1/predict", content=data).json()
        batch = by_score.loc[row["file_name"]]
        assert served["prob_ai"] == pytest.approx(batch["prob_ai"], abs=1e-6)
        assert by_evaluate.loc[row["file_name"], "prob_ai"] == pytest.approx(batch["prob_ai"], abs=1e-6)
        assert (served["width"], served["height"], served["views"]) == (batch["width"], batch["height"],
                                                                      batch["views"])
    assert by_score["views"].tolist() == [1, 6, 12, 2]
    assert (tmp_path / "report.html").exists()
    # all three apply the card's temperature (0.5): P(AI) = sigmoid(logit / 0.5) of the raw aggregated logit
    from raydetect.data.images import decode_image
    from raydetect.models.bundle import Detector
    from raydetect.models.views import aggregate, make_views, sigmoid

    detector = Detector.load(model, device="cpu")
    views = make_views(decode_image((root / rows[1]["file_name"]).read_bytes()), detector.policy)
    raw = aggregate(detector.view_logits(views), detector.policy)
    assert by_score.loc[rows[1]["file_name"], "prob_ai"] == pytest.approx(float(sigmoid(raw / 0.5)), abs=1e-6)
    assert "alt='reliability diagram'" in (tmp_path / "report.html").read_text()


def test_batch_endpoint(server):
    client, model = server["client"], server["model1"]
    images = list(_images().items())[:3]
    files = [("files", (name, data, "application/octet-stream")) for name, data in images]
    files.append(("files", ("broken.jpg", images[1][1][:200], "image/jpeg")))
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 4 and body["errors"] == 1
    for item, (name, data) in zip(body["results"], images, strict=False):
        assert item["filename"] == name and item["error"] is None
        assert item["prob_ai"] == pytest.approx(direct_prediction(model, data)[0], abs=1e-5)
    assert body["results"][3]["error"].startswith("truncated") and body["results"][3]["prob_ai"] is None

    too_many = [("files", (f"{i}.png", images[0][1], "image/png")) for i in range(5)]  # limit is 4
    response = client.post("/v1/predict/batch", files=too_many)
    assert response.status_code == 400 and response.json()["error"] == "too_many_images"
    raw = client.post("/v1/predict/batch", content=images[0][1], headers={"Content-Type": "image/png"})
    assert raw.status_code == 415


def test_explain_returns_overlay_png_of_the_image_size(server):
    client, model = server["client"], server["model1"]
    data = _images()["photo.jpg"]  # 80 x 120
    response = client.post("/v1/explain", files={"file": ("photo.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    png = base64.b64decode(body["overlay_png_base64"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    overlay = Image.open(io.BytesIO(png))
    assert overlay.size == (80, 120) == (body["overlay_width"], body["overlay_height"])
    assert body["prob_ai"] == pytest.approx(direct_prediction(model, data)[0], abs=1e-5)
    assert body["reason"].startswith(verdict(body["prob_ai"], body["decision"]) + ": ") and "\n" not in body["reason"]
    assert body["method"] == "gradcam"


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_explain_by_lime_and_shap_maps_the_whole_image(server, method: str):
    client, model = server["client"], server["model1"]
    data = _images()["photo.png"]  # 96 x 72: 2 x 2 native tiles of 64 px
    response = client.post("/v1/explain", params={"method": method}, files={"file": ("photo.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == method and body["views"] == 4
    assert body["prob_ai"] == pytest.approx(direct_prediction(model, data)[0], abs=1e-5)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"]))).convert("RGB")
    assert overlay.size == (96, 72)
    heat = np.abs(np.asarray(overlay, np.int16) - np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16))
    assert heat.sum() > 0  # the attribution is drawn over the photo
    assert "P(AI)=" in body["reason"] and ("evidence for" in body["reason"] or "no localised" in body["reason"])
    again = client.post("/v1/explain", params={"method": method}, content=data).json()
    assert again["overlay_png_base64"] == body["overlay_png_base64"]  # seeded: the same explanation


def test_explain_refuses_an_unknown_method_with_a_4xx(server):
    client = server["client"]
    for method in ("occlusion", "", "LIME"):
        response = client.post("/v1/explain", params={"method": method}, content=_images()["photo.png"])
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "unknown_method" and "gradcam, lime, shap" in body["detail"] and body["request_id"]
    audit = [json.loads(line) for line in server["audit"].read_text().splitlines()]
    assert any(e.get("reason") == "unknown_method" and e["status"] == 422 for e in audit)


def test_concurrent_calls_are_batched_and_answered_like_single_calls(server):
    import asyncio

    client, model = server["client"], server["model1"]
    data = _images()["photo.png"]
    expected, _ = direct_prediction(model, data)
    before = client.get("/v1/model").json()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server["url"], timeout=60) as session:
            calls = [session.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
                     for _ in range(48)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert all(r.json()["prob_ai"] == pytest.approx(expected, abs=1e-5) for r in responses)
    after = client.get("/v1/model").json()
    images, passes = after["batched_images"] - before["batched_images"], after["batches"] - before["batches"]
    assert images == 48
    assert passes < 48, "48 concurrent calls were never merged into a forward pass"
    assert 1 < after["largest_batch"] <= after["max_batch_size"] == 16


def test_predict_says_where_its_milliseconds_went(server):
    """`Server-Timing`: the ingress's read + decode, the hop to the model's batch, the wait for the model, the
    model's own time and the whole handle call, nested as they happen."""
    response = server["client"].post("/v1/predict", content=_images()["photo.jpg"])
    assert response.status_code == 200
    parts = [part.split(";dur=") for part in response.headers["server-timing"].split(", ")]
    timing = {name: float(ms) for name, ms in parts}
    assert list(timing) == ["read-decode", "to-batch", "coalesce", "model", "handle", "ingress"]
    assert all(ms >= -1 for ms in timing.values()), timing  # -1: the replicas' clocks (one machine here)
    assert timing["model"] > 0 and timing["handle"] >= timing["model"]
    assert timing["handle"] >= timing["to-batch"] + timing["coalesce"] + timing["model"] - 2
    assert timing["ingress"] >= timing["read-decode"] + timing["handle"] - 1
    assert timing["ingress"] == pytest.approx(response.json()["latency_ms"], abs=1.0)


def test_jpegs_decoded_in_the_model_replica_answer_as_the_ingress_decodes_them(server, tmp_path):
    """`serve.preprocess_on: model`: the ingress sends a JPEG's bytes, the model replica decodes a batch of them
    and cuts the views (the GPU preprocessing path, here on CPU): the same answers as the ingress path, other
    formats and rotated JPEGs still decoded by the ingress, a bad JPEG the same 4xx."""
    import asyncio

    client, url = server["client"], server["url"]
    deploy(settings_for_tests(tmp_path, preprocess_on="model"), server["model1"], name="model-decode",
           route_prefix="/model-decode")  # fmt: skip
    wait_ready(f"{url}/model-decode")
    try:
        assert client.get("/model-decode/v1/model").json()["preprocess_on"] == "model"
        assert client.get("/v1/model").json()["preprocess_on"] == "ingress"  # auto, no GPU
        grey = encode(photo(6, (150, 200)).mean(axis=2).astype(np.uint8), "JPEG", quality=80)
        images = {**_images(), "large.jpg": encode(photo(5, (333, 517)), "JPEG", quality=85), "grey.jpg": grey,
                  "small.jpg": encode(photo(7, (20, 30)), "JPEG")}  # fmt: skip
        for name, data in images.items():
            ingress = client.post("/v1/predict", content=data)
            model = client.post("/model-decode/v1/predict", content=data)
            assert ingress.status_code == model.status_code == 200, (name, model.text)
            a, b = ingress.json(), model.json()
            # native views: the same boxes; the two JPEG decoders may differ by a grey level on some CPUs
            assert b["prob_ai"] == pytest.approx(a["prob_ai"], abs=1e-5), name
            assert [b[k] for k in ("decision", "width", "height", "views")] == [a[k] for k in
                                                                              ("decision", "width", "height", "views")]
        decoded = client.get("/model-decode/v1/model").json()["jpegs_decoded"]
        assert decoded == 4  # photo, large, grey, small; not the PNG, the WebP or the rotated JPEG (EXIF)

        async def burst() -> list[httpx.Response]:  # concurrent JPEGs: decoded in batches, answered one by one
            async with httpx.AsyncClient(base_url=url, timeout=60) as session:
                names = ["photo.jpg", "large.jpg", "grey.jpg"] * 6
                calls = [session.post("/model-decode/v1/predict", content=images[n]) for n in names]
                return list(zip(names, await asyncio.gather(*calls), strict=True))

        expected = {n: client.post("/v1/predict", content=images[n]).json()["prob_ai"] for n in images}
        for name, response in asyncio.run(burst()):
            assert response.json()["prob_ai"] == pytest.approx(expected[name], abs=1e-5)
        batch = client.post("/model-decode/v1/predict/batch", files=[("files", (n, images[n], "image/jpeg"))
                                                                     for n in ("photo.jpg", "photo.png")])
        assert [r["prob_ai"] for r in batch.json()["results"]] == pytest.approx(
            [expected["photo.jpg"], expected["photo.png"]], abs=1e-5)

        whole = images["large.jpg"]
        cut = whole[: len(whole) // 2]  # a valid header, half the scan: it fails in the model replica
        answers = [client.post(prefix + "/v1/predict", content=cut) for prefix in ("", "/model-decode")]
        assert [r.status_code for r in answers] == [422, 422], [r.text for r in answers]
        assert [r.json()["error"] for r in answers] == ["truncated", "truncated"]
        assert client.get("/model-decode/v1/model").json()["jpegs_decoded"] > decoded + 18
    finally:
        from ray import serve

        serve.delete("model-decode")


def test_model_info_health_docs_and_page(server):
    client = server["client"]
    info = client.get("/v1/model").json()
    assert info["version"] == "1" and info["backbone"] == "tinycnn" and info["image_size"] == 64
    assert info["views"]["mode"] == "native" and info["views"]["size"] == 64
    assert info["input_filter"] == "npr"
    assert info["temperature"] == 0.5 and info["calibration"]["threshold_rule"] == "fixed"
    assert info["precision"] == resolved_precision("cpu", "auto")  # bf16 where this CPU has it natively, else fp32
    assert info["max_batch_size"] == 16 and info["auth"] == {"api_key": False}
    assert info["limits"]["max_body_bytes"] == 1_000_000
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/predict/batch", "/v1/explain", "/v1/model", "/healthz"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "v1/explain" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing external


def test_audit_log_has_one_line_per_prediction_and_no_image_bytes(server):
    client, audit = server["client"], server["audit"]
    before = audit.read_text().splitlines() if audit.exists() else []
    data = _images()["photo.png"]
    response = client.post("/v1/predict", content=data, headers={"X-Forwarded-For": "203.0.113.7"})
    assert response.status_code == 200
    lines = audit.read_text().splitlines()[len(before):]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "predict" and record["request_id"] == response.json()["request_id"]
    assert record["sha256"] == response.json()["sha256"]
    # the raw header is kept apart; `client` is the proxy's view (uvicorn trusts X-Forwarded-For only from
    # 127.0.0.1, which is where this test connects from)
    assert record["forwarded_for"] == "203.0.113.7" and record["client"] in {"127.0.0.1", "203.0.113.7"}
    assert record["model_version"] == "1" and record["decision"] == response.json()["decision"]
    assert {"time", "prob_ai", "latency_ms"} <= set(record)
    text = audit.read_text()
    assert base64.b64encode(data[:48]).decode() not in text and "PNG" not in text


# --- fuzzing: malformed bodies must all be 4xx, never 5xx ----------------------------------------------


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(photo(5, (32, 32)), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _fuzz_cases() -> list[tuple[str, str, dict, object]]:
    """(label, path, headers, body) tuples; every body is invalid by construction."""
    rng = random.Random(7)
    good_png = encode(photo(6, (64, 48)), "PNG")
    good = {"JPEG": encode(photo(6, (64, 48)), "JPEG", quality=90), "PNG": good_png,
            "WEBP": encode(photo(6, (64, 48)), "WEBP", quality=80)}
    raw = {"Content-Type": "application/octet-stream"}
    cases: list[tuple[str, str, dict, object]] = []
    for i in range(40):
        cases.append((f"random{i}", "/v1/predict", raw, rng.randbytes(rng.randint(1, 4000))))
    magics = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x10\x00\x00\x00WEBP", b"GIF89a", b"BM", b"II*\x00"]
    for i in range(36):
        cases.append((f"magic{i}", "/v1/predict", {"Content-Type": "image/png"},
                      magics[i % len(magics)] + rng.randbytes(rng.randint(0, 3000))))
    for fmt, data in good.items():
        for k, frac in enumerate(np.linspace(0.03, 0.92, 24 if fmt != "WEBP" else 10)):
            cases.append((f"truncated-{fmt}-{k}", "/v1/predict", raw, data[: int(len(data) * frac)]))
    for w, h in [(100_000, 100_000), (65_535, 65_535), (50_000, 100), (2_001, 2_001), (1, 10_000_000)]:
        cases.append((f"png-claims-{w}x{h}", "/v1/predict", raw, _png_claiming(w, h)))
        cases.append((f"png-claims-{w}x{h}-explain", "/v1/explain", raw, _png_claiming(w, h)))
    for w, h in [(65_000, 65_000), (30_000, 2_000)]:
        cases.append((f"jpeg-claims-{w}x{h}", "/v1/predict", raw, _jpeg_claiming(w, h)))
    for w, h in [(16_383, 16_383), (16_000, 300)]:
        cases.append((f"webp-claims-{w}x{h}", "/v1/predict", raw, _webp_claiming(w, h)))
    bomb = encode(np.zeros((2_100, 2_100, 3), dtype=np.uint8), "PNG")  # 4.4 MP, over the 4 MP test cap
    cases.append(("real-bomb", "/v1/predict", raw, bomb))
    cases.append(("real-bomb-explain", "/v1/explain", raw, bomb))
    other_formats = {"GIF": {}, "BMP": {}, "TIFF": {}, "ICO": {}, "PPM": {}}
    for fmt, params in other_formats.items():
        cases.append((f"format-{fmt}", "/v1/predict", raw, encode(photo(7, (32, 32)), fmt, **params)))
    wrong_types = ["text/plain", "application/json", "text/html", "application/x-www-form-urlencoded",
                   "application/xml", "video/mp4", "audio/mpeg", "application/pdf"]
    for ctype in wrong_types:
        for path in ("/v1/predict", "/v1/explain", "/v1/predict/batch"):
            cases.append((f"ctype-{ctype}-{path}", path, {"Content-Type": ctype}, good_png))
    for ctype in ("image/png", "application/octet-stream", "image/jpeg", "multipart/form-data; boundary=x"):
        cases.append((f"empty-{ctype}", "/v1/predict", {"Content-Type": ctype}, b""))
        cases.append((f"empty-{ctype}-explain", "/v1/explain", {"Content-Type": ctype}, b""))
    cases.append(("empty-no-ctype", "/v1/predict", {}, b""))
    multipart_bad = [
        ("multipart/form-data", good_png),  # no boundary
        ("multipart/form-data; boundary=zzz", good_png),  # boundary never appears
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nhi\r\n"
         b"--zzz--\r\n"),  # a text field, no file
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; "
         b"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n\r\n--zzz--\r\n"),  # an empty file
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; "
         b"filename=\"x.png\"\r\n\r\n" + good_png[:300] + b"\r\n--zzz--\r\n"),  # a truncated file
        ("multipart/form-data; boundary=zzz", b"--zzz\r\ngarbage\r\n\r\n--zzz--"),
        ("multipart/form-data; boundary=zzz", rng.randbytes(500)),
    ]
    for i, (ctype, body) in enumerate(multipart_bad):
        for path in ("/v1/predict", "/v1/predict/batch"):
            cases.append((f"multipart{i}-{path}", path, {"Content-Type": ctype}, body))
    two = b"".join(
        b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%d.png\"\r\n\r\n" % i + good_png + b"\r\n"
        for i in range(2)
    ) + b"--zzz--\r\n"
    cases.append(("two-files-on-single", "/v1/predict", {"Content-Type": "multipart/form-data; boundary=zzz"}, two))
    oversized = [good_png + rng.randbytes(1_000_001), rng.randbytes(1_500_000), b"\xff\xd8\xff" + bytes(1_200_000)]
    for i, body in enumerate(oversized):
        cases.append((f"oversized{i}", "/v1/predict", raw, body))
    cases.append(("oversized-explain", "/v1/explain", raw, oversized[1]))

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for _ in range(30):
            yield bytes(64 * 1024)

    cases.append(("oversized-chunked", "/v1/predict", raw, chunked))
    return cases


def test_fuzz_malformed_bodies_get_4xx_never_5xx(server):
    client = server["client"]
    cases = _fuzz_cases()
    assert len(cases) >= 200
    failures = []
    reasons: dict[str, int] = {}
    for label, path, headers, body in cases:
        content = body() if callable(body) else body
        response = client.post(path, content=content, headers=headers)
        ok = 400 <= response.status_code < 500
        try:
            payload = response.json()
        except ValueError:
            payload, ok = {}, False
        ok = ok and "error" in payload and "detail" in payload
        if not ok:
            failures.append((label, response.status_code, response.text[:200]))
        reasons[payload.get("error", "?")] = reasons.get(payload.get("error", "?"), 0) + 1
    assert not failures, failures
    assert {"truncated", "unsupported_format", "too_many_pixels", "too_large", "unsupported_media_type", "empty",
            "bad_multipart", "no_file", "no_valid_images"} <= set(reasons), reasons
    # and the server is still fine afterwards
    assert client.post("/v1/predict", content=_images()["photo.png"]).status_code == 200


def test_mutated_images_never_give_5xx(server):
    """Bit flips inside valid images may still decode (200) or not (4xx); never a server error."""
    client = server["client"]
    rng = random.Random(11)
    statuses = []
    for i in range(30):
        data = bytearray(list(_images().values())[i % 4])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(20, len(data))] = rng.randrange(256)
        statuses.append(client.post("/v1/predict", content=bytes(data)).status_code)
    assert all(s == 200 or 400 <= s < 500 for s in statuses), statuses
