"""What to score: a dataset root (Kaggle layout), a plain folder or `s3://` prefix, or a manifest file.

Everything becomes one DataFrame with a `path` column (absolute local path or `s3://` URI, unique) plus the
manifest's other columns, which are carried into the predictions (`file_name`, `label`, `split`, `group`…).
"""

from __future__ import annotations

import io
import posixpath

import pandas as pd

from raydetect import storage
from raydetect.config import Settings
from raydetect.data.manifest import ManifestError, read_manifest
from raydetect.score.predictor import CONTRACT_COLUMNS

MANIFEST_SUFFIXES = (".csv", ".parquet", ".txt", ".lst")
SPLITS = ("auto", "train", "test", "folder", "all")


def _is_file(uri: str, settings: Settings | None) -> bool:
    fs, path = storage.fsspec_fs(uri, settings.storage if settings else None)
    try:
        return bool(fs.isfile(path))
    except Exception:  # noqa: BLE001 - an unreachable prefix is reported by read_manifest
        return False


def _manifest_file(uri: str, settings: Settings | None) -> pd.DataFrame:
    """A CSV / Parquet manifest (column `path`, else `file_name` or `id` relative to the file's folder) or a
    text file with one path per line."""
    data = storage.read_bytes(uri, settings.storage if settings else None)
    lower = uri.lower()
    if lower.endswith(".parquet"):
        frame = pd.read_parquet(io.BytesIO(data))
    elif lower.endswith(".csv"):
        frame = pd.read_csv(io.BytesIO(data), dtype={"path": str, "file_name": str, "id": str, "group": str})
        first = frame.columns[0] if len(frame.columns) else ""
        if str(first).startswith("Unnamed: "):
            frame = frame.drop(columns=[first])
    else:
        lines = [line.strip() for line in data.decode("utf-8").splitlines()]
        frame = pd.DataFrame({"path": [line for line in lines if line and not line.startswith("#")]})
    key = next((c for c in ("path", "file_name", "id") if c in frame.columns), None)
    if key is None:
        raise ManifestError(f"{uri}: a manifest needs a 'path', 'file_name' or 'id' column")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."

    def resolve(value: object) -> str:
        text = str(value).strip()
        if storage.is_s3(text) or text.startswith(("/", "file://")):
            return storage.normalize(text)
        return storage.join(base, posixpath.normpath(text))

    if frame[key].isna().any():
        raise ManifestError(f"{uri}: {key!r} is empty on {int(frame[key].isna().sum())} row(s)")
    paths = frame[key].map(resolve)
    frame = frame.drop(columns=["path"], errors="ignore")
    frame.insert(0, "path", paths)
    if "label" in frame.columns:
        frame["label"] = pd.to_numeric(frame["label"], errors="coerce").astype("Int64")
    return frame


def list_inputs(input_uri: str, split: str = "auto", settings: Settings | None = None) -> pd.DataFrame:
    """The inputs of a scoring run, one row per unique `path` (first occurrence kept).

    split (dataset roots only): auto (train.csv when present, else every image under the folder), train,
    test, folder (ignore CSVs), all (train.csv + test.csv). Listed files that do not exist are kept: they
    become error rows, so a run never loses an input silently."""
    if split not in SPLITS:
        raise ManifestError(f"unknown split {split!r} ({', '.join(SPLITS)})")
    uri = storage.normalize(input_uri)
    if _is_file(uri, settings):
        if not uri.lower().endswith(MANIFEST_SUFFIXES):
            raise ManifestError(f"{uri}: a manifest file must be one of {', '.join(MANIFEST_SUFFIXES)}")
        frame = _manifest_file(uri, settings)
    elif split == "all":
        parts = [read_manifest(uri, "train", settings, missing="keep")]
        if storage.exists(storage.join(uri, "test.csv"), settings.storage if settings else None):
            parts.append(read_manifest(uri, "test", settings, missing="keep"))
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = read_manifest(uri, split, settings, missing="keep")  # type: ignore[arg-type]
    frame = frame.drop(columns=[c for c in frame.columns if c in CONTRACT_COLUMNS and c != "path"])
    frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("_") or c == "bytes"])
    frame = frame.drop_duplicates(subset="path", keep="first").reset_index(drop=True)
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].astype("string")  # one Arrow type per column in every block
    if frame.empty:
        raise ManifestError(f"{uri}: nothing to score")
    return frame
