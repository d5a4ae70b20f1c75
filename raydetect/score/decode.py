"""The CPU stage of batch scoring: (read) → sha256 → skip what a resumed run already has → safe decode →
the model's views (`models.views.make_views`, per view policy), as uint8.

The stage ends at the uint8 views on purpose: they move a quarter of the bytes float32 tensors would through
the object store, and the model actor normalises them (`models.views.normalize`). Every failure (unreadable,
empty, oversized, not an image, corrupt, truncated, too many pixels, too small) becomes a row with `error`
set; nothing raises.
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
from raydetect.data.images import DecodeLimits, deferrable_jpeg, sha256_hex, try_decode
from raydetect.models.views import ViewError, ViewPolicy, append_views, make_views, view_boxes

DONE_SHA = "_done_sha"  # sha256 of the row a resumed run already holds for this path ("" when none)
BYTES = "bytes"
ERROR = "error"
SHA256 = "sha256"
WIDTH, HEIGHT, VIEWS = "width", "height", "views"
JPEG = "_jpeg"  # a JPEG left for the model actor to decode on its device (empty: the views are here)
INTERNAL = (DONE_SHA, BYTES, JPEG)


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


def image_views(
    data: bytes, policies: Sequence[ViewPolicy], limits: DecodeLimits
) -> tuple[list[np.ndarray] | None, tuple[int, int] | None, str | None]:
    """Decode safely; (one uint8 (N, h, w, 3) views array per policy, (width, height), None) or
    (None, size or None, "reason: message")."""
    image, error = try_decode(data, limits)
    if image is None:
        return None, None, error
    try:
        return [make_views(image, p) for p in policies], image.size, None
    except ViewError as exc:
        return None, image.size, str(exc)
    except Exception as exc:  # noqa: BLE001 - a view failure is still an error row, never a crash
        return None, image.size, f"corrupt: making the model's views failed ({type(exc).__name__}: {exc})"


def deferred_views(
    data: bytes, policies: Sequence[ViewPolicy], limits: DecodeLimits
) -> tuple[tuple[int, int], int] | None:
    """((width, height), views of the first policy) for a JPEG the model actor will decode on its device
    (GPU preprocessing; `data.images.deferrable_jpeg`), None when it must be decoded here. Every policy
    must be able to cut it, or the actor's `tensor_views` would fail where the CPU stage makes an error row."""
    size = deferrable_jpeg(data, limits)
    if size is None:
        return None
    try:
        counts = [len(view_boxes(*size, policy)) for policy in policies]
    except ViewError:
        return None  # too small: decoded here, and the error row says so
    return size, counts[0]


def decode_batch(
    batch: pa.Table,
    policies: Sequence[ViewPolicy | dict],
    limits: DecodeLimits | None = None,
    storage_settings: StorageSettings | None = None,
    defer_jpeg: bool = False,
) -> pa.Table:
    """`map_batches(batch_format="pyarrow")` function. Input: `path`, carried columns, optional `bytes` and
    `error` (from the data layer's reader; read here when absent), optional `_done_sha`. Output: carried
    columns + `sha256`, `error`, `width`, `height`, `views` (how many views the first policy made) and the
    views of each policy (`models.views.append_views`); rows whose sha256 equals `_done_sha` are dropped
    (a resumed run already scored them). With `defer_jpeg`, JPEGs the model actor can decode on its device
    keep their bytes in `_jpeg` and get no views here (GPU preprocessing: nvJPEG and tensor views there)."""
    limits = limits or DecodeLimits()
    policies = [p if isinstance(p, ViewPolicy) else ViewPolicy(**p) for p in policies]
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
    sizes: list[tuple[int, int] | None] = []
    views: list[list[np.ndarray | None]] = [[] for _ in policies]
    jpegs: list[bytes] = []
    counts: list[int | None] = []
    for i, blob in enumerate(blobs):
        if isinstance(blob, ReadFailure):
            sha, error = blob.sha256, blob.error
        else:
            sha, error = sha256_hex(blob), read_errors[i]
        if sha is not None and done[i] == sha:
            keep[i] = False  # a resumed run already holds this exact input's row
            continue
        arrays, size, deferred = None, None, None
        if error is None and defer_jpeg and policies:
            deferred = deferred_views(blob, policies, limits)
        if deferred is not None:
            size = deferred[0]
        elif error is None:
            arrays, size, error = image_views(blob, policies, limits)
        shas.append(sha)
        errors.append(error)
        sizes.append(size)
        jpegs.append(blob if deferred is not None else b"")
        counts.append(deferred[1] if deferred is not None else len(arrays[0]) if arrays else None)
        for k in range(len(policies)):
            views[k].append(arrays[k] if arrays is not None else None)

    drop = [c for c in (*INTERNAL, ERROR, SHA256, WIDTH, HEIGHT, VIEWS) if c in batch.column_names]
    out = batch.drop_columns(drop)
    if not keep.all():
        out = out.filter(pa.array(keep))
    out = out.append_column(SHA256, pa.array(shas, type=pa.string()))
    out = out.append_column(ERROR, pa.array(errors, type=pa.string()))
    out = out.append_column(WIDTH, pa.array([s[0] if s else None for s in sizes], type=pa.int32()))
    out = out.append_column(HEIGHT, pa.array([s[1] if s else None for s in sizes], type=pa.int32()))
    out = out.append_column(VIEWS, pa.array(counts, type=pa.int32()))
    for policy, rows in zip(policies, views, strict=True):
        out = append_views(out, policy, rows)
    if defer_jpeg:
        out = out.append_column(JPEG, pa.array(jpegs, type=pa.large_binary()))
    return out
