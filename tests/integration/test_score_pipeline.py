"""Batch scoring end to end on the shared Ray cluster: S3 in and out (moto), bad files, the CLI, ensembles,
a killed driver resumed without duplicates, a crashed actor retried by Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from raydetect import storage
from raydetect.config import load_settings
from raydetect.data.images import decode_image
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard, save_model
from raydetect.models.views import make_views
from raydetect.score import results
from raydetect.score.pipeline import score_run
from raydetect.score.predictor import CONTRACT_COLUMNS
from tests.datasets import encode, make_kaggle_dataset, smooth_photo, write_bad_files

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Small blocks and files so a tiny run streams through several of each (and a kill lands mid-run).
SMALL = ["score.read_block_rows=4", "score.rows_per_file=2", "score.batch_size=4"]


def _model(uri: str, seed: int = 0, name: str = "tiny", size: int = 48) -> str:
    torch.manual_seed(seed)
    model = build_backbone("tinycnn")
    with torch.no_grad():  # spread the untrained outputs so decisions differ between images
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return save_model(model, ModelCard(backbone="tinycnn", name=name, version="7", image_size=size), uri)


def _read_run(run: str) -> pd.DataFrame:
    rows, broken = results.read_rows(run)
    assert not broken
    return rows.drop(columns=["_file"])


def _folder(path: Path, n: int, size: int = 40) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        (path / f"img{i:03d}.png").write_bytes(encode(smooth_photo(rng, size)))
    return path


@pytest.mark.s3
def test_scores_a_labelled_set_from_s3_into_s3(s3_bucket: str, ray_cluster: None, tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "kaggle", n_pairs=6, size=48, n_test=2)
    fs, bucket_path = storage.fsspec_fs(s3_bucket)  # one client for the whole upload
    fs.put(f"{root}/", f"{bucket_path}/data/", recursive=True)
    model = _model(f"{s3_bucket}/models/tiny")
    settings = load_settings(overrides=SMALL)

    manifest = score_run(f"{s3_bucket}/data", model, f"{s3_bucket}/predictions", "s3run", settings=settings)

    run = f"{s3_bucket}/predictions/run=s3run"
    rows = _read_run(run)
    assert list(rows.columns[: len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert len(rows) == 12 and rows["path"].is_unique and rows["error"].isna().all()
    assert set(rows["path"]) == {f"{s3_bucket}/data/train_data/{i:04d}_{k}.png" for i in range(6) for k in (0, 1)}
    assert sorted(rows["label"].tolist()) == [0] * 6 + [1] * 6  # the manifest's columns come through
    assert set(rows["decision"]) <= {"real", "ai", "review"} and rows["prob_ai"].between(0, 1).all()
    assert (rows["threshold"] == 0.5).all() and (rows["model_version"] == "7").all()
    assert str(rows["scored_at"].dt.tz) == "UTC"
    success = results.read_success(run)
    assert success is not None and success["counts"]["rows"] == 12 and success["counts"]["inputs"] == 12
    assert manifest["counts"]["scored_this_run"] == 12
    summary = json.loads(storage.read_text(f"{run}/{results.SUMMARY}"))
    assert summary["decisions"] == {k: int((rows["decision"] == k).sum()) for k in ("real", "ai", "review")}

    # The same predictions as calling the model directly on the same bytes.
    detector = Detector.load(model, device="cpu")
    ordered = rows.sort_values("path")
    blobs = fs.cat([storage.strip_scheme(p) for p in ordered["path"]])
    direct = [detector.predict_image(decode_image(blobs[storage.strip_scheme(p)])) for p in ordered["path"]]
    np.testing.assert_allclose(ordered["prob_ai"].to_numpy(), direct, rtol=0, atol=1e-6)


def test_cli_scores_a_folder_with_bad_files_with_an_ensemble(ray_cluster: None, tmp_path: Path):
    from raydetect.cli import app

    folder = _folder(tmp_path / "in", 5)
    write_bad_files(folder)
    (folder / "huge.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(300_000))  # over images.max_bytes below
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # over the pixel cap
    a = _model(str(tmp_path / "a"), seed=1, name="a")
    b = _model(str(tmp_path / "b"), seed=2, name="b", size=32)
    out = tmp_path / "out"
    args = ["score", str(folder), "--model", f"{a},{b}", "--weights", "3,1", "--output", str(out)]
    args += ["--run-id", "cli", "--actors", "1:1", "--batch-size", "3", "--set", "images.max_bytes=200000"]
    args += [arg for item in SMALL[:2] for arg in ("--set", item)]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    rows = _read_run(str(out / "run=cli")).set_index("path")
    assert len(rows) == 11
    reasons = rows["error"].dropna().map(lambda e: e.split(":", 1)[0])
    by_name = {Path(p).name: r for p, r in reasons.items()}
    assert by_name == {
        "corrupt.jpg": "corrupt",
        "truncated.jpg": "truncated",
        "empty.jpg": "empty",
        "notes.jpg": "unsupported_format",
        "huge.jpg": "too_large",
        "bomb.png": "too_many_pixels",
    }
    good = rows[rows["error"].isna()]
    assert len(good) == 5 and good["prob_ai"].notna().all() and good["decision"].notna().all()
    assert rows.loc[rows["error"].notna(), "prob_ai"].isna().all()
    assert (rows["model_name"] == "a+b").all() and (rows["model_version"] == "a@7*0.75+b@7*0.25").all()
    summary = json.loads((out / "run=cli" / results.SUMMARY).read_text())
    assert summary["errors"] == 6 and summary["error_reasons"]["too_large"] == 1
    assert '"share_ai"' in result.output


DRIVER = """
import sys, time
from raydetect.config import load_settings
from raydetect.models.bundle import Detector
from raydetect.cluster import connect
from raydetect.score.pipeline import score_run


