"""Ray Data datasets from a manifest (local or S3): raw bytes, then decoded + preprocessed images.

Nothing here fails a job because of one bad file: an unreadable file becomes a row with `bytes=b""` and
`error="missing: …"` / `"unreadable: …"`; an undecodable one a row with a zero image and
`error="corrupt: …"` (the reason codes of `raydetect.data.images`).

    ds = image_dataset(read_manifest(root), size=224)            # rows: manifest columns + sha256, image, error
    for batch in ds.iter_batches(batch_size=32, batch_format="numpy"): ...

The per-row work is plain Python (`read_uris`, `DecodePreprocess.__call__`) and is tested without Ray.
"""

from __future__ import annotations

import inspect
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raydetect import storage
from raydetect.config import Settings, StorageSettings
from raydetect.data.images import DecodeLimits, sha256_hex, try_decode
from raydetect.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainAugment, preprocess

DEFAULT_ROWS_PER_BLOCK = 128
DEFAULT_READ_BATCH = 32
# One CPU per read task: whole CPUs reuse Ray's pre-started workers (a fractional request spawns extra
# Python processes, costly on 2 cores); S3 reads inside one task are concurrent anyway (s3fs `cat`).
READ_NUM_CPUS = 1.0

_S3_CLIENTS: dict[storage.S3Options, Any] = {}  # per worker process, filled on first use


def _s3_client(settings: StorageSettings | None) -> Any:
    """One s3fs client per (endpoint, credentials, region) per process, reused across batches."""
    options = storage.S3Options.resolve(settings)
    if options not in _S3_CLIENTS:
        _S3_CLIENTS[options] = storage.fsspec_fs("s3://bucket", settings)[0]
    return _S3_CLIENTS[options]


def read_uris(
    uris: Sequence[str], settings: StorageSettings | None = None, s3fs: Any = None
) -> list[tuple[bytes, str | None]]:
    """`(bytes, None)` or `(b"", "missing: …" | "unreadable: …")` for each URI, in order.

    S3 objects are fetched concurrently (`s3fs`: a client to reuse, else one per call); local files are
    read directly."""
    results: list[tuple[bytes, str | None]] = [(b"", None)] * len(uris)
    s3 = [i for i, u in enumerate(uris) if storage.is_s3(u)]
    for i, uri in enumerate(uris):
        if i in s3:
            continue
        try:
            with open(storage.strip_scheme(uri), "rb") as handle:
                results[i] = (handle.read(), None)
        except FileNotFoundError:
            results[i] = (b"", f"missing: no such file {uri}")
        except IsADirectoryError:
            results[i] = (b"", f"unreadable: {uri} is a directory")
        except OSError as exc:
            results[i] = (b"", f"unreadable: {type(exc).__name__}: {exc}")
    if s3:
        fs = s3fs if s3fs is not None else _s3_client(settings)
        keys = [storage.strip_scheme(uris[i]) for i in s3]
        for i, value in zip(s3, _fetch_all(fs, keys), strict=True):
            if isinstance(value, FileNotFoundError):
                results[i] = (b"", f"missing: no such object {uris[i]}")
            elif isinstance(value, BaseException):
                results[i] = (b"", f"unreadable: {type(value).__name__}: {value}")
            else:
                results[i] = (bytes(value), None)
    return results


def _fetch_all(fs: Any, keys: list[str]) -> list[bytes | BaseException]:
    """GET every key concurrently on s3fs's event loop (no HEAD per object, unlike `fs.cat`)."""
    if getattr(fs, "async_impl", False):
        import asyncio

        from fsspec.asyn import sync

        # max_concurrency=1: one GET per object (recent s3fs otherwise HEADs each object for its size first)
        one_get = {"max_concurrency": 1} if "max_concurrency" in inspect.signature(fs._cat_file).parameters else {}

        async def gather() -> list[Any]:
            return await asyncio.gather(*(fs._cat_file(k, **one_get) for k in keys), return_exceptions=True)

        try:
            return sync(fs.loop, gather)
        except Exception as exc:  # noqa: BLE001 - a whole-batch failure (endpoint down) -> error on every row
            return [exc] * len(keys)
    out: list[bytes | BaseException] = []
    for key in keys:
        try:
            out.append(fs.cat_file(key))
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def read_bytes_batch(table: pa.Table, settings: StorageSettings | None = None) -> pa.Table:
    """`map_batches` function (pyarrow batches): add `bytes` (binary) and `error` (string) columns."""
    results = read_uris(table.column("path").to_pylist(), settings)
    table = table.drop_columns([c for c in ("bytes", "error") if c in table.column_names])
    table = table.append_column("bytes", pa.array([r[0] for r in results], type=pa.binary()))
    return table.append_column("error", pa.array([r[1] for r in results], type=pa.string()))


def manifest_dataset(df: pd.DataFrame, rows_per_block: int = DEFAULT_ROWS_PER_BLOCK):
    """The manifest as a Ray dataset split into blocks of `rows_per_block` rows (so reads run in parallel)."""
    import ray

    frame = df.reset_index(drop=True)
    if "label" in frame.columns:
        frame["label"] = frame["label"].astype("Int64")
    n_blocks = max(1, math.ceil(len(frame) / max(1, rows_per_block)))
    chunks = [frame.iloc[i * rows_per_block : (i + 1) * rows_per_block] for i in range(n_blocks)]
    return ray.data.from_pandas(chunks)


