"""Drift between a reference and a current side, as plain functions. A side is a scoring run (a
`raydetect score` Parquet folder, DESIGN.md §3) or a dataset (a dataset root or its `train.csv` /
`test.csv`: the training data, read with `data/manifest.read_manifest`, `auto` split for a root).

- `prob_ai` (only when both sides are runs): PSI over the reference's quantile bins, and a two-sample KS
  test (scipy); the shares of `ai` and `review` decisions;
- input statistics (`monitor/inputs.py`, from a seeded sample of `monitor.input_sample` files per side): the
  image side (sqrt(width * height); from every row of a run), the format shares, brightness, sharpness and
  JPEG quality, and with a model (`--model`, else the current run's, else the reference run's; a run's
  model is the one in its `_SUCCESS` manifest) the pooled backbone features' cosine distance to the
  reference centroid and their first `monitor.embedding_components` principal components.

Drift (`monitor:` settings): PSI of prob_ai above `max_psi`, or a KS p-value under `ks_alpha` with PSI
above half of `max_psi` (large runs make KS alone fire on trivial shifts); a decision share moved by more
than `max_share_change`; a numeric input's PSI above `max_input_psi`, or a format share moved by more
than `max_share_change`.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raydetect import storage
from raydetect.config import MonitorSettings, Settings

NUMERIC_INPUTS = ("side", "brightness", "sharpness", "jpeg_quality")
RUN, DATASET = "run", "dataset"
_EPS = 1e-4


@dataclass(frozen=True)
class DriftReport:
    drift: bool
    reasons: list[str]
    figures: dict[str, Any]
    plots: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)  # name -> (reference, current)

    def to_dict(self) -> dict[str, Any]:
        return {"drift": self.drift, "reasons": self.reasons, **self.figures}


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a scoring run's scored rows, or a dataset's manifest rows (`path`, ...)."""

    uri: str
    kind: str  # RUN | DATASET
    rows: pd.DataFrame = field(repr=False)
    model_uri: str | None = None  # the one model a run was scored with (its _SUCCESS manifest)

    @property
    def scored(self) -> bool:
        return self.kind == RUN


def scored_rows(uri: str, settings: Settings | None = None) -> pd.DataFrame:
    """The rows of a scoring run that carry a score (errors dropped)."""
    from raydetect.evaluate.report import load_predictions

    rows = load_predictions(uri, settings.storage if settings else None)
    ok = rows["prob_ai"].notna() & (rows["error"].isna() if "error" in rows else True)
    return rows[ok].reset_index(drop=True)


def side_kind(uri: str, settings: Settings) -> str:
    """RUN for a folder with a `_SUCCESS` manifest, or with Parquet parts and no dataset CSV; else DATASET."""
    from raydetect.data.manifest import TEST_CSV, TRAIN_CSV
    from raydetect.score import results

    sset = settings.storage
    if uri.endswith(".csv"):
        return DATASET
    if results.read_success(uri, sset) is not None:
        return RUN
    if any(storage.exists(storage.join(uri, name), sset) for name in (TRAIN_CSV, TEST_CSV)):
        return DATASET
    return RUN if results.list_parts(uri, sset) else DATASET


def _dataset_rows(uri: str, settings: Settings) -> pd.DataFrame:
    from raydetect.data.manifest import TEST_CSV, TRAIN_CSV, read_manifest

    if not uri.endswith(".csv"):
        return read_manifest(uri, split="auto", settings=settings)
    root, _, name = storage.normalize(uri).rpartition("/")
    if name not in (TRAIN_CSV, TEST_CSV):
        raise ValueError(f"{uri}: a dataset manifest is a root's {TRAIN_CSV} or {TEST_CSV}")
    return read_manifest(root, split="train" if name == TRAIN_CSV else "test", settings=settings)


def _run_model(uri: str, settings: Settings) -> str | None:
    from raydetect.score.results import read_success

    models = (read_success(uri, settings.storage) or {}).get("models") or []
    return str(models[0]["uri"]) if len(models) == 1 and models[0].get("uri") else None


