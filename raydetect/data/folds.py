"""Stratified, group-preserving k-fold assignment, stored as `folds.parquet` beside `train.csv`.

Groups, in order of preference: the CSV's `group` column (e.g. a real photo and its AI counterpart), else a
`near_dup_group` column (near-duplicate clusters from `raydetect data verify` / `near_duplicate_groups`),
else one group per row. A group never spans two folds; label shares per fold follow the whole set
(scikit-learn's StratifiedGroupKFold). Same rows + same k + same seed = same folds.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from raydetect import storage
from raydetect.config import Settings

FOLDS_FILE = "folds.parquet"
GROUP_COLUMNS = ("group", "near_dup_group")


def fold_groups(df: pd.DataFrame) -> pd.Series:
    """The group key of every row as a string (rows with a blank group get a group of their own)."""
    for column in GROUP_COLUMNS:
        if column in df.columns:
            values = df[column].astype("string")
            own = "__row" + pd.Series(np.arange(len(df)), index=df.index).astype(str)
            return values.where(values.notna() & values.str.strip().ne(""), own).astype(str)
    return ("__row" + pd.Series(np.arange(len(df)), index=df.index).astype(str)).astype(str)


def assign_folds(df: pd.DataFrame, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """A copy of `df` with an int `fold` column (0..k-1) and the `fold_group` it was grouped by."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"k must be at least 2 (got {k})")
    if "label" not in df.columns or df["label"].isna().any():
        n = int(df["label"].isna().sum()) if "label" in df.columns else len(df)
        raise ValueError(f"folds need a label on every row ({n} row(s) are unlabelled)")
    labels = df["label"].astype(int).to_numpy()
    groups = fold_groups(df)
    n_groups = {int(c): groups[labels == c].nunique() for c in np.unique(labels)}
    if len(n_groups) < 2:
        raise ValueError(f"folds need both classes; only label {next(iter(n_groups))} is present")
    if groups.nunique() < k:
        raise ValueError(f"k={k} folds need at least {k} groups; the data has {groups.nunique()}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(df), -1, dtype=np.int64)
    for index, (_, val) in enumerate(splitter.split(np.zeros(len(df)), labels, groups.to_numpy())):
        fold[val] = index
    out = df.copy()
    out["fold_group"] = groups.to_numpy()
    out["fold"] = fold
    return out


def fold_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per fold: rows, groups, real, ai, AI share."""
    table = df.groupby("fold").agg(
        rows=("fold", "size"),
        groups=("fold_group", "nunique"),
        real=("label", lambda s: int((s == 0).sum())),
        ai=("label", lambda s: int((s == 1).sum())),
    )
    table["ai_share"] = (table["ai"] / table["rows"]).round(3)
    return table.reset_index()


def folds_uri(root: str) -> str:
    return storage.join(root, FOLDS_FILE)


def write_folds(root: str, df: pd.DataFrame, settings: Settings | None = None) -> str:
    """Write `file_name, label, fold_group, fold` (+ `group` if present) to ROOT/folds.parquet; its URI."""
    columns = [c for c in ("file_name", "label", "group", "fold_group", "fold") if c in df.columns]
    table = df[columns].copy()
    table["label"] = table["label"].astype("Int64")
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    uri = folds_uri(root)
    storage.write_bytes(uri, buffer.getvalue(), settings.storage if settings else None)
    return uri


def read_folds(root: str, settings: Settings | None = None) -> pd.DataFrame:
    """ROOT/folds.parquet as written by `write_folds` (merge into a manifest on `file_name`)."""
    uri = folds_uri(root)
    sset = settings.storage if settings else None
    if not storage.exists(uri, sset):
        raise FileNotFoundError(f"{uri}: no folds yet; run `raydetect data folds {root}`")
    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(uri, sset)))
    frame["label"] = frame["label"].astype("Int64")
    frame["fold"] = frame["fold"].astype(int)
    return frame


def with_folds(manifest: pd.DataFrame, root: str | None = None, settings: Settings | None = None) -> pd.DataFrame:
    """`manifest` with the `fold` (and `fold_group`) columns from ROOT/folds.parquet, in manifest order.
    Rows absent from folds.parquet raise (the folds are stale: rebuild them)."""
    root = root or manifest.attrs.get("root")
    if root is None:
        raise ValueError("no root given and the manifest does not carry one in .attrs['root']")
    folds = read_folds(root, settings)[["file_name", "fold_group", "fold"]].drop_duplicates("file_name")
    merged = manifest.drop(columns=[c for c in ("fold", "fold_group") if c in manifest.columns]).merge(
        folds, on="file_name", how="left", validate="many_to_one"
    )
    if merged["fold"].isna().any():
        missing = merged.loc[merged["fold"].isna(), "file_name"].head(5).tolist()
        raise ValueError(f"{folds_uri(root)} is stale: no fold for {missing}…; rerun `raydetect data folds`")
    merged["fold"] = merged["fold"].astype(int)
    merged.attrs.update(manifest.attrs)
    return merged