def read_image_bytes(
    df: pd.DataFrame,
    settings: Settings | None = None,
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK,
    batch_size: int = DEFAULT_READ_BATCH,
):
    """Rows: every manifest column + `bytes` (b"" when unreadable) + `error` (None or "reason: message")."""
    return manifest_dataset(df, rows_per_block).map_batches(
        read_bytes_batch,
        fn_kwargs={"settings": settings.storage if settings else None},
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=READ_NUM_CPUS,
    )


def _row_seed(seed: int, key: Any) -> int:
    return zlib.crc32(f"{seed}:{key}".encode())


class DecodePreprocess:
    """`map_batches` callable (batch_format "pandas" or "numpy"): bytes -> `image` (float32 CHW,
    normalised; zeros when it failed), `sha256` (None when the file could not be read), `error`.

    Every input column except `bytes` is passed through. With augmentation on (`augment_seed` given or
    `augment_strength > 0`) each row gets `TrainAugment` seeded by (augment_seed, path): deterministic
    whatever the batching or actor; pass a different seed per epoch for fresh augmentations."""

    def __init__(
        self,
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment_seed: int | None = None,
        augment_strength: float = 0.0,
        limits: DecodeLimits | None = None,
    ):
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment_seed is not None or augment_strength > 0
        self.augment_seed = 0 if augment_seed is None else int(augment_seed)
        self.augment_strength = float(augment_strength)
        self.limits = limits or DecodeLimits()

    def process(
        self, blob: bytes, read_error: str | None, key: Any
    ) -> tuple[np.ndarray | None, str | None, str | None]:
        """One row: `(CHW image or None, sha256 or None, error or None)`."""
        if read_error:
            return None, (sha256_hex(blob) if blob else None), read_error
        digest = sha256_hex(blob)
        image, error = try_decode(blob, self.limits)
        if image is None:
            return None, digest, error
        try:
            if self.augment:
                image = TrainAugment(self.size, self.augment_strength, _row_seed(self.augment_seed, key))(image)
            return preprocess(image, self.size, self.mean, self.std), digest, None
        except Exception as exc:  # noqa: BLE001 - a transform failure is an error row, not a dead job
            return None, digest, f"transform_failed: {type(exc).__name__}: {exc}"

    def __call__(self, batch: pd.DataFrame | dict[str, np.ndarray]) -> pd.DataFrame | dict[str, np.ndarray]:
        as_pandas = isinstance(batch, pd.DataFrame)
        columns: dict[str, Any] = (
            {c: batch[c].to_numpy() for c in batch.columns} if as_pandas else dict(batch)  # type: ignore[union-attr]
        )
        blobs = columns.pop("bytes")
        read_errors = columns.pop("error", None)
        n = len(blobs)
        keys = columns.get("path", np.arange(n))
        images = np.zeros((n, 3, self.size, self.size), dtype=np.float32)
        digests: list[str | None] = []
        errors: list[str | None] = []
        for i in range(n):
            blob = blobs[i]
            blob = b"" if blob is None else bytes(blob)
            prior = None if read_errors is None else read_errors[i]
            prior = prior if isinstance(prior, str) and prior else None
            array, digest, error = self.process(blob, prior, keys[i])
            if array is not None:
                images[i] = array
            digests.append(digest)
            errors.append(error)
        columns["sha256"] = np.array(digests, dtype=object)
        columns["image"] = images
        columns["error"] = np.array(errors, dtype=object)
        if as_pandas:
            index = batch.index  # type: ignore[union-attr]
            keep = [c for c in batch.columns if c not in ("bytes", "error", "sha256", "image")]  # type: ignore[union-attr]
            frame = batch[keep].copy()  # type: ignore[index]
            frame["sha256"] = pd.Series(digests, index=index, dtype=object)  # None stays None, not NaN
            frame["image"] = pd.Series(list(images), index=index, dtype=object)
            frame["error"] = pd.Series(errors, index=index, dtype=object)
            return frame
        return columns


def image_dataset(
    df: pd.DataFrame,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: bool = False,
    augment_seed: int | None = None,
    augment_strength: float = 1.0,
    limits: DecodeLimits | None = None,
    settings: Settings | None = None,
    batch_size: int = 32,
    max_actors: int = 2,
    actor_num_cpus: float = 0.5,
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK,
):
    """`read_image_bytes(df)` then `DecodePreprocess` in a small actor pool (numpy batches).

    Rows: every manifest column + `sha256`, `image` (float32 3 x size x size), `error`. With `augment`,
    `TrainAugment(size, augment_strength)` seeded per row by (augment_seed or 0, path)."""
    import ray

    if limits is None and settings is not None:
        limits = DecodeLimits.from_settings(settings.images)
    kwargs = {
        "size": size,
        "mean": tuple(mean),
        "std": tuple(std),
        "augment_seed": (augment_seed or 0) if augment else None,
        "augment_strength": augment_strength if augment else 0.0,
        "limits": limits,
    }
    return read_image_bytes(df, settings, rows_per_block).map_batches(
        DecodePreprocess,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors),
        num_cpus=actor_num_cpus,
    )
