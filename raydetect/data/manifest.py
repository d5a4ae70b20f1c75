"""Read a dataset root (local folder or `s3://bucket/prefix`) into a typed manifest DataFrame.

The input contract is DESIGN.md §1 (the Kaggle layout):

- `train.csv`: `file_name,label` (+ optional columns, carried through untouched; an unnamed leading index
  column is dropped); `file_name` is relative to the root; `label` is 0 = real, 1 = AI-generated.
- `test.csv`: `id` (a path relative to the root), no labels; labels are joined from `test_labels.csv`
  (`id,label` or `file_name,label`) when that file exists.
- A plain folder of images (unlabelled), or a folder with `real/` and `ai/` sub-folders (labelled).

The manifest has the columns `path` (absolute local path or `s3://` URI), `file_name` (relative to the
root, as in the CSV), `label` (pandas `Int64`: 0/1, `<NA>` when unlabelled), `split`, then every optional
column. `df.attrs["root"]` holds the normalised root. Bad input raises `ManifestError` saying what is wrong
and where (CSV line numbers), never a bare KeyError.
"""

from __future__ import annotations

import io
import posixpath
from pathlib import Path
from typing import Literal

import pandas as pd

from raydetect import storage
from raydetect.config import Settings, StorageSettings

TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
TEST_LABELS_CSV = "test_labels.csv"
REAL_DIR, AI_DIR = "real", "ai"
# Files with these suffixes are taken as images in folder mode. GIF/BMP/TIFF are listed so that they are
# *reported* as unsupported by verify and the readers instead of silently ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MANIFEST_COLUMNS = ("path", "file_name", "label", "split")
MAX_LISTED = 5  # offending rows quoted in an error message

Split = Literal["train", "test", "auto", "folder"]
MissingPolicy = Literal["raise", "keep"]


class ManifestError(ValueError):
    """The dataset root or its CSV does not follow the input contract (message says what and where)."""


def _storage_settings(settings: Settings | None) -> StorageSettings | None:
    return settings.storage if settings is not None else None


def _quote(items: list[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" … ({total - MAX_LISTED} more)" if total > MAX_LISTED else "")


def read_csv(uri: str, settings: Settings | None = None) -> pd.DataFrame:
    """A manifest CSV as strings-for-paths, the unnamed leading index column dropped."""
    try:
        data = storage.read_bytes(uri, _storage_settings(settings))
    except FileNotFoundError as exc:
        raise ManifestError(f"{uri}: no such file") from exc
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype={"file_name": str, "id": str, "group": str}, keep_default_na=True)
    except pd.errors.EmptyDataError as exc:
        raise ManifestError(f"{uri}: the file is empty (no header row)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{uri}: not a readable CSV ({exc})") from exc
    first = frame.columns[0] if len(frame.columns) else None
    if first is not None and (str(first).startswith("Unnamed: ") or str(first).strip() == ""):
        frame = frame.drop(columns=[first])
    return frame


def _require_columns(frame: pd.DataFrame, required: tuple[str, ...], uri: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{uri}: missing required column(s) {', '.join(repr(m) for m in missing)} "
            f"(found: {', '.join(repr(str(c)) for c in frame.columns) or 'none'})"
        )


def parse_labels(values: pd.Series, uri: str, allow_missing: bool = False) -> pd.Series:
    """0/1 labels as pandas Int64; anything else (2, -1, 0.5, 'cat', blank) is a `ManifestError`."""
    numeric = pd.to_numeric(values, errors="coerce")
    blank = values.isna() | values.astype(str).str.strip().eq("")
    bad = ~numeric.isin([0, 1])
    if allow_missing:
        bad &= ~blank
    if bad.any():
        rows = [f"line {i + 2}: {values.iloc[i]!r}" for i in range(len(values)) if bad.iloc[i]]
        raise ManifestError(f"{uri}: label must be 0 (real) or 1 (AI-generated); bad values at {_quote(rows)}")
    return numeric.where(~blank).astype("Int64")


def safe_relative(name: object) -> str | None:
    """`name` as a clean POSIX path inside the root, or None when it is empty, absolute, a URI, or escapes
    the root with `..`."""
    if not isinstance(name, str) or not name.strip():
        return None
    text = name.strip().replace("\\", "/")
    if "://" in text or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return None
    clean = posixpath.normpath(text)
    if clean in (".", "") or clean == ".." or clean.startswith("../"):
        return None
    return clean


def _resolve_paths(root: str, names: pd.Series, uri: str, column: str) -> pd.Series:
    clean = names.map(safe_relative)
    bad = clean.isna()
    if bad.any():
        rows = [f"line {i + 2}: {names.iloc[i]!r}" for i in range(len(names)) if bad.iloc[i]]
        raise ManifestError(
            f"{uri}: {column!r} must be a path relative to the dataset root that stays inside it "
            f"(no '..', no absolute paths); bad values at {_quote(rows)}"
        )
    return clean.map(lambda rel: storage.join(root, rel))


def _existing(root: str, paths: pd.Series, settings: Settings | None) -> pd.Series:
    """Whether each path exists: one listing on S3 (not one HEAD per file), a stat per file locally."""
    if storage.is_s3(root):
        listed = set(storage.list_files(root, _storage_settings(settings)))
        return paths.isin(listed)
    return paths.map(lambda p: Path(p).is_file())


def _check_missing(root: str, frame: pd.DataFrame, uri: str, settings: Settings | None) -> None:
    present = _existing(root, frame["path"], settings)
    if not present.all():
        names = frame.loc[~present, "file_name"].tolist()
        raise ManifestError(
            f"{uri}: {len(names)} listed file(s) do not exist under {root}: {_quote(names)} "
            "(run `raydetect data verify` for a full report)"
        )


