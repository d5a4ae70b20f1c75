"""`raydetect data verify`: a data-quality report and a shortcut audit, computed on Ray Data.

One pass over the files (a Ray Data job: read bytes -> `inspect_bytes`, in parallel tasks) collects, per
file, container facts (format, width x height, colour mode, JPEG quality estimated from the quantisation
tables, the tables' signature, chroma subsampling, metadata present), the byte size, the SHA-256, a
64-bit difference hash (dHash) and, when it cannot be decoded, why. The driver then analyses that table
with plain pandas (`analyse`, testable without Ray):

- problems: missing, zero-byte, corrupt, truncated, unsupported files (blocking unless allowed);
- exact duplicates (same SHA-256; the same bytes under both labels is blocking) and near-duplicates
  (dHash within `near_dup_distance` bits), offered as groups when the CSV has no `group` column;
- class balance and per-class distributions of format, JPEG quality, width x height, mode, file size;
- the shortcut audit: for each trivial feature, the AUC of a one-feature classifier (rank AUC for numbers;
  out-of-fold target encoding for categories, so a feature unique to each image scores ~0.5, not 1).
  Container facts above `auc_threshold` (default 0.9) are blocking. Content features are reported: file
  size (generated images compress differently) and sharpness / high-frequency energy of the decoded pixels
  (`raydetect.data.content`; scored both as a rank and in 16 quantile bins, so a band of values that
  stands for one class counts too). They describe the images themselves, which a detector may partly
  rely on for good reason, so they block only when `content_auc_limit` is set and exceeded (DESIGN.md §2).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from raydetect import storage
from raydetect.config import Settings
from raydetect.data.content import CONTENT_FEATURES, content_features
from raydetect.data.images import DecodeLimits, ImageDecodeError, decode_image, sha256_hex, sniff_format
from raydetect.data.manifest import TEST_CSV, TRAIN_CSV, read_csv, read_manifest

# The IJG (libjpeg) standard luminance quantisation table, natural (row-major) order, as Pillow reports it.
STD_LUMINANCE = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.int64,
)  # fmt: skip
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
HASH_SIZE = 8  # dHash: 9x8 grey thumbnail -> 64 bits

# Features of the shortcut audit: (column, kind, blocking). Container facts block; content is reported
# (and blocks only above `VerifyOptions.content_auc_limit`, when set).
AUDIT_FEATURES: tuple[tuple[str, str, bool], ...] = (
    ("format", "category", True),
    ("width_x_height", "category", True),
    ("width", "number", True),
    ("height", "number", True),
    ("pixels", "number", True),
    ("mode", "category", True),
    ("jpeg_quality", "number", True),
    ("jpeg_qtables", "category", True),
    ("jpeg_subsampling", "category", True),
    ("metadata", "category", True),
    ("file_size", "number", False),
    *((name, "content", False) for name in CONTENT_FEATURES),
)
FACT_SCHEMA = pa.schema(
    [
        ("file_size", pa.int64()),
        ("sha256", pa.string()),
        ("format", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("mode", pa.string()),
        ("jpeg_quality", pa.int64()),
        ("jpeg_qtables", pa.string()),
        ("jpeg_subsampling", pa.string()),
        ("metadata", pa.string()),
        ("dhash", pa.string()),
        *((name, pa.float64()) for name in CONTENT_FEATURES),
        ("error", pa.string()),
    ]
)
CLASS_NAMES = {0: "real", 1: "ai"}


@dataclass
class VerifyOptions:
    """Knobs of a verify run (the CLI's flags)."""

    near_dup_distance: int = 4  # dHash bits that may differ for two images to count as near-duplicates
    auc_threshold: float = 0.9  # a blocking feature whose one-feature AUC is above this fails the audit
    content_auc_limit: float | None = None  # content features (file size, sharpness) block above this; None: reported
    allow_bad_files: bool = False  # unreadable files become a warning instead of blocking
    include_test: bool = True  # with train.csv, also read test.csv (train/test duplicates = leakage)
    max_listed: int = 200  # per list in the JSON report (clusters, problems); counts are always complete
    rows_per_block: int = 128
    batch_size: int = 32
    seed: int = 0


# --- per-file facts (plain Python) -----------------------------------------------------------------


def jpeg_quality(quantization: dict[int, Any] | None) -> int | None:
    """The IJG quality (1-100) whose scaled standard luminance table is nearest the file's table."""
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.int64)
    if table.size != 64:
        return None
    best, best_err = None, math.inf
    for q in range(1, 101):
        scale = 5000 // q if q < 50 else 200 - 2 * q
        candidate = np.clip((STD_LUMINANCE * scale + 50) // 100, 1, 255)
        err = float(np.abs(candidate - table).sum())
        if err < best_err:
            best, best_err = q, err
    return best


def _metadata(image: Image.Image) -> str:
    info = image.info
    found = []
    try:
        if info.get("exif") or len(image.getexif()) > 0:
            found.append("exif")
    except Exception:  # noqa: BLE001 - a broken EXIF block is still "exif present"
        found.append("exif")
    if info.get("icc_profile"):
        found.append("icc")
    if info.get("xmp") or info.get("XML:com.adobe.xmp"):
        found.append("xmp")
    if info.get("comment"):
        found.append("comment")
    standard = {"dpi", "gamma", "transparency", "aspect", "srgb", "chromaticity", "interlace", "exif", "icc_profile"}
    if image.format == "PNG" and any(k not in standard and not k.startswith("XML") for k in info):
        found.append("text")
    return "+".join(found) or "none"


def dhash(image: Image.Image, size: int = HASH_SIZE) -> int:
    """A 64-bit difference hash: grey (size+1) x size thumbnail, one bit per left<right neighbour pair."""
    grey = image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = np.asarray(grey, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def inspect_bytes(data: bytes, limits: DecodeLimits | None = None) -> dict[str, Any]:
    """The facts of one file (see `FACT_SCHEMA`); `error` says why it cannot be decoded."""
    facts: dict[str, Any] = dict.fromkeys(FACT_SCHEMA.names)
    facts["file_size"] = len(data)
    facts["sha256"] = sha256_hex(data)
    facts["format"] = sniff_format(data) or "unknown"
    try:
        header = Image.open(io.BytesIO(data))
        facts["width"], facts["height"] = header.size
        facts["mode"] = header.mode
        facts["metadata"] = _metadata(header)
        if header.format == "JPEG":
            from PIL import JpegImagePlugin

            quantization = getattr(header, "quantization", None)
            facts["jpeg_quality"] = jpeg_quality(quantization)
            if quantization:
                flat = ",".join(f"{k}:" + " ".join(str(int(v)) for v in t) for k, t in sorted(quantization.items()))
                facts["jpeg_qtables"] = hashlib.sha1(flat.encode(), usedforsecurity=False).hexdigest()[:12]
            facts["jpeg_subsampling"] = SUBSAMPLING.get(JpegImagePlugin.get_sampling(header), "other")
    except Exception:  # noqa: BLE001 - header facts are best effort; decode_image below gives the reason  # nosec B110
        pass
    try:
        image = decode_image(data, limits)
        facts["dhash"] = f"{dhash(image):016x}"
        facts.update(content_features(image))
    except ImageDecodeError as exc:
        facts["error"] = str(exc)
    return facts


def inspect_batch(table: pa.Table, limits: DecodeLimits | None = None) -> pa.Table:
    """`map_batches` function: rows with `bytes` (+ read `error`) -> the manifest columns + facts."""
    blobs = table.column("bytes").to_pylist()
    read_errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * len(blobs)
    rows = []
    for blob, read_error in zip(blobs, read_errors, strict=True):
        if read_error:
            facts = dict.fromkeys(FACT_SCHEMA.names)
            facts["error"] = read_error
        else:
            facts = inspect_bytes(blob or b"", limits)
        rows.append(facts)
    table = table.drop_columns([c for c in ("bytes", *FACT_SCHEMA.names) if c in table.column_names])
    for name in FACT_SCHEMA.names:
        table = table.append_column(
            FACT_SCHEMA.field(name), pa.array([r[name] for r in rows], FACT_SCHEMA.field(name).type)
        )
    return table


# --- near-duplicates (plain numpy) -----------------------------------------------------------------


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(values.astype(np.uint64)).astype(np.int64)


def near_duplicate_components(hashes: list[str | None] | pd.Series, max_distance: int = 4) -> np.ndarray:
    """A component id per row (rows whose dHashes chain within `max_distance` bits share one); -1 where
    there is no hash. Pigeonhole banding: two hashes within d bits agree exactly on one of d+1 bands, so
    only rows sharing a band value are compared (no all-pairs pass over 80k images)."""
    values = pd.Series(list(hashes), dtype="object")
    has = values.notna().to_numpy()
    out = np.full(len(values), -1, dtype=np.int64)
    if not has.any():
        return out
    ints = np.array([int(h, 16) for h in values[has]], dtype=np.uint64)
    unique, inverse = np.unique(ints, return_inverse=True)
    parent = np.arange(len(unique))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    n_bands = max(1, max_distance + 1)
    bounds = np.linspace(0, 64, n_bands + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        mask = np.uint64((1 << (hi - lo)) - 1)
        keys = (unique >> np.uint64(lo)) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            if end - start < 2:
                continue
            members = order[start:end]
            block = unique[members]
            for c0 in range(0, len(members), 1024):  # chunked: a huge bucket never needs m x m memory
                dist = _popcount(block[c0 : c0 + 1024, None] ^ block[None, :])
                for a, b in zip(*np.nonzero(dist <= max_distance), strict=True):
                    if c0 + a >= b:
                        continue
                    ra, rb = find(int(members[c0 + a])), find(int(members[b]))
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(len(unique))])
    out[has] = roots[inverse]
    return out


def near_duplicate_groups(hashes: list[str | None] | pd.Series, max_distance: int = 4) -> pd.Series:
    """`ndNNNNN` for rows in a near-duplicate cluster of 2+ (numbered by first row), None for the rest."""
    comp = near_duplicate_components(hashes, max_distance)
    counts = pd.Series(comp[comp >= 0]).value_counts()
    shared = set(counts[counts > 1].index)
    names: dict[int, str] = {}
    out: list[str | None] = []
    for c in comp:
        if c in shared:
            names.setdefault(int(c), f"nd{len(names):05d}")
            out.append(names[int(c)])
        else:
            out.append(None)
    return pd.Series(out, index=getattr(hashes, "index", None), dtype="object")


# --- shortcut audit (plain pandas + scikit-learn) ----------------------------------------------------


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(score)) < 2:
        return 0.5
    return float(roc_auc_score(y, score))