class Slow:
    def __init__(self, uri):
        self.inner = Detector.load(uri, device="cpu")
        self.card, self.device, self.policy = self.inner.card, self.inner.device, self.inner.policy

    def predict_images(self, images, max_batch=32):
        time.sleep(0.4)
        return self.inner.predict_images(images, max_batch)


connect()
source, model, output = sys.argv[1:4]
score_run(source, model, output, "resume", actors=(1, 1), loader=Slow, settings=load_settings(overrides=sys.argv[4:]))
"""


def _driver_env() -> dict[str, str]:
    import ray

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}


def test_killed_driver_then_rerun_ends_with_one_row_per_input(ray_cluster: None, tmp_path: Path):
    folder = _folder(tmp_path / "in", 40, size=32)
    model = _model(str(tmp_path / "model"), size=32)
    out = tmp_path / "out"
    run = out / "run=resume"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder), model, str(out), *SMALL],
        env=_driver_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and len(results.list_parts(str(run))) < 2:
            time.sleep(0.2)
        assert proc.poll() is None, "the driver finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a lost job would
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert results.read_success(str(run)) is None
    time.sleep(2)  # let the cluster reap the dead job's workers
    partial = results.read_rows(str(run), ["path"])[0]
    assert 0 < partial["path"].nunique() < 40

    cli = [str(REPO / ".venv/bin/raydetect"), "score", str(folder), "--model", model, "--output", str(out)]
    cli += ["--run-id", "resume", "--actors", "1:1", *[a for item in SMALL for a in ("--set", item)]]
    done = subprocess.run(cli, env=_driver_env(), cwd=REPO, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    rows = _read_run(str(run))
    assert len(rows) == 40 and rows["path"].is_unique
    assert set(rows["path"]) == {str(p) for p in folder.iterdir()}
    success = results.read_success(str(run))
    assert success["counts"]["rows"] == 40 and success["counts"]["duplicates"] == 0
    assert 0 < success["counts"]["scored_this_run"] < 40  # only what was missing
    assert success["counts"]["reused"] == 40 - success["counts"]["scored_this_run"]


class CrashOnce:
    """A loader whose first predict() kills its actor process (as an OOM kill or a lost node would)."""

    def __init__(self, uri: str, marker: str):
        self.inner = Detector.load(uri, device="cpu")
        self.card, self.device, self.marker = self.inner.card, self.inner.device, Path(marker)
        self.policy = self.inner.policy

    def predict_images(self, images, max_batch=32):
        if not self.marker.exists():
            self.marker.write_text("crashed")
            os._exit(1)
        return self.inner.predict_images(images, max_batch)


def test_a_crashed_actor_is_restarted_and_its_batch_retried(ray_cluster: None, tmp_path: Path):
    from functools import partial

    folder = _folder(tmp_path / "in", 12, size=32)
    model = _model(str(tmp_path / "model"), size=32)
    marker = tmp_path / "crashed"
    settings = load_settings(overrides=SMALL)

    manifest = score_run(
        str(folder), model, str(tmp_path / "out"), "crash", actors=(1, 1), settings=settings,
        loader=partial(CrashOnce, marker=str(marker)),
    )  # fmt: skip

    assert marker.exists()
    rows = _read_run(manifest["output"])
    assert len(rows) == 12 and rows["path"].is_unique and rows["error"].isna().all()
    assert pq.read_schema(results.list_parts(manifest["output"])[0]).names[:2] == ["path", "sha256"]


def test_the_precision_is_recorded_and_decisions_agree_with_fp32(ray_cluster: None, tmp_path: Path):
    from raydetect.models.bundle import resolved_precision
    from raydetect.models.precision import cpu_has_native_bf16

    folder = _folder(tmp_path / "in", 8, size=48)
    model = _model(str(tmp_path / "model"))
    runs = {}
    for setting in ("auto", "fp32"):
        settings = load_settings(overrides=[*SMALL, f"precision={setting}"])
        manifest = score_run(str(folder), model, str(tmp_path / "out"), setting, actors=(1, 1), settings=settings)
        summary = json.loads(Path(manifest["output"], results.SUMMARY).read_text())
        runs[setting] = (summary, _read_run(manifest["output"]).sort_values("path").reset_index(drop=True))

    auto, fp32 = runs["auto"][1], runs["fp32"][1]
    expected = "bf16" if cpu_has_native_bf16() else "fp32"  # what auto means on this machine's CPU
    assert runs["auto"][0]["precision"] == expected and runs["fp32"][0]["precision"] == "fp32"
    assert resolved_precision("cpu", "auto") == expected
    # What the actors ran: exactly the detector of that precision called directly, and close to fp32.
    for rows, setting in ((auto, "auto"), (fp32, "fp32")):
        detector = Detector.load(model, device="cpu", precision=setting)
        views = [make_views(decode_image(Path(p).read_bytes()), detector.policy) for p in auto["path"]]
        direct = detector.predict_images(views)
        np.testing.assert_allclose(rows["prob_ai"].to_numpy(), direct, rtol=0, atol=1e-6)
    if expected == "bf16":
        assert not np.array_equal(auto["prob_ai"].to_numpy(), fp32["prob_ai"].to_numpy())
    assert np.abs(auto["prob_ai"] - fp32["prob_ai"]).max() < 0.05
    near = (fp32["prob_ai"] - 0.5).abs().lt(0.05) | (fp32["prob_ai"] - 0.4).abs().lt(0.05)
    near |= (fp32["prob_ai"] - 0.6).abs().lt(0.05)
    assert (auto["decision"].eq(fp32["decision"]) | near).all()


def test_the_actors_precision_is_resolved_on_the_driver_only_for_its_own_single_node_cpu_cluster(ray_cluster: None):
    """A local run asks no worker what `auto` means (the actors share this CPU): the same answer a task on an
    actor's resources gives. A cluster of other nodes, or GPU actors, are still asked by a task."""
    import ray

    from raydetect.models.bundle import resolved_precision
    from raydetect.score.pipeline import actor_precision, only_node_is_this_one

    settings = load_settings(overrides=SMALL)
    assert only_node_is_this_one()  # the shared test cluster: one node, this driver's
    probe = ray.remote(resolved_precision).options(num_cpus=settings.score.actor_num_cpus)
    for setting in ("auto", "fp32", "bf16"):
        s = load_settings(overrides=[*SMALL, f"precision={setting}"])
        assert actor_precision(s) == ray.get(probe.remote(s.device, s.precision)) == resolved_precision("cpu", setting)


