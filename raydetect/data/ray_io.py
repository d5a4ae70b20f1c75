"""Ray Data datasets from a manifest (local or S3): raw bytes, then decoded + preprocessed images.

Nothing here fails a job because of one bad file: an unreadable file becomes a row with `bytes=b""` and
`error="missing: …"` / `"unreadable: …"`; an undecodable one a row with a zero image and
`error="corrupt: …"` (the reason codes of `raydetect.data.images`).

    ds = image_dataset(read_manifest(root), size=224)            # rows: manifest columns + sha256, image, error
    for batch in ds.iter_batches(batch_size=32, batch_format="numpy"): ...

    raw = read_image_bytes(read_manifest(root))                    # rows: manifest columns + bytes, error

Resources (2-core friendly): `image_dataset` is one stage, a pool of at most `max_actors` actors of
`actor_num_cpus` (default 2 x 0.5 CPU) that read and decode; `read_image_bytes` runs tasks of 0.25 CPU.
Labels arrive as int64 (float64 with NaN when a block holds unlabelled rows: Arrow -> numpy has no NA int).

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
from raydetect.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainAugment, native_crop
from raydetect.models.views import ViewError, ViewPolicy, append_views, make_views, normalize

DEFAULT_ROWS_PER_BLOCK = 128
DEFAULT_READ_BATCH = 32
# Read tasks ask for a quarter CPU: they are I/O-bound, and a whole-CPU request could wait forever beside
# actor pools (decode, model, Ray Train workers) that already hold every CPU of a 2-core machine.
READ_NUM_CPUS = 0.25

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


def manifest_table(df: pd.DataFrame) -> pa.Table:
    """The manifest as one Arrow table: one type per column for every block cut from it."""
    frame = df.reset_index(drop=True)
    if "label" in frame.columns:
        frame["label"] = frame["label"].astype("Int64")
    for column in frame.columns:
        if frame[column].dtype == object:  # mixed None/str/NaN -> nullable string
            frame[column] = frame[column].astype("string")
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def manifest_dataset(df: pd.DataFrame, rows_per_block: int = DEFAULT_ROWS_PER_BLOCK):
    """The manifest as a Ray dataset split into blocks of `rows_per_block` rows (so reads run in parallel).

    The blocks are made in this process: `ray.data.from_pandas`/`from_arrow` run a metadata task that needs
    a whole free CPU and waits forever when actors hold all but a fraction of one (2-core machines)."""
    import ray

    table = manifest_table(df)
    n_blocks = max(1, math.ceil(table.num_rows / max(1, rows_per_block)))
    slices = [table.slice(i * rows_per_block, rows_per_block) for i in range(n_blocks)]
    try:
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators.from_operators import FromArrow
        from ray.data._internal.stats import DatasetStats
        from ray.data.block import BlockMetadataWithSchema
        from ray.data.context import DataContext
        from ray.data.dataset import MaterializedDataset
    except ImportError:  # another Ray: the public route (rows rebuilt in this process, types per block)
        return ray.data.from_items(table.to_pylist(), override_num_blocks=n_blocks)
    metadata = [BlockMetadataWithSchema.from_block(block) for block in slices]
    context = DataContext.get_current().copy()
    plan = LogicalPlan(FromArrow([ray.put(block) for block in slices], metadata), context)
    return MaterializedDataset(plan, context, DatasetStats(metadata={"FromArrow": metadata}, parent=None))


def read_image_bytes(
    df: pd.DataFrame,
    settings: Settings | None = None,
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK,
    batch_size: int = DEFAULT_READ_BATCH,
    num_cpus: float = READ_NUM_CPUS,
):
    """Rows: every manifest column + `bytes` (b"" when unreadable) + `error` (None or "reason: message")."""
    return manifest_dataset(df, rows_per_block).map_batches(
        read_bytes_batch,
        fn_kwargs={"settings": settings.storage if settings else None},
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=num_cpus,
    )


def _row_seed(seed: int, key: Any) -> int:
    return zlib.crc32(f"{seed}:{key}".encode())


class DecodePreprocess:
    """`map_batches` callable (batch_format "pandas", "numpy" or "pyarrow"): bytes -> `image` (float32 CHW,
    normalised; zeros when it failed), `sha256` (None when the file could not be read), `error`.
    A batch without a `bytes` column is read from its `path` column first (local or S3).

    Every input column except `bytes` is passed through. With augmentation on (`augment_seed` given or
    `augment_strength > 0`) each row gets `TrainAugment` seeded by (augment_seed, path): deterministic
    whatever the batching or actor; pass a different seed per epoch for fresh augmentations.

    With a view `policy` and no augmentation (validation, evaluation), a pyarrow batch gets each row's uint8
    views as scoring makes them (`models.views.append_views`) instead of `image`: one preprocessing path
    for validation and scoring. Without one, `image` is the `resize` policy's single view, normalised."""

    def __init__(
        self,
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment_seed: int | None = None,
        augment_strength: float = 0.0,
        limits: DecodeLimits | None = None,
        storage_settings: StorageSettings | None = None,
        crop_size: int | None = None,
        policy: ViewPolicy | dict | None = None,
    ):
        self.size = int(size)
        self.storage = storage_settings  # used only for batches without `bytes` (it then reads `path`)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment_seed is not None or augment_strength > 0
        self.augment_seed = 0 if augment_seed is None else int(augment_seed)
        self.augment_strength = float(augment_strength)
        self.limits = limits or DecodeLimits()
        self.crop_size = native_crop(crop_size, self.size) if self.augment else None
        self.output_size = self.crop_size or self.size
        if isinstance(policy, dict):
            policy = ViewPolicy(**policy)
        self.policy = None if self.augment else policy
        self.resize = ViewPolicy(mode="resize", size=self.output_size)

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
            if self.policy is not None:
                return make_views(image, self.policy), digest, None
            if self.augment:
                seed = _row_seed(self.augment_seed, key)
                image = TrainAugment(self.size, self.augment_strength, seed, self.crop_size)(image)
            views = make_views(image, self.resize)
            return normalize(views, self.mean, self.std).numpy()[0], digest, None
        except ViewError as exc:
            return None, digest, str(exc)
        except Exception as exc:  # noqa: BLE001 - a transform failure is an error row, not a dead job
            return None, digest, f"transform_failed: {type(exc).__name__}: {exc}"

    def run(
        self, blobs: Sequence[Any], read_errors: Sequence[Any] | None, keys: Sequence[Any]
    ) -> tuple[np.ndarray | list, list[str | None], list[str | None]]:
        """A batch's NCHW images (with a policy: each row's uint8 views, None on error), sha256s and errors
        (the part every batch format shares)."""
        n = len(blobs)
        images: np.ndarray | list = (
            [None] * n if self.policy else np.zeros((n, 3, self.output_size, self.output_size), dtype=np.float32)
        )
        digests: list[str | None] = []
        errors: list[str | None] = []
        for i in range(n):
            blob = b"" if blobs[i] is None else bytes(blobs[i])
            prior = None if read_errors is None else read_errors[i]
            prior = prior if isinstance(prior, str) and prior else None
            array, digest, error = self.process(blob, prior, keys[i])
            if array is not None:
                images[i] = array
            digests.append(digest)
            errors.append(error)
        return images, digests, errors

    def _inputs(self, columns: dict[str, Any]) -> tuple[Sequence[Any], Sequence[Any] | None]:
        if "bytes" in columns:
            return columns["bytes"], columns.get("error")
        results = read_uris([str(p) for p in columns["path"]], self.storage)  # a manifest batch: read here
        return [r[0] for r in results], [r[1] for r in results]

    def __call__(self, batch: pd.DataFrame | dict[str, np.ndarray] | pa.Table) -> Any:
        dropped = ("bytes", "error", "sha256", "image")
        if isinstance(batch, pa.Table):  # exact column types pass through (what image_dataset uses)
            from ray.data.extensions import ArrowTensorArray

            wanted = [c for c in ("path", "bytes", "error") if c in batch.column_names]
            blobs, read_errors = self._inputs({c: batch.column(c).to_pylist() for c in wanted})
            keys = batch.column("path").to_pylist() if "path" in batch.column_names else range(batch.num_rows)
            images, digests, errors = self.run(blobs, read_errors, list(keys))
            out = batch.select([c for c in batch.column_names if c not in dropped])
            out = out.append_column("sha256", pa.array(digests, type=pa.string()))
            if self.policy is not None:
                out = append_views(out, self.policy, images)
            else:
                out = out.append_column("image", ArrowTensorArray.from_numpy(images))
            return out.append_column("error", pa.array(errors, type=pa.string()))
        as_pandas = isinstance(batch, pd.DataFrame)
        columns: dict[str, Any] = (
            {c: batch[c].to_numpy() for c in batch.columns} if as_pandas else dict(batch)  # type: ignore[union-attr]
        )
        blobs, read_errors = self._inputs(columns)
        n = len(blobs)
        images, digests, errors = self.run(blobs, read_errors, columns.get("path", np.arange(n)))
        if as_pandas:
            index = batch.index  # type: ignore[union-attr]
            frame = batch[[c for c in batch.columns if c not in dropped]].copy()  # type: ignore[index,union-attr]
            frame["sha256"] = pd.Series(digests, index=index, dtype=object)  # None stays None, not NaN
            frame["image"] = pd.Series(list(images), index=index, dtype=object)
            frame["error"] = pd.Series(errors, index=index, dtype=object)
            return frame
        out = {k: v for k, v in columns.items() if k not in dropped}
        out["sha256"] = np.array(digests, dtype=object)
        out["image"] = images
        out["error"] = np.array(errors, dtype=object)
        return out


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
    crop_size: int | None = None,
    policy: ViewPolicy | None = None,
):
    """The manifest read and decoded by `DecodePreprocess` in a small actor pool (Arrow batches): one
    stage, so no read task has to find a free CPU beside the actors (cf. `read_image_bytes`).

    Rows: every manifest column + `sha256`, `image` (float32 3 x size x size), `error`. With `augment`,
    `TrainAugment(size, augment_strength, crop=crop_size)` seeded per row by (augment_seed or 0, path); its
    images are then crop_size x crop_size native-resolution windows. Without `augment`, a view `policy` gives
    each row's uint8 views as scoring makes them instead of `image` (see `DecodePreprocess`)."""
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
        "storage_settings": settings.storage if settings else None,
        "crop_size": crop_size if augment else None,
        "policy": None if augment or policy is None else policy.to_dict(),
    }
    return manifest_dataset(df, rows_per_block).map_batches(
        DecodePreprocess,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="pyarrow",  # pass-through columns keep their Arrow types (no numpy round trip)
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors),
        num_cpus=actor_num_cpus,
    )
