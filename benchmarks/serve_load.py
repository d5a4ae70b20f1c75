"""Bounded HTTP load test of the Serve app on 127.0.0.1: dynamic batching on vs off, and Serve's overhead.

The app is deployed once, the way `serve deploy serve_config.yaml` does it (one model replica). Batching
is switched on (`max_batch_size` N) and off (`max_batch_size` 1) through `user_config`, which reconfigures
the replica in place, so the two modes alternate over several rounds and share the machine's load
drift. Each round hits `/v1/predict` with the same JPEG at concurrency 1, 4 and 16 (a fixed number of
requests per level, with a time cap). Printed: p50 / p99 latency (pooled over rounds) and throughput
(median over rounds) per mode and level, the batching speed-up at the top level, and Serve's overhead:
the same image through the direct model call (decode + preprocess + forward, in this process, same thread
count as the replica) interleaved one-for-one with HTTP calls at concurrency 1, so both see the same load.
On a shared machine wall-clock figures move with the neighbours' load, so the CPU time each process spends
per request (load generator, Serve proxy, ingress, model replica, controller; from /proc) is printed too:
it does not depend on how busy the machine is. The overhead's breakdown comes from the ingress's
`Server-Timing` header: proxy + HTTP, the ingress's read/decode and the rest of its work, the handle call to
`@serve.batch` (with its batch wait), the coalescer's wait, the model, and the reply hop.
`--preprocess-on model` has the model replica decode the JPEG (`serve.preprocess_on`); `--topology fused` runs
the model inside the ingress replica (`serve.topology`: one process, no hop; its CPU shows under `model`),
which the default, `auto`, picks where the model replica gets no GPU; `--topology split` the two deployments.
The local cluster starts the way `raydetect serve` starts its own (`cluster.connect` with the settings): Serve's
HAProxy ingress and gRPC between deployments (`serve.haproxy`); `--no-haproxy` runs Serve's Python proxy actor
instead.

    .venv/bin/python benchmarks/serve_load.py                  # resnet18 (random weights), 224 px, 2 rounds,
                                                               # the model replica on all cores (--torch-threads)
    .venv/bin/python benchmarks/serve_load.py --model DIR --requests 128 --rounds 3 --json out.json

Figures depend on what else runs on the machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

CPU_COLUMNS = ("client", "proxy", "ingress", "model", "controller")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _test_jpeg(width: int = 256) -> bytes:
    from PIL import Image

    try:
        from skimage import data

        image = Image.fromarray(data.chelsea()).resize((width, int(width * 300 / 451)))
    except Exception:  # noqa: BLE001 - any photo-like image will do
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (width, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def _level(url: str, data: bytes, concurrency: int, requests: int, cap_s: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + cap_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                start = time.perf_counter()
                response = await client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "throughput_rps": len(latencies) / wall if wall else 0.0}


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """user + system CPU time of a process (Linux /proc), in seconds, with its child processes' when
    `children` (the HAProxy that Serve's HAProxyManager actor runs); 0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tasks = Path(f"/proc/{pid}/task").iterdir() if children else []
        kids = [int(k) for t in tasks for k in (t / "children").read_text().split()]
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(_cpu_seconds(k, True) for k in kids)


def _batch_stats(url: str) -> tuple[int, int]:
    """(forward passes, images) the model replica has run so far."""
    import httpx

    info = httpx.get(f"{url}/v1/model", timeout=30).json()
    return info["batches"], info["batched_images"]


def _serve_pids(url: str) -> dict[str, int]:
    """pids of the load generator (this process), Serve's proxy (the HAProxyManager actor under `serve.haproxy`,
    whose HAProxy child is counted with it) and controller, the ingress and the model."""
    import httpx
    import ray

    pids = {"client": os.getpid()}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and ("PROXY" in actor["name"] or "CONTROLLER" in actor["name"]):
            handle = ray.get_actor(actor["name"], namespace="serve")
            key = "proxy" if "PROXY" in actor["name"] else "controller"
            pids[key] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))
    info = httpx.get(f"{url}/v1/model", timeout=30).json()
    pids["model"] = info["pid"]
    if info["ingress"]["pid"] != info["pid"]:  # one process under `serve.topology: fused`: counted once, as model
        pids["ingress"] = info["ingress"]["pid"]
    return pids