def _finish(frame: pd.DataFrame, root: str, split: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["split"] = split
    extra = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    frame = frame[[*MANIFEST_COLUMNS, *extra]].reset_index(drop=True)
    frame.attrs["root"] = root
    return frame


def _from_train_csv(root: str, settings: Settings | None, missing: MissingPolicy) -> pd.DataFrame:
    uri = storage.join(root, TRAIN_CSV)
    frame = read_csv(uri, settings)
    _require_columns(frame, ("file_name", "label"), uri)
    if frame.empty:
        raise ManifestError(f"{uri}: has a header but no rows")
    frame["label"] = parse_labels(frame["label"], uri)
    frame.insert(0, "path", _resolve_paths(root, frame["file_name"], uri, "file_name"))
    if missing == "raise":
        _check_missing(root, frame, uri, settings)
    return _finish(frame, root, "train")


def _from_test_csv(root: str, settings: Settings | None, missing: MissingPolicy) -> pd.DataFrame:
    uri = storage.join(root, TEST_CSV)
    frame = read_csv(uri, settings)
    key = "id" if "id" in frame.columns else "file_name" if "file_name" in frame.columns else None
    if key is None:
        _require_columns(frame, ("id",), uri)
    if frame.empty:
        raise ManifestError(f"{uri}: has a header but no rows")
    frame.insert(0, "path", _resolve_paths(root, frame[key], uri, key))
    if key != "file_name":
        frame.insert(1, "file_name", frame[key])
    labels_uri = storage.join(root, TEST_LABELS_CSV)
    if "label" in frame.columns:
        frame["label"] = parse_labels(frame["label"], uri, allow_missing=True)
    elif storage.exists(labels_uri, _storage_settings(settings)):
        labels = read_csv(labels_uri, settings)
        lkey = "id" if "id" in labels.columns else "file_name"
        _require_columns(labels, (lkey, "label"), labels_uri)
        labels["label"] = parse_labels(labels["label"], labels_uri, allow_missing=True)
        labels["_key"] = labels[lkey].map(lambda v: safe_relative(v) or v)  # join on the normalised path
        if labels["_key"].duplicated().any():
            dups = labels.loc[labels["_key"].duplicated(), lkey].tolist()
            raise ManifestError(f"{labels_uri}: ids listed more than once: {_quote(dups)}")
        indexed = labels.set_index("_key")
        keys = frame[key].map(lambda v: safe_relative(v) or v)
        frame["label"] = keys.map(indexed["label"]).astype("Int64")
        # Carry the labels file's optional columns (category, group, generator, processing, …) too.
        for column in indexed.columns:
            if column not in frame.columns and column not in (lkey, "label"):
                frame[column] = keys.map(indexed[column])
    else:
        frame["label"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    if missing == "raise":
        _check_missing(root, frame, uri, settings)
    return _finish(frame, root, "test")


def _is_image_name(path: str) -> bool:
    name = posixpath.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _from_folder(root: str, settings: Settings | None) -> pd.DataFrame:
    files = [p for p in storage.list_files(root, _storage_settings(settings)) if _is_image_name(p)]
    prefix = root.rstrip("/") + "/"
    rel = [p[len(prefix) :] if p.startswith(prefix) else posixpath.basename(p) for p in files]
    labelled = any(r.startswith((f"{REAL_DIR}/", f"{AI_DIR}/")) for r in rel)
    rows = []
    for path, name in zip(files, rel, strict=True):
        if labelled:
            top = name.split("/", 1)[0]
            if top not in (REAL_DIR, AI_DIR):
                continue  # in labelled mode only real/ and ai/ count
            label = 0 if top == REAL_DIR else 1
        else:
            label = pd.NA
        rows.append({"path": path, "file_name": name, "label": label})
    if not rows:
        raise ManifestError(f"{root}: no {TRAIN_CSV}, and no image files ({', '.join(IMAGE_SUFFIXES)}) found under it")
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].astype("Int64")
    return _finish(frame, root, "train" if labelled else "folder")


def read_manifest(
    root: str | Path,
    split: Split = "train",
    settings: Settings | None = None,
    missing: MissingPolicy = "raise",
) -> pd.DataFrame:
    """The manifest of `root` (see the module doc).

    split: "train" (train.csv; a folder with real/ + ai/ when there is no train.csv), "test" (test.csv
    [+ test_labels.csv]), "auto" (train.csv when present, else folder mode), "folder" (list images,
    ignore CSVs). missing: "raise" (default) fails on listed files that do not exist; "keep" keeps them
    (verify reports them, the readers turn them into error rows).
    """
    root_uri = storage.normalize(root)
    sset = _storage_settings(settings)
    if not storage.is_s3(root_uri) and not Path(root_uri).is_dir():
        raise ManifestError(f"{root_uri}: dataset root is not a directory")
    has_train = storage.exists(storage.join(root_uri, TRAIN_CSV), sset)
    if split == "train":
        if has_train:
            return _from_train_csv(root_uri, settings, missing)
        frame = _from_folder(root_uri, settings) if _has_label_dirs(root_uri, sset) else None
        if frame is None:
            raise ManifestError(f"{root_uri}: no {TRAIN_CSV} and no {REAL_DIR}/ + {AI_DIR}/ sub-folders")
        return frame
    if split == "test":
        return _from_test_csv(root_uri, settings, missing)
    if split == "auto":
        return _from_train_csv(root_uri, settings, missing) if has_train else _from_folder(root_uri, settings)
    if split == "folder":
        return _from_folder(root_uri, settings)
    raise ManifestError(f"unknown split {split!r} (train, test, auto, folder)")


def _has_label_dirs(root: str, sset: StorageSettings | None) -> bool:
    return any(storage.exists(storage.join(root, d), sset) for d in (REAL_DIR, AI_DIR))
