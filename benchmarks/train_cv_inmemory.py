"""k-fold CV of training variants with the core loop, the images held in (GPU) memory, without Ray.

Same manifest, grouped folds, `TrainAugment` views, backbones, input filters, loop (`raydetect.train.loop.fit`:
AdamW, cosine schedule, AMP on CUDA, early stopping on validation F1) and table as `benchmarks/train_cv.py`,
which runs each fold as a Ray Train job. This one is for a single machine with a GPU, where a small
benchmark trains faster than Ray Data can decode it every epoch: the images are decoded and augmented once
on the CPU cores (`train.augment_views` views, cycled per epoch), then kept on the device as uint8. Each
variant runs in its own process; the processes share the device.

    python benchmarks/train_cv_inmemory.py .raydetect/benchmark --cv 5 \\
        --variant lite0=train.backbone=efficientnet_lite0 \\
        --variant r18=train.backbone=resnet18,train.weights=none \\
        --set train.epochs=30 --set train.crop_size=null --out /tmp/cv

A variant is NAME=KEY=VALUE[,KEY=VALUE...], settings overrides applied after the `--set` ones. Prints each
variant's per-fold table and one summary line per variant (mean ± std). Under --out: `<NAME>.json` (the fold
runs, written after every fold), `oof_<NAME>.parquet` (out-of-fold P(AI) at each fold's best epoch, with
the manifest columns) and `summary.csv`. `--deadline-s` bounds each variant's training time (a lease on a
shared GPU): a fold still running then stops after its epoch, is reported apart and is left out of the mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'lite0=train.backbone=efficientnet_lite0,train.lr=3e-4' -> ('lite0', ['train.backbone=…', …])."""
    name, sep, rest = text.partition("=")
    if not sep or not name or any(c in name for c in "/ "):
        raise argparse.ArgumentTypeError(f"a variant is NAME=KEY=VALUE[,KEY=VALUE...], got {text!r}")
    overrides = [item for item in rest.split(",") if item]
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise argparse.ArgumentTypeError(f"variant {name}: {bad[0]!r} is not KEY=VALUE")
    return name, overrides


def decode_all(paths: list[str], size: int, threads: int) -> list[Image.Image]:
    """Every image decoded (the data layer's decoder) and brought to the evaluation geometry."""
    from raydetect import storage
    from raydetect.data.images import decode_image
    from raydetect.data.transforms import resize_center_crop

    def one(path: str) -> Image.Image:
        return resize_center_crop(decode_image(storage.read_bytes(path)), size)

    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL decodes and filters outside the GIL
        return list(pool.map(one, paths))


