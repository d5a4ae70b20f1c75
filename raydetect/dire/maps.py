"""`raydetect dire maps ROOT OUT`: the DIRE maps and their statistics for a dataset, as a Ray Data job.

    manifest -> read + decode + native views (CPU tasks, `score.decode.decode_batch`)
             -> DireMapper (actor pool: `ActorPoolStrategy`, a fraction of a CPU each so reads keep a core,
                a GPU each when the cluster has GPUs) -> the driver appends Parquet parts.

OUT holds `maps/<key>__v<j>.npy|.png` (one lossless map per view, the same format for both classes),
`features/part-*.parquet` (one row per view: key, label and the manifest's columns, view, the error
statistics; a row with `error` set for an unreadable image) and `dire_maps.json` (the configuration; a
rerun with another one is refused). Resumable: a rerun skips the keys already in `features/` (written
atomically, part by part), so a run ends with one row per (key, view) and no duplicates.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raydetect import storage
from raydetect.config import DireSettings, Settings

FEATURES_DIR = "features"
MAPS_DIR = "maps"
CONFIG_FILE = "dire_maps.json"
KEY = "key"
CARRIED = ("file_name", "label", "group", "category", "generator", "processing", "fold")


def map_name(key: str, view: int, fmt: str) -> str:
    from raydetect.models.dire import MAP_SUFFIX

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"{safe}__v{view}{MAP_SUFFIX[fmt]}"


def maps_config(settings: DireSettings, diffusion: str) -> dict[str, Any]:
    """What makes two map folders comparable: the reconstruction settings and the UNet."""
    keep = ("mode", "steps", "truncated_steps", "noise_level", "seed", "tile", "max_tiles", "map_format")
    return {"diffusion": diffusion, **{k: getattr(settings, k) for k in keep}}


class DireMapper:
    """`map_batches` callable class: views -> maps (written under OUT/maps) + statistics rows."""

    def __init__(self, diffusion: str, dire: dict, out: str, threads: int, device: str = "auto", storage_settings=None):
        import torch

        from raydetect.models.bundle import resolve_device
        from raydetect.models.dire import Reconstructor, dire_policy, load_unet

        torch.set_num_threads(max(1, threads))
        self.settings = DireSettings(**dire)
        unet, scheduler_config = load_unet(diffusion)
        self.reconstructor = Reconstructor(unet, scheduler_config, self.settings, resolve_device(device))
        self.policy = dire_policy(self.settings)
        self.out, self.storage_settings = out, storage_settings

    def _row_maps(self, key: str, views: np.ndarray) -> np.ndarray:
        from raydetect.models.dire import encode_map, error_features

        errors = np.concatenate(
            [
                self.reconstructor.errors(views[i : i + self.settings.batch_size])
                for i in range(0, len(views), self.settings.batch_size)
            ]
        )
        for j, error in enumerate(errors):
            name = storage.join(self.out, MAPS_DIR, map_name(key, j, self.settings.map_format))
            storage.write_bytes(name, encode_map(error, self.settings.map_format), self.storage_settings)
        return error_features(errors)

    def __call__(self, table: pa.Table) -> pa.Table:
        from raydetect.models.dire import FEATURE_NAMES
        from raydetect.models.views import read_views

        views = read_views(table, self.policy)
        base = table.select([c for c in (KEY, "path", "sha256", "error", *CARRIED) if c in table.column_names])
        rows = []
        for i, record in enumerate(base.to_pylist()):
            if record.get("error") is not None:
                rows.append({**record, "view": -1, **dict.fromkeys(FEATURE_NAMES, np.nan)})
                continue
            for j, feats in enumerate(self._row_maps(record[KEY], views[i])):
                rows.append({**record, "view": j, **dict(zip(FEATURE_NAMES, map(float, feats), strict=True))})
        return pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)


def read_features(out: str, settings: Settings | None = None) -> pd.DataFrame:
    """Every features part of OUT, one row per (key, view) (a later part wins)."""
    sset = settings.storage if settings else None
    parts = storage.list_files(storage.join(out, FEATURES_DIR), sset, suffixes=(".parquet",))
    if not parts:
        return pd.DataFrame(columns=[KEY, "view"])
    frames = [pd.read_parquet(io.BytesIO(storage.read_bytes(p, sset))) for p in sorted(parts)]
    return pd.concat(frames, ignore_index=True).drop_duplicates([KEY, "view"], keep="last").reset_index(drop=True)


def _write_part(out: str, frame: pd.DataFrame, settings: Settings) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    storage.write_bytes(storage.join(out, FEATURES_DIR, name), buffer.getvalue(), settings.storage)


def _check_config(out: str, config: dict[str, Any], settings: Settings) -> None:
    uri = storage.join(out, CONFIG_FILE)
    if storage.exists(uri, settings.storage):
        stored = json.loads(storage.read_text(uri, settings.storage))
        if stored != config:
            raise ValueError(f"{out} holds maps of another configuration ({stored}); use another OUT")
    else:
        storage.makedirs(out, settings.storage)
        storage.write_text(uri, json.dumps(config, indent=2), settings.storage)


def manifest_rows(root: str, settings: Settings, split: str = "train", limit: int | None = None) -> pd.DataFrame:
    """The manifest of ROOT's split with a `key` (file_name) and, for train, the CV `fold`."""
    from raydetect.data.manifest import read_manifest

    rows = read_manifest(root, split=split, settings=settings)
    if split == "train" and "label" in rows.columns and rows["label"].notna().all():
        from raydetect.dire.fit import DIRE_FOLDS
        from raydetect.train.cv import fold_assignment

        rows = fold_assignment(rows, DIRE_FOLDS, settings, root=root)
    rows = rows.assign(**{KEY: rows["file_name"].astype(str)})
    return rows.head(limit) if limit else rows