def _paired_overhead(url: str, data: bytes, model_uri: str, threads: int, pairs: int, device: str) -> dict:
    """Direct call and HTTP call alternately, one after the other: the median difference is Serve's cost."""
    import httpx
    import torch

    from raydetect.data.images import decode_image
    from raydetect.models.bundle import Detector
    from raydetect.models.views import make_views

    torch.set_num_threads(threads)
    detector = Detector.load(model_uri, device=device)

    def direct() -> tuple[float, float]:
        start = time.perf_counter()
        views = make_views(decode_image(data), detector.policy)
        mid = time.perf_counter()
        detector.predict_images([views])
        end = time.perf_counter()
        return end - start, end - mid

    direct_ms, forward_ms, http_ms, stages = [], [], [], []
    with httpx.Client(base_url=url, timeout=300) as client:
        for i in range(pairs + 2):
            full, forward = direct()
            start = time.perf_counter()
            response = client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
            http = time.perf_counter() - start
            assert response.status_code == 200, response.text
            if i >= 2:  # the first pairs warm up
                direct_ms.append(1000 * full)
                forward_ms.append(1000 * forward)
                http_ms.append(1000 * http)
                stages.append({**_server_timing(response.headers.get("server-timing", "")),
                               "client->ingress->client": 1000 * http})
    diffs = [h - d for h, d in zip(http_ms, direct_ms, strict=True)]
    return {"direct_p50_ms": statistics.median(direct_ms), "forward_p50_ms": statistics.median(forward_ms),
            "http_p50_ms": statistics.median(http_ms), "overhead_p50_ms": statistics.median(diffs),
            "breakdown_p50_ms": _breakdown(stages)}


def _server_timing(header: str) -> dict[str, float]:
    """The ingress's `Server-Timing` header as {stage: ms}."""
    parts = (part.split(";dur=") for part in header.split(", ") if ";dur=" in part)
    return {name: float(ms) for name, ms in parts}