def augmented_view(
    images: list[Image.Image], size: int, strength: float, crop: int | None, seed: int, threads: int
) -> np.ndarray:
    """NHWC uint8: one `TrainAugment` pass over `images` (seed < 0: the images as they are)."""
    from raydetect.data.transforms import TrainAugment

    def one(item: tuple[int, Image.Image]) -> np.ndarray:
        index, image = item
        if seed >= 0:
            image = TrainAugment(size, strength, seed=seed * 1_000_003 + index, crop=crop)(image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return np.stack(list(pool.map(one, enumerate(images))))


class DeviceImages:
    """uint8 NHWC images on the device; batch sources for `fit` that normalise on the device."""

    def __init__(self, plain: Any, views: list[Any], labels: Any, mean: Any, std: Any):
        self.plain, self.views, self.labels, self.mean, self.std = plain, views, labels, mean, std

    def to_input(self, batch: Any) -> Any:
        """The evaluation transform's maths (/255, minus mean, over std), NCHW channels-last float32."""
        import torch

        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def train_batches(self, index: Any, batch_size: int, seed: int) -> Any:
        """A new shuffled pass per call; call e reads augmented view e mod V (as the Ray trainer does)."""
        import torch

        calls = {"n": 0}

        def source():
            view = self.views[calls["n"] % len(self.views)]
            generator = torch.Generator().manual_seed(seed + calls["n"])
            calls["n"] += 1
            order = index[torch.randperm(len(index), generator=generator).to(index.device)]
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                yield self.to_input(view[rows]), self.labels[rows]

        return source

    def val_batches(self, index: Any, batch_size: int = 128) -> Any:
        def source():
            for start in range(0, len(index), batch_size):
                rows = index[start : start + batch_size]
                yield self.to_input(self.plain[rows]), self.labels[rows]

        return source


class Deadline:
    """`fit`'s sync_stop: stop at the deadline (and remember that it did), else follow early stopping."""

    def __init__(self, at: float):
        self.at, self.passed = at, False

    def __call__(self, local_stop: bool) -> bool:
        if not local_stop and time.monotonic() > self.at:
            self.passed = True
            return True
        return local_stop


class EpochLog:
    """`fit`'s on_epoch: a line per epoch."""

    def __init__(self, say: Any, fold: int):
        self.say, self.fold = say, fold

    def __call__(self, record: dict[str, float], _model: Any, improved: bool) -> None:
        self.say(
            f"fold {self.fold} epoch {int(record['epoch'])}: loss {record['train_loss']:.4f} "
            f"val f1 {record['val_f1']:.4f} auc {record['val_auc']:.4f}{' *' if improved else ''}"
        )


def run_variant(args: argparse.Namespace, name: str, overrides: list[str]) -> None:
    """All folds of one variant, in this process; writes <out>/<name>.json after every fold."""
    import torch

    from raydetect.config import load_settings
    from raydetect.data.manifest import read_manifest
    from raydetect.data.transforms import native_crop
    from raydetect.models.backbones import build_backbone, default_normalization
    from raydetect.train.cv import fold_assignment
    from raydetect.train.loop import fit, predict_batches
    from raydetect.train.trainer import (
        FoldRun,
        augment_view_count,
        augments,
        image_size,
        labelled_rows,
        loop_config,
    )

    started = time.monotonic()
    settings = load_settings(args.config, [*args.overrides, *overrides])
    train = settings.train
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"

    def say(text: str) -> None:
        print(f"[{name} {time.monotonic() - started:6.0f}s] {text}", flush=True)

    df = fold_assignment(labelled_rows(read_manifest(args.root, "train", settings)), args.cv, settings, args.root)
    size = image_size(settings)
    crop = native_crop(train.crop_size, size)
    paths = df["path"].tolist()
    images = decode_all(paths, size, threads)
    plain = torch.from_numpy(augmented_view(images, size, 0.0, None, -1, threads)).to(device)
    views = [plain]  # as in the Ray trainer: no augmentation and no crop -> the evaluation images
    if augments(settings):
        seeds = [settings.seed * 1000 + v for v in range(augment_view_count(settings))]
        views = [
            torch.from_numpy(augmented_view(images, size, train.augment_strength, crop, seed, threads)).to(device)
            for seed in seeds
        ]
    labels = torch.tensor(df["label"].to_numpy(dtype=np.float32), device=device)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in default_normalization(train.backbone))
    say(f"{len(df)} images, {len(views)} view(s) of {views[0].shape[1]} px on {device}; overrides {overrides}")

    data = DeviceImages(plain, views, labels, mean, std)
    deadline = time.monotonic() + args.deadline_s if args.deadline_s else math.inf  # counts training time only
    folds = args.folds if args.folds else sorted(df["fold"].unique().tolist())
    runs: list[dict[str, Any]] = []
    oof: list[pd.DataFrame] = []
    for fold in folds:
        if time.monotonic() > deadline:
            say(f"fold {fold}: not started, past the deadline")
            break
        fold_start = time.monotonic()
        train_idx = torch.as_tensor(np.flatnonzero(df["fold"].to_numpy() != fold), device=device)
        val_idx = torch.as_tensor(np.flatnonzero(df["fold"].to_numpy() == fold), device=device)
        batch_size = train.batch_size
        model = build_backbone(train.backbone, train.weights, train.input_filter)
        model = model.to(device, memory_format=torch.channels_last)
        cut = Deadline(deadline)
        log = EpochLog(say, fold) if args.verbose else None
        result = fit(
            model,
            data.train_batches(train_idx, batch_size, seed=settings.seed * 7919 + fold * 131),
            data.val_batches(val_idx),
            loop_config(settings),
            device=device,
            steps_per_epoch=math.ceil(len(train_idx) / batch_size),
            on_epoch=log,
            sync_stop=cut,
        )
        cut.passed = cut.passed and len(result.history) < train.epochs  # a last epoch is not a cut
        if result.best_state is not None:
            model.load_state_dict(result.best_state)
        y, p, _ = predict_batches(model, data.val_batches(val_idx)(), device)
        rows = df.iloc[val_idx.cpu().numpy()].drop(columns=["path"], errors="ignore").assign(prob=p, variant=name)
        assert np.array_equal(rows["label"].to_numpy(), y.astype(int))
        oof.append(rows)
        run = FoldRun(
            name=name,
            fold=int(fold),
            path=str(args.out),
            checkpoint_uri=None,
            best_epoch=result.best_epoch,
            best_metrics=result.best_metrics,
            history=result.history,
            n_train=len(train_idx),
            n_val=len(val_idx),
            wall_s=time.monotonic() - fold_start,
            stopped_early=result.stopped_early and not cut.passed,
            params={"overrides": [*args.overrides, *overrides], "cut_by_deadline": cut.passed},
        )
        runs.append(run.to_dict())
        say(
            f"fold {fold}: best epoch {run.best_epoch}/{len(run.history)}  f1 {run.f1:.4f}  "
            f"auc {run.best_metrics.get('val_auc', float('nan')):.4f}  {run.wall_s:.0f} s"
            + ("  (cut by the deadline)" if cut.passed else "")
        )
        out = Path(args.out)
        (out / f"{name}.json").write_text(json.dumps({"name": name, "overrides": overrides, "runs": runs}))
        pd.concat(oof).to_parquet(out / f"oof_{name}.parquet", index=False)
    say(f"done in {time.monotonic() - started:.0f} s")