def test_jpegs_preprocessed_in_the_model_actors_score_like_the_cpu_stage(ray_cluster: None, tmp_path: Path):
    """`score.preprocess_on: model` (what `auto` picks when the actors get a GPU): JPEGs travel as bytes to
    the model actors, which decode them (nvJPEG on a GPU, libjpeg-turbo here) and cut the views with tensor
    ops; the rows are those of the CPU stage."""
    root = make_kaggle_dataset(tmp_path / "kaggle", n_pairs=5, size=72, fmt="JPEG", n_test=0)
    model = _model(str(tmp_path / "model"))
    runs = {}
    for where in ("cpu", "model"):
        settings = load_settings(overrides=[*SMALL, f"score.preprocess_on={where}"])
        manifest = score_run(str(root), model, str(tmp_path / "predictions"), where, settings=settings)
        assert manifest["preprocess_on"] == where
        runs[where] = _read_run(manifest["output"]).sort_values("path").reset_index(drop=True)
    cpu, on_model = runs["cpu"], runs["model"]
    assert len(on_model) == 10 and on_model["error"].isna().all()
    # PIL's libjpeg and torchvision's libjpeg-turbo take different SIMD IDCT paths on some CPUs (this AMD EPYC:
    # P(AI) 1.3e-6 apart on one of 10 images, identical on the Intel machines): within 1e-5, same decisions
    np.testing.assert_allclose(on_model["prob_ai"], cpu["prob_ai"], atol=1e-5)
    assert on_model["decision"].tolist() == cpu["decision"].tolist()
    assert on_model["views"].tolist() == cpu["views"].tolist()