def read_side(uri: str, settings: Settings) -> Side:
    """A scoring run or a dataset (see `side_kind`); raises ValueError when it has no rows."""
    kind = side_kind(uri, settings)
    if kind == RUN:
        side = Side(uri, RUN, scored_rows(uri, settings), _run_model(uri, settings))
    else:
        side = Side(uri, DATASET, _dataset_rows(uri, settings))
    if side.rows.empty:
        raise ValueError(f"no {'scored rows' if side.scored else 'images'} in {uri}")
    return side


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`, on the reference's quantile bins."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: one bin for it, one for everything else
        expected = np.array([1.0, 0.0])
        actual = np.array([np.mean(current == edges[0]), np.mean(current != edges[0])])
    else:
        inner = edges[1:-1]
        expected = np.bincount(np.searchsorted(inner, reference, "right"), minlength=len(edges) - 1) / len(reference)
        actual = np.bincount(np.searchsorted(inner, current, "right"), minlength=len(edges) - 1) / len(current)
    expected, actual = np.clip(expected, _EPS, None), np.clip(actual, _EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def decision_shares(rows: pd.DataFrame) -> dict[str, float]:
    counts = rows["decision"].astype(str).value_counts(normalize=True)
    return {k: float(counts.get(k, 0.0)) for k in ("real", "ai", "review")}


def _sample_paths(side: Side, settings: Settings) -> list[str]:
    n = min(settings.monitor.input_sample, len(side.rows))
    return side.rows["path"].astype(str).sample(n=n, random_state=settings.seed).tolist() if n else []


def side_inputs(side: Side, settings: Settings, embedder=None) -> tuple[dict[str, pd.Series], np.ndarray | None]:
    """The input statistics of a side's sample (`monitor/inputs.py`) by name, and its features (or None).
    A run's `side` comes from every row's width/height, a dataset's from the sample."""
    from raydetect.monitor.inputs import sample_statistics

    files, features = sample_statistics(_sample_paths(side, settings), settings, embedder)
    sized = side.rows if side.scored and {"width", "height"} <= set(side.rows) else files
    stats = {"side": np.sqrt(sized["width"].astype(float) * sized["height"].astype(float))}
    stats.update({name: files[name] for name in ("format", "brightness", "sharpness", "jpeg_quality")})
    return stats, features


def _numeric(ref: pd.Series, cur: pd.Series, bins: int) -> dict[str, float]:
    ref, cur = pd.Series(ref).dropna().to_numpy(float), pd.Series(cur).dropna().to_numpy(float)
    if not len(ref) or not len(cur):
        return {}
    return {"psi": psi(ref, cur, bins), "reference_mean": float(ref.mean()), "current_mean": float(cur.mean())}


def _shares(values: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.dropna().astype(str).value_counts(normalize=True).items()}


def _score_figures(reference: pd.DataFrame, current: pd.DataFrame, m: MonitorSettings,
                   reasons: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """prob_ai's PSI / KS and the decision shares of two runs' scored rows; their reasons go to `reasons`."""
    from scipy.stats import ks_2samp

    ref_p, cur_p = reference["prob_ai"].to_numpy(float), current["prob_ai"].to_numpy(float)
    ks = ks_2samp(ref_p, cur_p)
    prob = {"psi": psi(ref_p, cur_p, m.psi_bins), "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "reference_mean": float(ref_p.mean()), "current_mean": float(cur_p.mean())}  # fmt: skip
    if prob["psi"] > m.max_psi or (prob["ks_pvalue"] < m.ks_alpha and prob["psi"] > m.max_psi / 2):
        reasons.append(f"prob_ai: PSI {prob['psi']:.3f} (limit {m.max_psi}), KS p {prob['ks_pvalue']:.2g}")
    shares = {"reference": decision_shares(reference), "current": decision_shares(current)}
    for kind in ("ai", "review"):
        change = shares["current"][kind] - shares["reference"][kind]
        if abs(change) > m.max_share_change:
            reasons.append(f"share of {kind}: {shares['reference'][kind]:.3f} -> {shares['current'][kind]:.3f}")
    return prob, shares


def _input_figures(ref_inputs: dict[str, Any], cur_inputs: dict[str, Any], m: MonitorSettings,
                   reasons: list[str]) -> dict[str, Any]:
    """Each numeric input's PSI and means, and the format shares; their reasons go to `reasons`."""
    inputs: dict[str, Any] = {}
    for name in ref_inputs.keys() & cur_inputs.keys() - {"format"}:
        figures = _numeric(ref_inputs[name], cur_inputs[name], m.psi_bins)
        if figures:
            inputs[name] = figures
            if figures["psi"] > m.max_input_psi:
                reasons.append(f"input {name}: PSI {figures['psi']:.3f} (limit {m.max_input_psi})")
    if "format" in ref_inputs and "format" in cur_inputs:
        ref_f, cur_f = _shares(ref_inputs["format"]), _shares(cur_inputs["format"])
        change = max((abs(cur_f.get(k, 0.0) - ref_f.get(k, 0.0)) for k in {*ref_f, *cur_f}), default=0.0)
        inputs["format"] = {"reference": ref_f, "current": cur_f, "max_change": change}
        if change > m.max_share_change:
            reasons.append(f"input format: shares {ref_f} -> {cur_f}")
    return dict(sorted(inputs.items()))


def compare(reference: Side, current: Side, ref_inputs: dict[str, Any], cur_inputs: dict[str, Any],
            m: MonitorSettings) -> DriftReport:
    """The drift figures of two sides and their input statistics, and the reasons they drifted. prob_ai and
    the decision shares are compared only when both sides are scoring runs."""
    reasons: list[str] = []
    prob = shares = None
    if reference.scored and current.scored:
        prob, shares = _score_figures(reference.rows, current.rows, m, reasons)
    inputs = _input_figures(ref_inputs, cur_inputs, m, reasons)
    figures = {"reference_kind": reference.kind, "current_kind": current.kind, "n_reference": len(reference.rows),
               "n_current": len(current.rows), "prob_ai": prob, "decisions": shares, "inputs": inputs}  # fmt: skip
    return DriftReport(bool(reasons), reasons, figures)


def embedding_model(reference: Side, current: Side, model: str | None, settings: Settings) -> str | None:
    """The model that embeds both samples: `model` (resolved), else the current run's, else the reference's."""
    if not settings.monitor.embeddings:
        return None
    if model is not None:
        from raydetect.registry import resolve_model_uri

        return resolve_model_uri(model, settings)
    return current.model_uri or reference.model_uri


def _embedder(model_uri: str | None, settings: Settings) -> tuple[Any, str | None]:
    """(Embedder or None, why there is none)."""
    if model_uri is None:
        return None, "no model: give --model, or compare runs scored by one model"
    from raydetect.monitor.inputs import Embedder

    try:
        return Embedder(model_uri, settings), None
    except ValueError as exc:
        return None, str(exc)


def _add_embeddings(ref_inputs: dict, cur_inputs: dict, ref_features, cur_features, settings: Settings) -> str | None:
    """The embedding statistics into both sides' inputs; returns why they are missing, or None."""
    from raydetect.monitor.inputs import embedding_statistics

    if ref_features is None or cur_features is None or len(ref_features) < 2:
        return "too few readable images to embed"
    ref, cur = embedding_statistics(ref_features, cur_features, settings.monitor.embedding_components)
    ref_inputs.update(ref)
    cur_inputs.update(cur)
    return None


def drift_between(reference_uri: str, current_uri: str, settings: Settings, model: str | None = None) -> DriftReport:
    """Read two sides (scoring runs or datasets) and compare them (see the module doc). `model`: a model
    reference for the embeddings (default: the current run's model, else the reference run's)."""
    reference, current = read_side(reference_uri, settings), read_side(current_uri, settings)
    model_uri = embedding_model(reference, current, model, settings)
    embedder, missing = _embedder(model_uri, settings) if settings.monitor.embeddings else (None, "switched off")
    ref_inputs, ref_features = side_inputs(reference, settings, embedder)
    cur_inputs, cur_features = side_inputs(current, settings, embedder)
    if embedder is not None:
        missing = _add_embeddings(ref_inputs, cur_inputs, ref_features, cur_features, settings)
    report = compare(reference, current, ref_inputs, cur_inputs, settings.monitor)
    report.figures.update(reference=reference_uri, current=current_uri,
                          embeddings={"model": model_uri if missing is None else None, "missing": missing})
    if reference.scored and current.scored:
        report.plots["prob_ai"] = (reference.rows["prob_ai"], current.rows["prob_ai"])
    for name in report.figures["inputs"]:
        if name != "format":
            report.plots[name] = (pd.Series(ref_inputs[name]).dropna(), pd.Series(cur_inputs[name]).dropna())
    return report


# --- the page -------------------------------------------------------------------------------------------


def _histogram(reference: np.ndarray, current: np.ndarray, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydetect.evaluate.report import _figure_to_data_uri

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.histogram_bin_edges(np.concatenate([reference, current]), bins=25)
    ax.hist(reference, bins=bins, alpha=0.55, density=True, label="reference", color="tab:blue")
    ax.hist(current, bins=bins, alpha=0.55, density=True, label="current", color="tab:orange")
    ax.set_title(title)
    ax.legend()
    return _figure_to_data_uri(fig)


def render_html(report: DriftReport) -> str:
    """One self-contained page: verdict, reasons, figures as JSON, and embedded histograms (base64 PNG)."""
    verdict = "DRIFT" if report.drift else "no drift"
    items = "".join(f"<li>{html.escape(r)}</li>" for r in report.reasons) or "<li>none</li>"
    images = "".join(
        f"<img alt='{html.escape(name)}' src='{_histogram(np.asarray(ref, float), np.asarray(cur, float), name)}'>"
        for name, (ref, cur) in report.plots.items()
    )
    figures = html.escape(json.dumps(report.figures, indent=2, default=str))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>raydetect drift</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "img{max-width:48%;margin:.5em 1%;}pre{background:#f6f6f6;padding:1em}</style></head><body>"
        f"<h1>raydetect drift: {verdict}</h1><h2>Reasons</h2><ul>{items}</ul>{images}"
        f"<h2>Figures</h2><pre>{figures}</pre></body></html>"
    )


def write_drift(report: DriftReport, html_uri: str, settings: Settings) -> str:
    """Write the HTML page and the JSON beside it (`.json`); returns the JSON's URI."""
    parent = storage.normalize(html_uri).rsplit("/", 1)[0]
    storage.makedirs(parent, settings.storage)
    storage.write_text(html_uri, render_html(report), settings.storage)
    json_uri = html_uri.rsplit(".", 1)[0] + ".json"
    storage.write_text(json_uri, json.dumps(report.to_dict(), indent=2, default=float), settings.storage)
    return json_uri
