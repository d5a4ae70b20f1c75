"""The output folder of a scoring run: `OUTPUT/run=<run_id>/*.parquet` + `_SUCCESS` (JSON, written last).

Resuming is built on the outputs themselves (they are the checkpoint): a re-run with the same run id reads
the key columns of the Parquet files already there, deletes files an interrupted write left unreadable,
skips inputs whose (path, sha256, model name, model version) already has a row, and at the end
`consolidate` rewrites any file holding a row that is stale (a path no longer in the inputs, an older row
for a path that was re-scored because its bytes or the model changed) so that the run ends with exactly one
row per input. Names starting with `_` or `.` are not data (pyarrow and Ray Data skip them on read).
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydetect import storage
from raydetect.config import StorageSettings

SUCCESS = "_SUCCESS"
SUMMARY = "_SUMMARY.json"
KEY_COLUMNS = ["path", "sha256", "model_name", "model_version", "scored_at"]
COUNT_COLUMNS = [*KEY_COLUMNS, "decision", "error"]


def default_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def run_uri(output: str, run_id: str) -> str:
    if not run_id or "/" in run_id or run_id.startswith((".", "_")):
        raise ValueError(f"run id {run_id!r} must be non-empty, without '/', not starting with '.' or '_'")
    return storage.join(output, f"run={run_id}")


def _fs(uri: str, settings: StorageSettings | None) -> tuple[pafs.FileSystem, str]:
    return storage.pyarrow_fs(uri, settings)


def list_parts(run: str, settings: StorageSettings | None = None) -> list[str]:
    """The Parquet files of a run (filesystem paths, sorted); [] when the run folder does not exist."""
    fs, base = _fs(run, settings)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
    out = []
    for info in infos:
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(".parquet") and not name.startswith(("_", ".")):
            out.append(info.path)
    return sorted(out)


class ForeignPartError(ValueError):
    """A readable Parquet file in a run folder that is not a prediction part (columns missing)."""


def _read_one(fs: pafs.FileSystem, path: str, columns: list[str] | None) -> pa.Table | None:
    """The table, or None when the file has no readable footer (an interrupted write)."""
    with fs.open_input_file(path) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (OSError, pa.ArrowException, ValueError):
            return None
        missing = [c for c in columns or [] if c not in parquet.schema_arrow.names]
        if missing:
            raise ForeignPartError(f"{path} is not a prediction file of this run (no column {missing[0]!r})")
        return parquet.read(columns=columns)


def read_rows(
    run: str, columns: list[str] | None = None, settings: StorageSettings | None = None, threads: int = 8
) -> tuple[pd.DataFrame, list[str]]:
    """The rows of every readable part (with a `_file` column), and the paths of unreadable parts."""
    fs, _ = _fs(run, settings)
    parts = list_parts(run, settings)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(parts) or 1))) as pool:
        tables = list(pool.map(lambda p: _read_one(fs, p, columns), parts))
    frames, bad = [], []
    for path, table in zip(parts, tables, strict=True):
        if table is None:
            bad.append(path)
            continue
        frame = table.to_pandas()
        frame["_file"] = path
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*(columns or KEY_COLUMNS), "_file"]), bad
    return pd.concat(frames, ignore_index=True), bad


def count_rows(parts: Iterable[str], run: str, settings: StorageSettings | None = None) -> int:
    """Rows in these parts, from their footers (unreadable parts count 0)."""
    fs, _ = _fs(run, settings)
    total = 0
    for path in parts:
        try:
            with fs.open_input_file(path) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        except (OSError, pa.ArrowException, ValueError):
            pass
    return total


def delete_parts(paths: Iterable[str], run: str, settings: StorageSettings | None = None) -> None:
    fs, _ = _fs(run, settings)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)


def done_shas(rows: pd.DataFrame, model_name: str, model_version: str) -> dict[str, str]:
    """path -> sha256 of the rows already scored by this model (name and version); a resumed run skips an
    input whose bytes still have that sha256."""
    if rows.empty:
        return {}
    mine = rows[(rows["model_name"] == model_name) & (rows["model_version"] == model_version)]
    mine = mine[mine["sha256"].notna()].sort_values("scored_at", kind="stable")
    return dict(zip(mine["path"], mine["sha256"], strict=True))


def stale_rows(rows: pd.DataFrame, input_paths: set[str]) -> pd.Series:
    """True for rows to drop: a path not among the inputs, or any but the newest row of a path."""
    if rows.empty:
        return pd.Series([], dtype=bool)
    order = rows.assign(_i=range(len(rows))).sort_values(["scored_at", "_i"], kind="stable")
    newest = ~order.duplicated(subset="path", keep="last")
    newest = newest.reindex(rows.index)
    return ~rows["path"].isin(input_paths) | ~newest


def _write_table(table: pa.Table, path_in_fs: str, run: str, settings: StorageSettings | None) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    uri = ("s3://" + path_in_fs) if storage.is_s3(run) else path_in_fs
    storage.write_bytes(uri, buffer.getvalue(), settings)  # local: atomic temp file + rename


def consolidate(
    run: str, input_paths: set[str], settings: StorageSettings | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Make the run hold exactly one row per input: drop stale rows (rewriting the files that hold them,
    new file first, then the old one deleted) and unreadable files. Returns the remaining rows (count
    columns) and what was done."""
    rows, bad = read_rows(run, COUNT_COLUMNS, settings)
    delete_parts(bad, run, settings)
    stale = stale_rows(rows, input_paths)
    touched = sorted(set(rows.loc[stale, "_file"])) if len(rows) else []
    fs, _ = _fs(run, settings)
    for path in touched:
        table = _read_one(fs, path, None)
        if table is None:
            continue
        keep_mask = ~stale[rows["_file"] == path]
        keep_idx = [i for i, k in enumerate(keep_mask.tolist()) if k]
        if keep_idx:
            parent = path.rsplit("/", 1)[0]
            _write_table(
                table.take(pa.array(keep_idx)), f"{parent}/rewritten_{uuid.uuid4().hex}.parquet", run, settings
            )
        delete_parts([path], run, settings)
    final = rows.loc[~stale].drop(columns=["_file"]).reset_index(drop=True) if len(rows) else rows
    return final, {
        "stale_rows_dropped": int(stale.sum()) if len(rows) else 0,
        "files_rewritten": len(touched),
        "broken_files_removed": len(bad),
    }


def write_success(run: str, manifest: dict[str, Any], settings: StorageSettings | None = None) -> None:
    storage.write_text(storage.join(run, SUCCESS), json.dumps(manifest, indent=2, default=str), settings)


def read_success(run: str, settings: StorageSettings | None = None) -> dict[str, Any] | None:
    uri = storage.join(run, SUCCESS)
    if not storage.exists(uri, settings):
        return None
    return json.loads(storage.read_text(uri, settings))


def remove_success(run: str, settings: StorageSettings | None = None) -> None:
    fs, base = _fs(storage.join(run, SUCCESS), settings)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(base)