def categorical_auc(values: pd.Series, labels: np.ndarray, seed: int = 0, smoothing: float = 1.0) -> float:
    """AUC of an out-of-fold target encoding of one categorical feature (a value seen only once carries
    no signal; a value that stands for one class scores high). Never below 0.5 (the direction is learnt)."""
    from sklearn.model_selection import StratifiedKFold

    keys = values.astype("string").fillna("<none>").to_numpy()
    if len(set(keys)) < 2:
        return 0.5
    n_splits = int(min(5, np.bincount(labels).min()))
    if n_splits < 2:
        return 0.5
    scores = np.zeros(len(labels), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(keys, labels):
        prior = labels[train].mean()
        table = pd.DataFrame({"k": keys[train], "y": labels[train]}).groupby("k")["y"].agg(["sum", "count"])
        enc = (table["sum"] + smoothing * prior) / (table["count"] + smoothing)
        scores[test] = pd.Series(keys[test]).map(enc).fillna(prior).to_numpy()
    # Out-of-fold encodings of an uninformative feature lean *against* the held-out labels (each fold's
    # prior leaves its own positives out), so they can score below 0.5: that is chance, reported as 0.5.
    return max(0.5, _auc(labels, scores))


def numeric_auc(values: pd.Series, labels: np.ndarray) -> float:
    """Rank AUC of a number used as a score, in whichever direction separates better (missing -> -1)."""
    auc = _auc(labels, pd.to_numeric(values, errors="coerce").fillna(-1).to_numpy(dtype=np.float64))
    return max(auc, 1.0 - auc)


def binned_auc(values: pd.Series, labels: np.ndarray, seed: int = 0, bins: int = 16) -> float:
    """`categorical_auc` of a number cut into `bins` quantile bins: catches a band of values that stands
    for one class (say, only middling sharpness is AI), which a rank AUC misses."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.nunique() < 2:
        return 0.5
    return categorical_auc(pd.qcut(numbers, bins, labels=False, duplicates="drop").astype("Int64"), labels, seed)


def content_auc(values: pd.Series, labels: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """The one-feature AUC of a content feature and how it was found (rank or bins), whichever is higher."""
    rank, binned = numeric_auc(values, labels), binned_auc(values, labels, seed)
    return (rank, "rank") if rank >= binned else (binned, "bins")


def shortcut_audit(
    facts: pd.DataFrame, threshold: float = 0.9, seed: int = 0, content_limit: float | None = None
) -> dict[str, Any]:
    """One-feature AUCs of `AUDIT_FEATURES` over the readable, labelled rows (features missing from
    `facts` are left out). Container facts block above `threshold`, content features above
    `content_limit` when it is set."""
    rows = facts[facts["error"].isna() & facts["label"].notna()].copy()
    labels = rows["label"].astype(int).to_numpy()
    counts = np.bincount(labels, minlength=2) if len(labels) else np.zeros(2, int)
    result: dict[str, Any] = {
        "threshold": threshold, "content_limit": content_limit, "n": int(len(rows)), "features": [], "skipped": None
    }  # fmt: skip
    if counts.min() < 2:
        result["skipped"] = f"needs 2+ readable images of each class (real {counts[0]}, ai {counts[1]})"
        return result
    rows = _derived(rows)
    for name, kind, blocking in AUDIT_FEATURES:
        if name not in rows:
            continue
        values = rows[name]
        limit = threshold if blocking or content_limit is None else content_limit
        if kind == "content":
            auc, method = content_auc(values, labels, seed)
        elif kind == "number":
            auc, method = numeric_auc(values, labels), "rank"
            if values.nunique(dropna=False) <= 50:
                cat = categorical_auc(values, labels, seed)
                if cat > auc:
                    auc, method = cat, "category"
        else:
            auc, method = categorical_auc(values, labels, seed), "category"
        result["features"].append(
            {
                "feature": name,
                "auc": round(auc, 4),
                "method": method,
                "group": "container" if blocking else "content",
                "limit": limit,
                "blocking_feature": bool(blocking or content_limit is not None),
                "separates": bool(auc > limit),
                "blocking": bool((blocking or content_limit is not None) and auc > limit),
            }
        )
    return result


# --- analysis of the facts table ---------------------------------------------------------------------


def _derived(facts: pd.DataFrame) -> pd.DataFrame:
    facts = facts.copy()
    w = pd.to_numeric(facts["width"], errors="coerce")
    h = pd.to_numeric(facts["height"], errors="coerce")
    facts["width_x_height"] = [
        f"{int(a)}x{int(b)}" if pd.notna(a) and pd.notna(b) else None for a, b in zip(w, h, strict=True)
    ]
    facts["pixels"] = w * h
    return facts


def _class_key(label: Any) -> str:
    return "unlabelled" if pd.isna(label) else CLASS_NAMES.get(int(label), str(label))


def _top(values: pd.Series, n: int = 10) -> dict[str, int]:
    counts = values.astype("string").fillna("-").value_counts()
    return {str(k): int(v) for k, v in counts.head(n).items()}


def _stats(values: pd.Series) -> dict[str, float] | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return None
    q = v.quantile([0.0, 0.05, 0.5, 0.95, 1.0]).to_list()
    return {"min": q[0], "p5": q[1], "median": q[2], "p95": q[3], "max": q[4], "mean": round(float(v.mean()), 2)}


def distributions(facts: pd.DataFrame) -> dict[str, Any]:
    """Per class (real / ai / unlabelled): counts of format, mode, JPEG quality, width x height, metadata;
    statistics of width, height and file size. Over readable files."""
    readable = _derived(facts[facts["error"].isna()])
    out: dict[str, Any] = {}
    keys = readable["label"].map(_class_key)
    for key in [k for k in ("real", "ai", "unlabelled") if k in set(keys)]:
        part = readable[keys == key]
        out[key] = {
            "n": int(len(part)),
            "format": _top(part["format"]),
            "mode": _top(part["mode"]),
            "jpeg_quality": _top(part["jpeg_quality"].astype("Int64")),
            "jpeg_subsampling": _top(part["jpeg_subsampling"]),
            "width_x_height": _top(part["width_x_height"]),
            "metadata": _top(part["metadata"]),
            "width": _stats(part["width"]),
            "height": _stats(part["height"]),
            "file_size": _stats(part["file_size"]),
            **{name: _stats(part[name]) for name in CONTENT_FEATURES if name in part},
        }
    return out


def _reason(error: str) -> str:
    return error.split(":", 1)[0].strip() if isinstance(error, str) else ""


def _cluster_rows(facts: pd.DataFrame, key: str, max_listed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Clusters of 2+ rows sharing `key`: vectorised counts over all of them, details for `max_listed`
    (clusters spanning both labels first, then the largest)."""
    present = facts[facts[key].notna()]
    multi = present[present.groupby(key)[key].transform("size") > 1]
    grouped = multi.groupby(key, sort=False)
    table = pd.DataFrame(
        {
            "size": grouped.size(),
            "cross": grouped["label"].nunique() > 1,
            "cross_split": grouped["split"].nunique() > 1,
        }
    )
    counts = {
        "n_clusters": int(len(table)),
        "n_files": int(table["size"].sum()) if len(table) else 0,
        "cross_label": int(table["cross"].sum()),
        "cross_split": int(table["cross_split"].sum()),
    }
    listed = table.sort_values(["cross", "size"], ascending=[False, False], kind="stable").head(max_listed)
    clusters = []
    for value, row in listed.iterrows():
        part = grouped.get_group(value)
        clusters.append(
            {
                key: str(value),
                "files": part["file_name"].tolist(),
                "labels": [None if pd.isna(x) else int(x) for x in part["label"]],
                "splits": part["split"].tolist(),
                "groups": part["group"].astype("string").fillna("").tolist() if "group" in part else None,
                "cross_label": bool(row["cross"]),
            }
        )
    return clusters, counts


def analyse(facts: pd.DataFrame, options: VerifyOptions | None = None) -> dict[str, Any]:
    """The report (a JSON-able dict) from the per-file facts joined to the manifest columns."""
    options = options or VerifyOptions()
    facts = facts.reset_index(drop=True)
    blocking: list[str] = []
    warnings: list[str] = []
    report: dict[str, Any] = {"n_files": int(len(facts)), "splits": _top(facts["split"])}

    # files that cannot be used
    bad = facts[facts["error"].notna()]
    by_reason = bad["error"].map(_reason).value_counts().to_dict()
    report["problems"] = {
        "n": int(len(bad)),
        "by_reason": {str(k): int(v) for k, v in by_reason.items()},
        "items": [
            {"file_name": r.file_name, "split": r.split, "label": None if pd.isna(r.label) else int(r.label),
             "error": r.error}
            for r in bad.head(options.max_listed).itertuples()
        ],
    }  # fmt: skip
    if len(bad):
        text = f"{len(bad)} file(s) cannot be used: " + ", ".join(f"{k} {v}" for k, v in by_reason.items())
        (warnings if options.allow_bad_files else blocking).append(text)

    # the CSV listing the same file twice
    dup_names = facts[facts.duplicated(["split", "file_name"], keep=False)]
    conflicting = dup_names.groupby(["split", "file_name"])["label"].nunique()
    report["duplicate_rows"] = {"n": int(len(dup_names)), "files": dup_names["file_name"].unique().tolist()[:50]}
    if (conflicting > 1).any():
        blocking.append(f"{int((conflicting > 1).sum())} file name(s) listed with both labels")
    elif len(dup_names):
        warnings.append(f"{dup_names['file_name'].nunique()} file name(s) listed more than once")

    # exact and near duplicates
    readable = facts[facts["error"].isna()].copy()
    exact, exact_counts = _cluster_rows(readable, "sha256", options.max_listed)
    report["exact_duplicates"] = {**exact_counts, "clusters": exact}
    if exact_counts["cross_label"]:
        blocking.append(f"{exact_counts['cross_label']} identical file(s) (same bytes) carry both labels")
    if exact_counts["n_clusters"] - exact_counts["cross_label"] > 0:
        warnings.append(f"{exact_counts['n_files']} files are exact copies ({exact_counts['n_clusters']} clusters)")
    if exact_counts["cross_split"]:
        warnings.append(f"{exact_counts['cross_split']} exact duplicate cluster(s) span train and test (leakage)")

    readable["near_dup_group"] = near_duplicate_groups(readable["dhash"], options.near_dup_distance).to_numpy()
    near, near_counts = _cluster_rows(readable, "near_dup_group", options.max_listed)
    has_group = "group" in facts.columns and facts["group"].notna().any()
    spanning = 0
    if has_group:
        spanning = int(
            readable.dropna(subset=["near_dup_group"]).groupby("near_dup_group")["group"].nunique().gt(1).sum()
        )
    report["near_duplicates"] = {
        "method": f"dHash {HASH_SIZE * HASH_SIZE} bits, distance <= {options.near_dup_distance}",
        **near_counts,
        "span_several_groups": spanning,
        "offered_as_groups": not has_group,
        "clusters": near,
    }
    if near_counts["n_clusters"]:
        note = (
            f"{near_counts['n_files']} files are near-duplicates ({near_counts['n_clusters']} clusters, "
            f"{near_counts['cross_label']} across labels)"
        )
        if not has_group:
            note += "; no `group` column: `raydetect data folds` keeps each cluster in one fold"
        warnings.append(note)
    if spanning:
        warnings.append(f"{spanning} near-duplicate cluster(s) span several `group`s (folds may split them)")
    if near_counts["cross_split"]:
        warnings.append(f"{near_counts['cross_split']} near-duplicate cluster(s) span train and test (leakage)")

    # class balance
    labelled = facts[facts["label"].notna()]
    counts = {CLASS_NAMES[c]: int((labelled["label"] == c).sum()) for c in (0, 1)}
    total = max(1, sum(counts.values()))
    report["class_balance"] = {
        **counts,
        "unlabelled": int(facts["label"].isna().sum()),
        "ai_share": round(counts["ai"] / total, 4) if sum(counts.values()) else None,
        "by_split": {
            str(split): {
                "real": int((part["label"] == 0).sum()),
                "ai": int((part["label"] == 1).sum()),
                "unlabelled": int(part["label"].isna().sum()),
            }
            for split, part in facts.groupby("split", sort=False)
        },
    }
    if sum(counts.values()) and min(counts.values()) / total < 0.25:
        warnings.append(f"classes are imbalanced: real {counts['real']}, ai {counts['ai']}")

    report["distributions"] = distributions(facts)

    # shortcut audit
    audit = shortcut_audit(facts, options.auc_threshold, options.seed, options.content_auc_limit)
    report["shortcut_audit"] = audit
    for feat in audit["features"]:
        if feat["blocking"]:
            blocking.append(
                f"shortcut: '{feat['feature']}' alone separates real from AI (AUC {feat['auc']:.3f} > "
                f"{feat['limit']})"
            )
        elif feat["separates"]:
            warnings.append(
                f"'{feat['feature']}' alone separates the classes (AUC {feat['auc']:.3f}); reported, not blocking"
            )
    if audit["skipped"] and labelled.shape[0]:
        warnings.append(f"shortcut audit skipped: {audit['skipped']}")

    report["blocking"] = blocking
    report["warnings"] = warnings
    report["ok"] = not blocking
    return report


# --- the Ray job ---------------------------------------------------------------------------------------


def collect_facts(df: pd.DataFrame, settings: Settings | None = None, options: VerifyOptions | None = None):
    """Run the read + inspect pass on Ray Data; the manifest columns joined to the per-file facts."""
    from raydetect.data.ray_io import manifest_dataset, read_bytes_batch

    options = options or VerifyOptions()
    limits = DecodeLimits.from_settings(settings.images) if settings else DecodeLimits()
    keep = [c for c in ("path", "file_name", "label", "split", "group") if c in df.columns]
    frame = df[keep].copy()
    frame["_row"] = np.arange(len(frame))
    ds = (
        manifest_dataset(frame, options.rows_per_block)
        .map_batches(
            read_bytes_batch,
            fn_kwargs={"settings": settings.storage if settings else None},
            batch_size=options.batch_size,
            batch_format="pyarrow",
        )
        .map_batches(inspect_batch, fn_kwargs={"limits": limits}, batch_size=options.batch_size, batch_format="pyarrow")
    )
    facts = ds.to_pandas().sort_values("_row").drop(columns=["_row"]).reset_index(drop=True)
    facts["label"] = pd.to_numeric(facts["label"], errors="coerce").astype("Int64")
    for column in ("error", "dhash", "sha256"):
        facts[column] = facts[column].astype("object").where(facts[column].notna(), None)
    return facts


def verify_manifest(
    root: str, split: str = "auto", settings: Settings | None = None, options: VerifyOptions | None = None
):
    """The manifest(s) verify reads: `split` (missing files kept, to be reported), plus test.csv when
    train.csv is read and `include_test` is on."""
    options = options or VerifyOptions()
    df = read_manifest(root, split, settings, missing="keep")  # type: ignore[arg-type]
    sset = settings.storage if settings else None
    if (
        options.include_test
        and split in ("auto", "train")
        and storage.exists(storage.join(root, TRAIN_CSV), sset)
        and storage.exists(storage.join(root, TEST_CSV), sset)
        and len(read_csv(storage.join(root, TEST_CSV), settings))  # an empty test.csv adds nothing
    ):
        test = read_manifest(root, "test", settings, missing="keep")
        df = pd.concat([df, test], ignore_index=True)
        df.attrs["root"] = test.attrs["root"]
    return df


def verify(
    root: str, split: str = "auto", settings: Settings | None = None, options: VerifyOptions | None = None
) -> dict[str, Any]:
    """Read, inspect (Ray Data), analyse: the full report. Raises `ManifestError` on a bad manifest."""
    options = options or VerifyOptions()
    start = time.perf_counter()
    df = verify_manifest(root, split, settings, options)
    facts = collect_facts(df, settings, options)
    report = analyse(facts, options)
    return {
        "root": storage.normalize(root),
        "split": split,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - start, 2),
        "options": asdict(options),
        **report,
    }