def load_runs(out: Path, name: str) -> list[Any]:
    from raydetect.train.trainer import FoldRun

    path = out / f"{name}.json"
    if not path.exists():
        return []
    return [FoldRun(**run) for run in json.loads(path.read_text())["runs"]]


def report(out: Path, variants: list[tuple[str, list[str]]], wall_s: float) -> pd.DataFrame:
    """Print each variant's table (finished folds) and a summary (mean ± std per metric); write summary.csv."""
    from raydetect.train.cv import cv_table, format_cv_table, summary_row

    rows = []
    for name, overrides in variants:
        runs = load_runs(out, name)
        done = [r for r in runs if not r.params.get("cut_by_deadline")]
        cut = [r.fold for r in runs if r.params.get("cut_by_deadline")]
        table = cv_table(done)
        print(f"\n== {name} ({', '.join(overrides) or 'defaults'})\n" + format_cv_table(table))
        if cut:
            print(f"   cut by the deadline (not in the mean): folds {cut}")
        rows.append(summary_row(name, table, sum(r.wall_s for r in runs)))
    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    print(f"\n== summary (wall {wall_s:.0f} s)\n" + summary.to_string(index=False))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="dataset root in the Kaggle layout (e.g. the demo benchmark)")
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="only these folds (default: all)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], dest="variants")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="settings for all variants")
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default="cv_inmemory")
    parser.add_argument(
        "--deadline-s", type=float, default=0.0, help="seconds of training per variant; folds running then are cut"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per variant (0: cores / variants)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto")
    parser.add_argument("--sequential", action="store_true", help="one variant after the other, in this process")
    parser.add_argument("--verbose", action="store_true", help="a line per epoch")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a child process runs one variant
    args = parser.parse_args(argv)
    variants = args.variants or [("default", [])]
    if len({name for name, _ in variants}) != len(variants):
        parser.error("variant names must differ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.threads:
        sharing = 1 if args.sequential else len(variants)  # a child (--only) shares the cores with its siblings
        args.threads = max(1, (os.cpu_count() or 1) // sharing)
    started = time.monotonic()
    if args.only:
        run_variant(args, args.only, dict(variants)[args.only])
        return
    failed: list[str] = []
    if args.sequential or len(variants) == 1:
        for name, overrides in variants:
            run_variant(args, name, overrides)
    else:
        children = [
            subprocess.Popen([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--only", n])
            for n, _ in variants
        ]
        codes = [child.wait() for child in children]
        failed = [name for (name, _), code in zip(variants, codes, strict=True) if code]
    report(out, variants, time.monotonic() - started)
    if failed:
        sys.exit(f"variants that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