def _breakdown(stages: list[dict[str, float]]) -> dict[str, float]:
    """Median milliseconds per hop of a c=1 request (Server-Timing, nested): proxy and HTTP = the client's
    latency minus the ingress's time; the ingress's own = its time minus read/decode and the handle call; the
    handle hop = the call minus the time to the batch, the coalescer wait and the model."""
    if not stages or "ingress" not in stages[0]:
        return {}
    rows = [{
        "proxy + HTTP": t["client->ingress->client"] - t["ingress"],
        "ingress: auth + read + decode + views": t["read-decode"],
        "handle call -> @serve.batch (incl. batch wait)": t.get("to-batch", 0.0),
        "coalescer wait (model busy)": t.get("coalesce", 0.0),
        "model (decode if there, forward)": t["model"],
        "model -> ingress (reply hop)": t["handle"] - t.get("to-batch", 0.0) - t.get("coalesce", 0.0) - t["model"],
    } for t in stages]
    return {name: statistics.median(row[name] for row in rows) for name in rows[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: a random-weight --backbone saved to a temp dir)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--requests", type=int, default=64, help="requests per level and round (at least 4x c)")
    parser.add_argument("--rounds", type=int, default=2, help="batching on/off alternations")
    parser.add_argument("--cap-s", type=float, default=90.0, help="time cap per level")
    parser.add_argument("--pairs", type=int, default=30, help="direct/HTTP pairs for the overhead")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-s", type=float, default=0.0, help="batch_wait_timeout_s (the default: 0)")
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--preprocess-on", default="auto", choices=("auto", "ingress", "model"),
                        help="serve.preprocess_on: where JPEGs are decoded and cut into views")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch threads in the model replica (0: this machine's cores, as on a dedicated node)")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    parser.add_argument("--topology", default="auto", choices=("auto", "split", "fused"),
                        help="serve.topology: ingress and model deployments, or the model in the ingress replica")
    parser.add_argument("--no-haproxy", action="store_true",
                        help="serve.haproxy false: Serve's Python proxy actor and Ray actor calls between deployments "
                             "(the default is Serve's HAProxy ingress with gRPC between deployments)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    args.torch_threads = args.torch_threads or os.cpu_count() or 1

    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from raydetect.cluster import connect
    from raydetect.config import load_settings
    from raydetect.models.backbones import build_backbone
    from raydetect.models.bundle import ModelCard, save_model
    from raydetect.serve.app import model_deployment, serve_topology

    levels = [int(c) for c in args.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="raydetect-serve-load-"))
    model_uri = args.model
    if not model_uri:
        card = ModelCard(backbone=args.backbone, name=f"{args.backbone}-random", image_size=args.image_size)
        model_uri = save_model(build_backbone(args.backbone, "none").eval(), card, str(tmp / "model"))
    settings = load_settings(overrides={
        "device": args.device,
        "serve": {
            "min_replicas": 1, "max_replicas": 1, "replica_num_cpus": args.replica_cpus,
            "torch_threads": args.torch_threads, "max_ongoing_requests": max(32, 2 * args.max_batch_size),
            "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s,
            "audit_log": str(tmp / "audit.jsonl"), "preprocess_on": args.preprocess_on,
            "haproxy": not args.no_haproxy, "topology": args.topology,
        },
    })
    topology = serve_topology(settings)  # auto, resolved here: the deployment to configure is named by it
    settings.serve.topology = topology
    settings_file = tmp / "raydetect.yaml"
    settings_file.write_text(yaml.safe_dump(settings.model_dump()))
    data = _test_jpeg()
    load_before = os.getloadavg()[0]
    print(f"load average before: {load_before:.1f} (1 min) on {os.cpu_count()} cores; model {model_uri}; "
          f"{args.torch_threads} torch thread(s) in the model replica; "
          f"{'Serve proxy actor' if args.no_haproxy else 'HAProxy ingress + gRPC between deployments'}; "
          f"topology {topology}")

    def config(max_batch_size: int) -> ServeDeploySchema:
        user_config = {"model_uri": model_uri, "max_batch_size": max_batch_size,
                       "batch_wait_timeout_s": args.batch_wait_s}
        return ServeDeploySchema.model_validate({"applications": [{
            "name": "bench", "route_prefix": "/", "import_path": "raydetect.serve.app:app_builder",
            "args": {"config": str(settings_file), "model_uri": model_uri},
            "deployments": [{"name": model_deployment(topology), "user_config": user_config}],
        }]})

    connect("local", num_cpus=args.num_cpus, log_to_driver=False, settings=settings)  # Serve's environment too
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = _get_global_client()
    modes = {"batching": args.max_batch_size, "no_batching": 1}
    raw: dict[str, dict[int, list[dict]]] = {mode: {c: [] for c in levels} for mode in modes}
    overhead: dict[str, dict] = {}
    try:
        for round_index in range(args.rounds):
            for mode, max_batch_size in modes.items():
                client.deploy_apps(config(max_batch_size), _blocking=True)
                _wait_batch_size(url, max_batch_size)
                asyncio.run(_level(url, data, 4, 8, 60))  # warm-up
                pids = _serve_pids(url)
                for concurrency in levels:
                    cpu_before = {name: _cpu_seconds(pid, name == "proxy") for name, pid in pids.items()}
                    stats_before = _batch_stats(url)
                    row = asyncio.run(_level(url, data, concurrency, max(args.requests, 4 * concurrency), args.cap_s))
                    stats_after = _batch_stats(url)
                    batches = stats_after[0] - stats_before[0]
                    row["mean_batch_size"] = (stats_after[1] - stats_before[1]) / batches if batches else 0.0
                    served = max(1, len(row["latencies"]))
                    row["cpu_ms_per_request"] = {
                        name: 1000 * (_cpu_seconds(pid, name == "proxy") - cpu_before[name]) / served
                        for name, pid in pids.items()
                    }
                    raw[mode][concurrency].append(row)
                    errors = f" ({row['errors']} errors)" if row["errors"] else ""
                    print(f"round {round_index + 1} {mode:<12} c={concurrency:<3} n={len(row['latencies']):<4} "
                          f"p50 {1000 * _percentile(row['latencies'], 50):8.1f} ms  "
                          f"{row['throughput_rps']:7.2f} req/s  mean batch {row['mean_batch_size']:4.1f}{errors}",
                          flush=True)
                if round_index == 0:
                    overhead[mode] = _paired_overhead(url, data, model_uri, args.torch_threads, args.pairs,
                                                      args.device)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # the random model, settings file and audit log

    summary: dict = {"model_uri": model_uri, "load_before": load_before, "rounds": args.rounds, "levels": {},
                     "haproxy": not args.no_haproxy, "topology": topology}
    print()
    print(f"{'mode':<12} {'c':>3} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>8} {'batch':>5}   CPU ms per request: "
          + "  ".join(f"{name:>6}" for name in CPU_COLUMNS))
    for mode in modes:
        summary["levels"][mode] = []
        for concurrency in levels:
            rows = raw[mode][concurrency]
            latencies = [x for row in rows for x in row["latencies"]]
            cpu = {name: statistics.median(row["cpu_ms_per_request"][name] for row in rows)
                   for name in rows[0]["cpu_ms_per_request"]}
            entry = {"concurrency": concurrency, "requests": len(latencies),
                     "errors": sum(row["errors"] for row in rows),
                     "p50_ms": 1000 * _percentile(latencies, 50), "p99_ms": 1000 * _percentile(latencies, 99),
                     "throughput_rps": statistics.median(row["throughput_rps"] for row in rows),
                     "mean_batch_size": statistics.mean(row["mean_batch_size"] for row in rows),
                     "cpu_ms_per_request": cpu}
            summary["levels"][mode].append(entry)
            cpu_text = "  ".join(f"{cpu.get(name, 0):6.1f}" for name in CPU_COLUMNS)
            print(f"{mode:<12} {concurrency:>3} {entry['requests']:>5} {entry['p50_ms']:>9.1f} {entry['p99_ms']:>9.1f} "
                  f"{entry['throughput_rps']:>8.2f} {entry['mean_batch_size']:>5.1f}   {cpu_text}")
    top = max(levels)
    on = next(e for e in summary["levels"]["batching"] if e["concurrency"] == top)["throughput_rps"]
    off = next(e for e in summary["levels"]["no_batching"] if e["concurrency"] == top)["throughput_rps"]
    summary.update(batching_speedup=on / off if off else float("nan"), overhead=overhead,
                   load_after=os.getloadavg()[0])
    print()
    for mode, figures in overhead.items():
        print(f"Serve overhead ({mode}, c=1, {args.pairs} interleaved pairs): HTTP p50 {figures['http_p50_ms']:.1f} ms "
              f"vs direct call p50 {figures['direct_p50_ms']:.1f} ms (forward {figures['forward_p50_ms']:.1f} ms) "
              f"-> +{figures['overhead_p50_ms']:.1f} ms per request")
    for mode, figures in overhead.items():
        print(f"where a c=1 request's milliseconds go ({mode}, median of {args.pairs}; Server-Timing):")
        for name, ms in figures["breakdown_p50_ms"].items():
            print(f"  {name:<48} {ms:7.2f} ms")
    print(f"dynamic batching at c={top}: {on:.2f} vs {off:.2f} req/s = {summary['batching_speedup']:.2f}x "
          f"(target >= 1.5x)")
    print(f"load average after: {summary['load_after']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


def _wait_batch_size(url: str, max_batch_size: int, timeout_s: float = 120) -> None:
    """Until the replica reports the new max_batch_size (a user_config change is applied in place)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/model", timeout=10).json().get("max_batch_size") == max_batch_size:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the model replica never switched to max_batch_size={max_batch_size}")


if __name__ == "__main__":
    main()
