"""The CPU stage of batch scoring: (read) → sha256 → skip what a resumed run already has → safe decode →
resize + centre crop, as uint8.

The stage ends at the uint8 crop on purpose: it moves a quarter of the bytes a float32 tensor would through
the object store, and the model actor does the normalisation (`predictor.normalize_batch`), which is the
same arithmetic as `transforms.preprocess` and gives bit-identical tensors (a unit test holds it to that).
Every failure (unreadable, empty, oversized, not an image, corrupt, truncated, too many pixels) becomes a row
with `error` set; nothing raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from raydetect import storage
from raydetect.config import StorageSettings
from raydetect.data.images import DecodeLimits, sha256_hex, try_decode
from raydetect.data.transforms import resize_center_crop

DONE_SHA = "_done_sha"  # sha256 of the row a resumed run already holds for this path ("" when none)
BYTES = "bytes"
ERROR = "error"
SHA256 = "sha256"
IMAGE_PREFIX = "_image_"
INTERNAL = (DONE_SHA, BYTES)


def image_column(size: int) -> str:
    """The uint8 HxWx3 crop column for one input size (an ensemble may need several sizes)."""
    return f"{IMAGE_PREFIX}{size}"


@dataclass(frozen=True)
class ReadFailure:
    """A file that cannot be scored before decoding: missing, unreadable, or over the byte limit (its
    sha256 is still computed, streamed, so a resumed run recognises it)."""

    error: str
    sha256: str | None = None


def _read_error(path: str, exc: BaseException) -> ReadFailure:
    if isinstance(exc, FileNotFoundError):
        return ReadFailure(f"missing: {path} does not exist")
    if isinstance(exc, IsADirectoryError):
        return ReadFailure(f"unreadable: {path} is a directory")
    return ReadFailure(f"unreadable: {type(exc).__name__}: {exc}")


def _oversized(head: bytes, rest: BinaryIO, max_bytes: int) -> ReadFailure:
    digest, size = hashlib.sha256(head), len(head)
    while chunk := rest.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return ReadFailure(f"too_large: {size} bytes is over the {max_bytes}-byte limit", digest.hexdigest())


def read_capped(
    paths: Sequence[str],
    max_bytes: int,
    settings: StorageSettings | None = None,
    threads: int = 8,
) -> list[bytes | ReadFailure]:
    """The bytes of each path, never holding more than `max_bytes` + 1 of one file in memory; a failure or an
    oversized file gives a `ReadFailure`. One filesystem per call; S3 reads are one ranged GET each and run
    concurrently."""
    out: list[bytes | ReadFailure] = [b""] * len(paths)
    s3 = [i for i, p in enumerate(paths) if storage.is_s3(p)]
    if s3:
        fs, _ = storage.fsspec_fs(paths[s3[0]], settings)

        def fetch(i: int) -> bytes | ReadFailure:
            key = storage.strip_scheme(paths[i])
            try:
                try:
                    head = fs.cat_file(key, start=0, end=max_bytes + 1)  # one ranged GET
                except FileNotFoundError:
                    raise
                except Exception:  # noqa: BLE001 - e.g. a range on a 0-byte object (416): read it plainly
                    with fs.open(key, "rb") as handle:
                        head = handle.read(max_bytes + 1)
                if len(head) <= max_bytes:
                    return head
                with fs.open(key, "rb") as handle:
                    handle.seek(len(head))
                    return _oversized(head, handle, max_bytes)
            except Exception as exc:  # noqa: BLE001 - any I/O failure becomes an error row
                return _read_error(paths[i], exc)

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(s3)))) as pool:
            for i, value in zip(s3, pool.map(fetch, s3), strict=True):
                out[i] = value
    for i, path in enumerate(paths):
        if storage.is_s3(path):
            continue
        try:
            with open(storage.strip_scheme(path), "rb") as handle:
                head = handle.read(max_bytes + 1)
                out[i] = head if len(head) <= max_bytes else _oversized(head, handle, max_bytes)
        except Exception as exc:  # noqa: BLE001
            out[i] = _read_error(path, exc)
    return out


def crop_uint8(data: bytes, sizes: Sequence[int], limits: DecodeLimits) -> tuple[list[np.ndarray] | None, str | None]:
    """Decode safely and return one uint8 HxWx3 crop per size, or (None, "reason: message")."""
    image, error = try_decode(data, limits)
    if image is None:
        return None, error
    try:
        return [np.asarray(resize_center_crop(image, s), dtype=np.uint8) for s in sizes], None
    except Exception as exc:  # noqa: BLE001 - a resize failure is still an error row, never a crash
        return None, f"corrupt: resize failed ({type(exc).__name__}: {exc})"


def decode_batch(
    batch: pa.Table,
    sizes: Sequence[int],
    limits: DecodeLimits | None = None,
    storage_settings: StorageSettings | None = None,
) -> pa.Table:
    """`map_batches(batch_format="pyarrow")` function. Input: `path`, carried columns, optional `bytes` and
    `error` (from the data layer's reader; read here when absent), optional `_done_sha`. Output: carried
    columns + `sha256`, `error` and one `_image_<size>` tensor column per size; rows whose sha256 equals
    `_done_sha` are dropped (a resumed run already scored them)."""
    from ray.data.extensions import ArrowTensorArray

    limits = limits or DecodeLimits()
    sizes = list(sizes)
    n = batch.num_rows
    paths = batch.column("path").to_pylist()
    if BYTES in batch.column_names:
        blobs: list[bytes | ReadFailure] = [b if b is not None else b"" for b in batch.column(BYTES).to_pylist()]
    else:
        blobs = read_capped(paths, limits.max_bytes, storage_settings)
    read_errors = batch.column(ERROR).to_pylist() if ERROR in batch.column_names else [None] * n
    done = batch.column(DONE_SHA).to_pylist() if DONE_SHA in batch.column_names else [None] * n

    keep = np.ones(n, dtype=bool)
    shas: list[str | None] = []
    errors: list[str | None] = []
    crops: list[list[np.ndarray]] = [[] for _ in sizes]
    blank = [np.zeros((s, s, 3), dtype=np.uint8) for s in sizes]
    for i, blob in enumerate(blobs):
        if isinstance(blob, ReadFailure):
            sha, error = blob.sha256, blob.error
        else:
            sha, error = sha256_hex(blob), read_errors[i]
        if sha is not None and done[i] == sha:
            keep[i] = False  # a resumed run already holds this exact input's row
            continue
        arrays: list[np.ndarray] | None = None
        if error is None:
            arrays, error = crop_uint8(blob, sizes, limits)
        shas.append(sha)
        errors.append(error)
        for k in range(len(sizes)):
            crops[k].append(arrays[k] if arrays is not None else blank[k])

    drop = [c for c in (*INTERNAL, ERROR, SHA256) if c in batch.column_names]
    out = batch.drop_columns(drop)
    if not keep.all():
        out = out.filter(pa.array(keep))
    out = out.append_column(SHA256, pa.array(shas, type=pa.string()))
    out = out.append_column(ERROR, pa.array(errors, type=pa.string()))
    for k, size in enumerate(sizes):
        stacked = np.stack(crops[k]) if crops[k] else np.zeros((0, size, size, 3), dtype=np.uint8)
        out = out.append_column(image_column(size), ArrowTensorArray.from_numpy(stacked))
    return out