# --- output ------------------------------------------------------------------------------------------


def _fmt_counts(counts: dict[str, int], limit: int = 4) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", … ({len(items) - limit} more)" if len(items) > limit else "") if items else "-"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def summary_text(report: dict[str, Any]) -> str:
    """The human summary printed by `raydetect data verify`."""
    lines = [
        f"raydetect data verify {report.get('root', '')}",
        f"  {report['n_files']} files ({_fmt_counts(report['splits'])}) in {report.get('elapsed_s', '?')} s",
    ]
    problems = report["problems"]
    lines.append(f"Files        {report['n_files'] - problems['n']} readable, {problems['n']} with problems"
                 + (f": {_fmt_counts(problems['by_reason'], 8)}" if problems["n"] else ""))  # fmt: skip
    for item in problems["items"][:10]:
        lines.append(f"  ! {item['file_name']}: {item['error']}")
    if problems["n"] > 10:
        lines.append(f"  … {problems['n'] - 10} more in the JSON report")
    balance = report["class_balance"]
    lines.append(
        f"Classes      real {balance['real']}, ai {balance['ai']}"
        + (f" (AI share {balance['ai_share']:.1%})" if balance["ai_share"] is not None else "")
        + (f", unlabelled {balance['unlabelled']}" if balance["unlabelled"] else "")
    )
    if len(balance.get("by_split", {})) > 1:
        for split, c in balance["by_split"].items():
            lines.append(f"  {split}: real {c['real']}, ai {c['ai']}, unlabelled {c['unlabelled']}")
    dists = report["distributions"]
    for title, key in (("Format", "format"), ("JPEG quality", "jpeg_quality"), ("Width×height", "width_x_height"),
                       ("Colour mode", "mode"), ("Metadata", "metadata")):  # fmt: skip
        parts = [f"{cls}: {_fmt_counts(d[key], 3)}" for cls, d in dists.items()]
        lines.append(f"{title:<13}{' | '.join(parts) or '-'}")
    sizes = [
        f"{cls}: median {_fmt_bytes((d['file_size'] or {}).get('median'))}"
        f" [{_fmt_bytes((d['file_size'] or {}).get('p5'))}–{_fmt_bytes((d['file_size'] or {}).get('p95'))}]"
        for cls, d in dists.items()
    ]
    lines.append(f"{'File size':<13}{' | '.join(sizes) or '-'}")
    sharp = [
        f"{cls}: median {d['laplacian_ratio']['median']:.2f}" for cls, d in dists.items() if d.get("laplacian_ratio")
    ]
    if sharp:
        lines.append(f"{'Sharpness':<13}{' | '.join(sharp)} (Laplacian / band-pass variance)")
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    lines.append(
        f"Duplicates   exact: {exact['n_clusters']} clusters / {exact['n_files']} files "
        f"({exact['cross_label']} across labels); near ({near['method']}): {near['n_clusters']} clusters / "
        f"{near['n_files']} files ({near['cross_label']} across labels)"
    )
    audit = report["shortcut_audit"]
    if audit["skipped"]:
        lines.append(f"Shortcut audit skipped: {audit['skipped']}")
    else:
        limit = audit.get("content_limit")
        lines.append("Shortcut audit (one-feature AUC):")
        for group, title in (
            ("container", f"container facts, blocking above {audit['threshold']}"),
            ("content", f"content, blocking above {limit}" if limit is not None else "content, reported"),
        ):
            cells = []
            for f in (f for f in audit["features"] if f.get("group", "container") == group):
                mark = " BLOCKING" if f["blocking"] else (" (reported)" if f["separates"] else "")
                cells.append(f"{f['feature']} {f['auc']:.2f}{mark}")
            lines.append(f"  {title}:")
            lines.extend("    " + "  ·  ".join(cells[i : i + 4]) for i in range(0, len(cells), 4))
    if report["warnings"]:
        lines.append("Warnings:")
        lines.extend(f"  - {w}" for w in report["warnings"])
    if report["blocking"]:
        lines.append(f"RESULT: FAIL — {len(report['blocking'])} blocking problem(s):")
        lines.extend(f"  - {b}" for b in report["blocking"])
    else:
        lines.append("RESULT: PASS — no blocking problems")
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is pd.NA:
        return None
    return str(value)


def write_report(report: dict[str, Any], uri: str, settings: Settings | None = None) -> None:
    """The full report as JSON at `uri` (local or s3://)."""
    storage.write_text(uri, json.dumps(report, indent=2, default=_json_default), settings.storage if settings else None)


def write_groups(report: dict[str, Any], uri: str, settings: Settings | None = None) -> None:
    """Near-duplicate clusters as CSV `file_name,group` (cluster members only; listed clusters only)."""
    rows = [(f, c["near_dup_group"]) for c in report["near_duplicates"]["clusters"] for f in c["files"]]
    frame = pd.DataFrame(rows, columns=["file_name", "group"])
    storage.write_text(uri, frame.to_csv(index=False), settings.storage if settings else None)