def build_dataset(todo: pd.DataFrame, diffusion: str, out: str, settings: Settings):
    import ray

    from raydetect.data.images import DecodeLimits
    from raydetect.data.ray_io import manifest_dataset
    from raydetect.models.dire import dire_policy
    from raydetect.score.decode import decode_batch
    from raydetect.score.pipeline import cluster_gpus
    from raydetect.score.predictor import auto_threads

    ds_cfg = settings.dire
    columns = [c for c in ("path", KEY, *CARRIED) if c in todo.columns]
    ds = manifest_dataset(todo[columns], rows_per_block=max(ds_cfg.batch_size, 8))
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "policies": [dire_policy(ds_cfg)],
            "limits": DecodeLimits.from_settings(settings.images),
            "storage_settings": settings.storage,
        },
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=settings.score.decode_num_cpus,
    )
    gpus = ds_cfg.actor_num_gpus if cluster_gpus() > 0 else 0
    threads = ds_cfg.torch_threads or auto_threads(ds_cfg.max_actors)
    return ds.map_batches(
        DireMapper,
        fn_constructor_kwargs={
            "diffusion": diffusion,
            "dire": ds_cfg.model_dump(exclude={"fit"}),
            "out": out,
            "threads": threads,
            "device": settings.device,
            "storage_settings": settings.storage,
        },
        batch_size=ds_cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=ds_cfg.min_actors, max_size=ds_cfg.max_actors),
        num_cpus=ds_cfg.actor_num_cpus,
        num_gpus=gpus or None,
    )


def dire_maps(
    root: str,
    out: str,
    settings: Settings,
    split: str = "train",
    diffusion: str | None = None,
    limit: int | None = None,
    part_rows: int = 64,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Make the maps of ROOT's `split` under OUT (resumable; see the module doc). Ray must be initialised
    (`raydetect.cluster.connect`). Returns counts and images/s."""
    from raydetect.dire.fit import default_diffusion_dir
    from raydetect.progress import progress as progress_bar

    diffusion = diffusion or default_diffusion_dir(settings)
    _check_config(out, maps_config(settings.dire, diffusion), settings)
    rows = manifest_rows(root, settings, split, limit)
    done = set(read_features(out, settings)[KEY])
    todo = rows[~rows[KEY].isin(done)]
    started, made, buffer = time.perf_counter(), 0, []
    if len(todo):
        bar = progress_bar(total=len(todo), desc="dire maps", unit="img", disable=not progress)
        for batch in build_dataset(todo, diffusion, out, settings).iter_batches(batch_size=None, batch_format="pandas"):
            buffer.append(batch)
            images = batch[KEY].nunique()
            made += images
            bar.update(images)
            if sum(len(b) for b in buffer) >= part_rows:
                _write_part(out, pd.concat(buffer, ignore_index=True), settings)
                buffer = []
        if buffer:
            _write_part(out, pd.concat(buffer, ignore_index=True), settings)
        bar.close()
    seconds = time.perf_counter() - started
    summary = {
        "images": len(rows),
        "skipped_done": len(rows) - len(todo),
        "made_this_run": made,
        "seconds": round(seconds, 1),
        "images_per_s": round(made / seconds, 3) if made and seconds > 0 else None,
        "out": out,
    }
    if log:
        rate = f"{summary['images_per_s']} images/s" if made else "nothing to do"
        log(f"dire maps: {made} made, {summary['skipped_done']} already done, {seconds:.1f} s ({rate}) -> {out}")
    return summary
