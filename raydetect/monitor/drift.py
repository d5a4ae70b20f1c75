"""Drift between two scoring runs (`raydetect score` Parquet folders, DESIGN.md §3), as plain functions.

- `prob_ai`: PSI over the reference's quantile bins, and a two-sample KS test (scipy);
- the shares of `ai` and `review` decisions;
- input statistics: the image side (sqrt(width * height), from the rows) and, from a sample of the files
  (`monitor.input_sample`), the format share, brightness (mean luma) and sharpness (`laplacian_ratio` of
  `data/content.py`, the shortcut audit's).

Drift (`monitor:` settings): PSI of prob_ai above `max_psi`, or a KS p-value under `ks_alpha` with PSI
above half of `max_psi` (large runs make KS alone fire on trivial shifts); a decision share moved by more
than `max_share_change`; an input statistic's PSI above `max_input_psi`, or a format share moved by more
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

NUMERIC_INPUTS = ("side", "brightness", "sharpness")
_EPS = 1e-4


@dataclass(frozen=True)
class DriftReport:
    drift: bool
    reasons: list[str]
    figures: dict[str, Any]
    plots: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)  # name -> (reference, current)

    def to_dict(self) -> dict[str, Any]:
        return {"drift": self.drift, "reasons": self.reasons, **self.figures}


def scored_rows(uri: str) -> pd.DataFrame:
    """The rows of a scoring run that carry a score (errors dropped)."""
    from raydetect.evaluate.report import load_predictions

    rows = load_predictions(uri)
    ok = rows["prob_ai"].notna() & (rows["error"].isna() if "error" in rows else True)
    return rows[ok].reset_index(drop=True)


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


def file_statistics(paths: list[str], settings: Settings) -> pd.DataFrame:
    """Format, brightness and sharpness of each readable file (unreadable ones are skipped)."""
    from raydetect.data.content import grey_center, laplacian_ratio
    from raydetect.data.images import sniff_format, try_decode

    out = []
    for path in paths:
        try:
            data = storage.read_bytes(path, settings.storage)
        except OSError:
            continue
        image, _ = try_decode(data)
        if image is None:
            continue
        grey = grey_center(image)
        sharp = laplacian_ratio(grey) if min(grey.shape) >= 16 else np.nan
        out.append({"format": sniff_format(data) or "unknown", "brightness": float(grey.mean()), "sharpness": sharp})
    return pd.DataFrame(out, columns=["format", "brightness", "sharpness"])


def input_statistics(rows: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per-row `side` from width/height, plus the file statistics of a seeded sample of rows."""
    stats = pd.DataFrame({"side": np.sqrt(rows["width"].astype(float) * rows["height"].astype(float))})
    n = min(settings.monitor.input_sample, len(rows))
    if n and "path" in rows:
        sample = rows["path"].astype(str).sample(n=n, random_state=settings.seed).tolist()
        files = file_statistics(sample, settings)
        stats = pd.concat([stats, files], axis=1)  # the file statistics fill the first rows only
    return stats


def _numeric(ref: pd.Series, cur: pd.Series, bins: int) -> dict[str, float]:
    ref, cur = ref.dropna().to_numpy(float), cur.dropna().to_numpy(float)
    if not len(ref) or not len(cur):
        return {}
    return {"psi": psi(ref, cur, bins), "reference_mean": float(ref.mean()), "current_mean": float(cur.mean())}


def _shares(values: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.dropna().astype(str).value_counts(normalize=True).items()}


def compare(reference: pd.DataFrame, current: pd.DataFrame, ref_inputs: pd.DataFrame, cur_inputs: pd.DataFrame,
            m: MonitorSettings) -> DriftReport:
    """The drift figures of two runs' scored rows and input statistics, and the reasons they drifted."""
    from scipy.stats import ks_2samp

    reasons: list[str] = []
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
    inputs: dict[str, Any] = {}
    for name in NUMERIC_INPUTS:
        if name in ref_inputs and name in cur_inputs:
            inputs[name] = _numeric(ref_inputs[name], cur_inputs[name], m.psi_bins)
            if inputs[name].get("psi", 0.0) > m.max_input_psi:
                reasons.append(f"input {name}: PSI {inputs[name]['psi']:.3f} (limit {m.max_input_psi})")
    if "format" in ref_inputs and "format" in cur_inputs:
        ref_f, cur_f = _shares(ref_inputs["format"]), _shares(cur_inputs["format"])
        change = max((abs(cur_f.get(k, 0.0) - ref_f.get(k, 0.0)) for k in {*ref_f, *cur_f}), default=0.0)
        inputs["format"] = {"reference": ref_f, "current": cur_f, "max_change": change}
        if change > m.max_share_change:
            reasons.append(f"input format: shares {ref_f} -> {cur_f}")
    figures = {"n_reference": len(reference), "n_current": len(current), "prob_ai": prob, "decisions": shares,
               "inputs": inputs}  # fmt: skip
    return DriftReport(bool(reasons), reasons, figures)


def drift_between(reference_uri: str, current_uri: str, settings: Settings) -> DriftReport:
    """Read two scoring runs and compare them (see the module doc)."""
    reference, current = scored_rows(reference_uri), scored_rows(current_uri)
    if reference.empty or current.empty:
        raise ValueError(f"no scored rows in {reference_uri if reference.empty else current_uri}")
    ref_inputs, cur_inputs = input_statistics(reference, settings), input_statistics(current, settings)
    report = compare(reference, current, ref_inputs, cur_inputs, settings.monitor)
    report.figures.update(reference=reference_uri, current=current_uri)
    report.plots["prob_ai"] = (reference["prob_ai"], current["prob_ai"])
    for name in NUMERIC_INPUTS:
        if name in ref_inputs and name in cur_inputs:
            report.plots[name] = (ref_inputs[name].dropna(), cur_inputs[name].dropna())
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
