"""Batch-scoring throughput: the Ray Data pipeline against a plain PyTorch loop, same images, same model.

    .venv/bin/python benchmarks/score_throughput.py [--n 5000] [--backbone resnet18] [--set precision=fp32]
        [--precisions fp32,bf16,fp16] [--json out.json]

The model is the configured default (`train.backbone` with `train.input_filter`: EfficientNet-Lite0 with the
NPR filter) unless `--backbone` / `--input-filter` say otherwise; the run's precision is `precision` of the
settings (`auto` unless `--set precision=...`), resolved on this machine. In one run it measures
  (a) a plain single-process loop at the run's precision: read + decode + preprocess + forward, at the best
      torch thread count (probed first); measured before and after (c) to show drift when the machine is shared;
  (b) the model alone on preloaded tensors (the compute limit), for each of `--precisions` (default: fp32 and
      what `auto` resolves to here) in interleaved rounds on the first `--model-only-images` images, the median
      round reported, with each precision's speed-up over fp32; then on one thread: the ceiling of any pipeline
      is the faster of the model on all cores in one process and one single-threaded model per core, and
      ceiling / (a) is the most a pipeline's steady state can gain over the plain loop on this machine;
  (c) `raydetect.score.pipeline.score_run` end to end (listing → Parquet + `_SUCCESS`, actor start-up
      included; Ray's own start-up excluded) and in steady state (rows scored between the first and the last
      model batch, from the rows' `scored_at`),
  (a') the plain loop as a process of its own, timed from outside (interpreter, imports, model load, the loop, a
      Parquet of path and P(AI)): what a person runs without Ray;
  (d) `raydetect score` as its own process, starting and stopping its local Ray cluster, and (d') the same
      joining a cluster that is already running (`ray start --head`, as an operator keeps one for nightly
      jobs): the issue's goal is (d) / (a') on whole processes,
and prints images/s for each and the ratios (c)/(a), (c)/(b) (b at the run's precision), (d)/(a') and
(d')/(a'). It also prints the CPU time each spends per image (the pipeline's counts every process of its local
Ray cluster, start-up included): on a machine shared with other work, throughput follows the share of CPU each
gets, while CPU per image depends on it much less.
Images: N photo-like JPEGs (q90) of `--side` px, with fine noise so decoding costs what a photo costs; model:
an untrained backbone (weights `none`; throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, side: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.jpg"
        if not path.exists():
            coarse = rng.uniform(0, 255, size=(side // 16 + 1, side // 16 + 1, 3)).astype(np.uint8)
            smooth = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC))
            photo = smooth.astype(np.int16) + rng.integers(-12, 13, size=(side, side, 3))
            Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def plain_loop(paths: list[Path], detector, batch_size: int, keep: list | None = None, keep_images: int = 0,
               forward: int | None = None, probs: list | None = None) -> float:
    """images/s of read + decode + views (the model's view policy) + forward in this process, `batch_size`
    images at a time in forward passes of `forward` views (None: the detector's `forward_batch`), as the
    scoring actors run them
    (the first `keep_images` images' normalised views are appended to `keep`; P(AI) per image to `probs`)."""
    from raydetect.data.images import decode_image
    from raydetect.models.views import make_views, normalize

    card = detector.card
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        views = [make_views(decode_image(p.read_bytes()), detector.policy) for p in paths[i : i + batch_size]]
        prob = detector.predict_images(views, forward)
        if probs is not None:
            probs.extend(np.asarray(prob).tolist())
        if keep is not None and i < keep_images:
            keep.append(normalize(np.concatenate(views), card.mean, card.std).numpy())
    return len(paths) / (time.perf_counter() - start)


def plain_process(argv: list[str]) -> None:
    """`score_throughput.py --plain-process IMAGES MODEL OUT.parquet THREADS FORWARD BATCH`: the plain loop as a
    person would run it without Ray, a process of its own: imports, model load, the loop, a Parquet of
    (path, prob_ai). What (a') times from outside, as (d) times `raydetect score`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from raydetect.config import load_settings
    from raydetect.models.bundle import load_detector

    images, model, out, threads, forward, batch = argv
    torch.set_num_threads(int(threads))
    detector = load_detector(model, device="cpu", precision=load_settings().precision)
    paths = sorted(Path(images).glob("*.jpg"))
    probs: list[float] = []
    plain_loop(paths, detector, int(batch), forward=int(forward), probs=probs)
    pq.write_table(pa.table({"path": [str(p) for p in paths], "prob_ai": probs}), out)


def timed_process(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of `command` as its own process (output discarded; a failure raises)."""
    import subprocess

    env = env if env is not None else {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def model_only(batches: list[np.ndarray], detector, size: int | None = None) -> float:
    """images/s of the forward pass alone over preloaded normalised views, in passes of `size` views (None:
    the detector's `forward_batch`)."""
    import torch

    images = np.concatenate(batches)
    size = size or detector.forward_batch
    tensors = [torch.from_numpy(images[i : i + size]) for i in range(0, len(images), size)]
    start = time.perf_counter()
    for tensor in tensors:
        detector.predict(tensor)
    return sum(len(t) for t in tensors) / (time.perf_counter() - start)


def model_only_per_precision(batches: list[np.ndarray], detectors: dict, rounds: int, size: int | None = None
                             ) -> dict[str, list[float]]:  # fmt: skip
    """images/s of each detector (one per precision) over `batches`, in `rounds` interleaved rounds (a shared
    machine's load then hits every precision alike), after one warm-up batch each."""
    for detector in detectors.values():
        detector.predict(batches[0])
    figures: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(rounds):
        for name, detector in detectors.items():
            figures[name].append(model_only(batches, detector, size))
    return figures


def batch_size_study(batches: list[np.ndarray], detector, sizes: str) -> dict[int, float]:
    """images/s of the model alone over the same images re-cut into batches of each size (one round each)."""
    figures = {}
    for size in (int(x) for x in sizes.split(",") if x.strip()):
        detector.predict(batches[0][:size])  # warm-up at this shape
        figures[size] = model_only(batches, detector, size)
    return figures


def cli_score(work: Path, model_uri: str, args, address: str | None = None) -> tuple[float, float]:
    """images/s and wall seconds of `raydetect score IMAGES --model M` as its own process (what a nightly
    job runs: interpreter and imports, the pipeline, the Parquet; Ray's start-up and shutdown too unless
    `address` names a running cluster to join)."""
    import sys

    command = [sys.executable, "-m", "raydetect.cli", "score", str(work / "images"), "--model", model_uri,
               "-o", str(work / "out_cli"), "--run-id", f"cli{int(time.time())}", "--batch-size",
               str(args.batch_size)]  # fmt: skip
    if address:
        command += ["--ray-address", address]
    for item in args.overrides:
        command += ["--set", item]
    wall = timed_process(command)
    return args.n / wall, wall


@contextlib.contextmanager
def running_cluster(cores: int):
    """A local Ray cluster started by `ray start --head --block` in its own process (as an operator keeps one
    running for nightly jobs); yields its address, and stops it (SIGTERM to the blocking `ray start`).

    Token auth, as Ray starts local clusters: a driver given an explicit address sends the token only with
    RAY_AUTH_MODE=token, so the variable is set (unless already) in this process, for the processes it starts."""

    from raydetect.cluster import environment

    with environment({"RAY_AUTH_MODE": "token"}), _head(cores) as address:
        yield address


@contextlib.contextmanager
def _head(cores: int):
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cores}",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not _cluster_up(address):
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"`ray start --head` did not come up at {address}")
            time.sleep(1)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        # `ray start` leaves its address in /tmp/ray/ray_current_cluster, where a later plain `ray.init()` would
        # try to join the stopped cluster (`ray stop` removes it, but also stops every other cluster here)
        marker = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if marker.is_file() and marker.read_text().strip().endswith(f":{port}"):
            marker.unlink()


def _cluster_up(address: str) -> bool:
    import subprocess
    import sys

    probe = [sys.executable, "-c", f"from raydetect.cluster import connect; connect({address!r})"]
    return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


def precisions_to_measure(text: str | None, run_precision: str, device: str = "cpu") -> list[str]:
    """`fp32,auto` (default) -> resolved, de-duplicated precisions: fp32 first, the run's among them."""
    from raydetect.models.precision import resolve_precision

    names = [resolve_precision(p.strip(), device) for p in (text or "fp32,auto").split(",") if p.strip()]
    return list(dict.fromkeys(["fp32", *names, run_precision]))


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds (user + system, reaped children included) of a process and all its descendants, from
    /proc (Linux; NaN elsewhere). A local Ray cluster started by this process is its descendants."""
    root = os.getpid() if root is None else root
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    rest = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            stats[int(entry)] = (int(rest[1]), sum(int(v) for v in rest[11:15]) / tick)
    except (OSError, ValueError, AttributeError):
        return float("nan")
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


def steady_state(rows) -> float:
    """Rows per second between the first and the last model batch (from `scored_at`)."""
    stamps = rows.groupby("scored_at").size().sort_index()
    if len(stamps) < 2:
        return float("nan")
    span = (stamps.index[-1] - stamps.index[0]).total_seconds()
    return float(stamps.iloc[1:].sum() / span) if span > 0 else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--side", type=int, default=256, help="image side in px")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default=None, help="default: train.backbone of the settings")
    parser.add_argument("--input-filter", default=None, help="none | npr; default: train.input_filter")
    parser.add_argument("--precisions", default=None, help="model-only precisions (default: fp32,auto)")
    parser.add_argument("--model-only-images", type=int, default=1024, help="images per model-only round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved model-only rounds")
    parser.add_argument(
        "--views", default="native", choices=["native", "resize"],
        help="the model card's view policy: native tiles (default) or the legacy resize + centre crop",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-sizes", default="8,16,32,64",
                        help="(b') the model alone at the run's precision per batch size ('' skips it)")
    parser.add_argument("--no-cli", action="store_true", help="skip (d), `raydetect score` as its own process")
    parser.add_argument("--actors", default=None, help="MIN:MAX model actors (default: the config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--workdir", default=None, help="keep images here (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import ray
    import torch

    from raydetect.cluster import connect
    from raydetect.config import load_settings
    from raydetect.models.backbones import build_backbone
    from raydetect.models.bundle import Detector, ModelCard, resolved_precision, save_model
    from raydetect.models.views import ViewPolicy, view_boxes
    from raydetect.score import results
    from raydetect.score.pipeline import score_run

    settings = load_settings(overrides=args.overrides)  # first: a bad override fails before minutes of work
    backbone = args.backbone or settings.train.backbone
    input_filter = args.input_filter or settings.train.input_filter
    precision = resolved_precision("cpu", settings.precision)  # of (a) and (c)
    precisions = precisions_to_measure(args.precisions, precision)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="score-bench-"))
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    paths = make_images(work / "images", args.n, args.side)
    torch.manual_seed(0)
    card = ModelCard(
        backbone=backbone, name=f"bench-{backbone}", version="0", image_size=args.image_size,
        input_filter=input_filter, views=ViewPolicy(mode=args.views, size=args.image_size).to_dict(),
    )  # fmt: skip
    model_uri = save_model(build_backbone(backbone, "none", input_filter), card, str(work / "model"))
    detector = Detector.load(model_uri, device="cpu", precision=precision)
    tiles = len(view_boxes(args.side, args.side, detector.policy))
    out: dict = {"n": args.n, "side": args.side, "image_size": args.image_size, "backbone": backbone,
                 "input_filter": input_filter, "views": detector.policy.to_dict(), "views_per_image": tiles,
                 "batch_size": args.batch_size, "cores": cores, "torch": torch.__version__,
                 "precision": precision}  # fmt: skip

    # (a) plain loop, best thread count (probed on a slice), warm-up included in the probe
    probe = paths[: min(len(paths), 4 * args.batch_size)]
    plain_loop(probe[: args.batch_size], detector, args.batch_size)  # warm-up (kernels, caches)
    trials = {}
    for threads in sorted({1, max(1, cores // 2), cores}):
        torch.set_num_threads(threads)
        trials[threads] = plain_loop(probe, detector, args.batch_size)
    best = max(trials, key=trials.get)
    torch.set_num_threads(best)
    batches: list[np.ndarray] = []
    out["plain_threads_probe"] = {str(k): round(v, 2) for k, v in trials.items()}
    out["plain_threads"] = best
    cpu = tree_cpu_seconds()
    out["forward_batch"] = forward = settings.score.forward_batch or detector.forward_batch  # as the actors
    out["a_plain_loop"] = plain_loop(paths, detector, args.batch_size, keep=batches, keep_images=args.model_only_images,
                                     forward=forward)  # fmt: skip
    out["a_cpu_ms_per_image"] = 1000 * (tree_cpu_seconds() - cpu) / args.n
    # (b) model only on preloaded tensors, per precision (interleaved rounds), then at the run's precision
    rounds = model_only_per_precision(
        batches, {p: Detector(detector.model, card, torch.device("cpu"), precision=p) for p in precisions}, args.rounds,
        forward,
    )
    out["b_model_only_rounds"] = {p: [round(v, 2) for v in r] for p, r in rounds.items()}
    out["b_model_only_per_precision"] = {p: float(np.median(r)) for p, r in rounds.items()}
    out["b_speedup_over_fp32"] = {p: v / out["b_model_only_per_precision"]["fp32"]
                                  for p, v in out["b_model_only_per_precision"].items()}  # fmt: skip
    per_precision = [
        f"(b) model only, {p:4s}, median of {args.rounds} {v:8.1f} img/s  ({out['b_speedup_over_fp32'][p]:.2f}x fp32;"
        f" rounds {out['b_model_only_rounds'][p]})"
        for p, v in out["b_model_only_per_precision"].items()
    ]
    print("\n".join(per_precision), flush=True)  # now: the pipeline below takes minutes
    images_b = sum(len(b) for b in batches)
    cpu = tree_cpu_seconds()
    out["b_model_only"] = model_only(batches, detector, forward)
    out["b_cpu_ms_per_image"] = 1000 * (tree_cpu_seconds() - cpu) / images_b
    # the ceiling of any pipeline on these cores: the model alone on all of them in one process, or one
    # single-threaded model per core (what the pipeline's 1-thread actors are), whichever is faster
    torch.set_num_threads(1)
    out["b_model_only_one_thread"] = model_only(batches, detector, forward)
    torch.set_num_threads(best)
    out["b_ceiling"] = max(out["b_model_only"], cores * out["b_model_only_one_thread"])
    out["b_model_only_per_batch_size"] = batch_size_study(batches, detector, args.batch_sizes)
    for size, rate in out["b_model_only_per_batch_size"].items():
        print(f"(b') model only, {precision}, batch {size:>3}      {rate:8.1f} img/s", flush=True)
    del batches

    # (c) the Ray Data pipeline (its own local cluster of this machine's cores)
    os.environ.pop("RAY_ADDRESS", None)
    connect("local", num_cpus=cores, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        start, cpu = time.perf_counter(), tree_cpu_seconds()
        manifest = score_run(
            str(work / "images"), model_uri, str(work / "out"), f"bench{int(time.time())}",
            batch_size=args.batch_size, actors=args.actors, settings=settings, split="folder",
        )  # fmt: skip
        out["c_pipeline_end_to_end"] = manifest["counts"]["rows"] / (time.perf_counter() - start)
        out["c_cpu_ms_per_image"] = 1000 * (tree_cpu_seconds() - cpu) / args.n  # driver + the whole local cluster
        rows, _ = results.read_rows(manifest["output"], ["scored_at"])
        out["c_pipeline_steady_state"] = steady_state(rows)
        out["pipeline"] = {k: manifest[k] for k in ("actors", "batch_size", "elapsed_s", "pipeline_s", "precision")}
        out["pipeline"]["settings"] = settings.score.model_dump()
        assert manifest["counts"]["rows"] == args.n and manifest["counts"]["errors"] == 0
    finally:
        ray.shutdown()

    if not args.no_cli:  # whole processes, timed from outside: what a user runs
        import sys

        # (a') the plain loop as a process of its own (imports, model load, loop, Parquet)
        plain_command = [sys.executable, __file__, "--plain-process", str(work / "images"), model_uri,
                         str(work / "plain.parquet"), str(best), str(forward), str(args.batch_size)]  # fmt: skip
        out["a_process_wall_s"] = timed_process(plain_command)
        out["a_process"] = args.n / out["a_process_wall_s"]
        # (d) `raydetect score` starting (and stopping) its own local cluster, then (d') joining a running one
        out["d_cli_whole_process"], out["d_cli_wall_s"] = cli_score(work, model_uri, args)
        with running_cluster(cores) as address:
            out["d_joined_whole_process"], out["d_joined_wall_s"] = cli_score(work, model_uri, args, address)
    torch.set_num_threads(best)
    out["a_plain_loop_after"] = plain_loop(paths, detector, args.batch_size, forward=forward)
    plain = (out["a_plain_loop"] + out["a_plain_loop_after"]) / 2
    out["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    # CPU time per image: what each way costs, whatever share of a shared machine it happened to get.
    out["ratio_cpu_cost_plain_vs_pipeline"] = out["a_cpu_ms_per_image"] / out["c_cpu_ms_per_image"]
    out["ratio_steady_vs_plain"] = out["c_pipeline_steady_state"] / plain
    out["ratio_end_to_end_vs_plain"] = out["c_pipeline_end_to_end"] / plain
    out["ratio_steady_vs_model_only"] = out["c_pipeline_steady_state"] / out["b_model_only"]
    out["ratio_end_to_end_vs_model_only"] = out["c_pipeline_end_to_end"] / out["b_model_only"]
    out["ratio_cli_vs_plain"] = out.get("d_cli_whole_process", float("nan")) / plain
    nan = float("nan")
    out["ratio_cli_vs_plain_process"] = out.get("d_cli_whole_process", nan) / out.get("a_process", nan)
    out["ratio_joined_vs_plain_process"] = out.get("d_joined_whole_process", nan) / out.get("a_process", nan)
    out["ratio_ceiling_vs_plain"] = out["b_ceiling"] / plain

    lines = [
        f"{args.n} JPEGs {args.side}px, {tiles} {args.views} view(s) of {args.image_size}px per image "
        f"(img/s x {tiles} = views/s), {backbone} + {input_filter} filter (untrained), "
        f"batch {args.batch_size} (forward passes of {forward} views), {cores} cores, "
        f"precision {precision} (setting {settings.precision}), "
        f"load average before/after {out['load_average_before_after']}",
        f"(a) plain loop, {best} thread(s)        {out['a_plain_loop']:8.1f} img/s"
        f"  (again after (c): {out['a_plain_loop_after']:.1f}); CPU {out['a_cpu_ms_per_image']:.1f} ms/image",
        *per_precision,
        f"(b) model only, {precision:4s}, once         {out['b_model_only']:8.1f} img/s"
        f"  CPU {out['b_cpu_ms_per_image']:.1f} ms/image",
        f"(b) model only, {precision:4s}, 1 thread     {out['b_model_only_one_thread']:8.1f} img/s"
        f"  (x {cores} cores = {cores * out['b_model_only_one_thread']:.1f})",
        f"(c) Ray Data pipeline, steady state   {out['c_pipeline_steady_state']:8.1f} img/s",
        f"(c) Ray Data pipeline, end to end     {out['c_pipeline_end_to_end']:8.1f} img/s"
        f"  (actors {out['pipeline']['actors']}, decode num_cpus {settings.score.decode_num_cpus});"
        f" CPU {out['c_cpu_ms_per_image']:.1f} ms/image, all Ray processes, start-up included",
        f"(a') plain loop, its own process      {out.get('a_process', nan):8.1f} img/s"
        f"  ({out.get('a_process_wall_s', nan):.1f} s: Python, imports and model load included)",
        f"(d) `raydetect score`, whole process {out.get('d_cli_whole_process', nan):8.1f} img/s"
        f"  ({out.get('d_cli_wall_s', nan):.1f} s: Python, Ray start-up and shutdown included)",
        f"(d') the same joining a running cluster {out.get('d_joined_whole_process', nan):6.1f} img/s"
        f"  ({out.get('d_joined_wall_s', nan):.1f} s: `--ray-address` of a `ray start --head` cluster)",
        f"whole processes: (d)/(a') {out['ratio_cli_vs_plain_process']:.2f}, (d')/(a') "
        f"{out['ratio_joined_vs_plain_process']:.2f} (goal >= 1.2)",
        f"(c)/(a): steady {out['ratio_steady_vs_plain']:.2f}, end to end {out['ratio_end_to_end_vs_plain']:.2f};"
        f" (d)/(a): {out['ratio_cli_vs_plain']:.2f} (goal >= 1.2)",
        f"ceiling / (a): {out['ratio_ceiling_vs_plain']:.2f} (the model alone on every core, no decode, no Ray: "
        f"the most any pipeline's steady state can reach against the plain loop here)",
        f"(c)/(b): steady {out['ratio_steady_vs_model_only']:.2f}, "
        f"end to end {out['ratio_end_to_end_vs_model_only']:.2f}",
        f"CPU time per image, (a)/(c): {out['ratio_cpu_cost_plain_vs_pipeline']:.2f}",
    ]
    print("\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--plain-process"]:
        plain_process(sys.argv[2:])
    else:
        main()
