"""The evaluation report: metrics, plots and per-group tables in one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from raydetect import storage
from raydetect.evaluate.metrics import binary_metrics, metrics_by_group

GROUP_COLUMNS = ("category", "generator", "processing", "size")


def _figure_to_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plot_roc_and_histogram(labels: np.ndarray, prob_ai: np.ndarray, threshold: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    fig, (ax_roc, ax_hist) = plt.subplots(1, 2, figsize=(10, 4))
    if len(np.unique(labels)) == 2:
        RocCurveDisplay.from_predictions(labels, prob_ai, ax=ax_roc, name="detector")
    ax_roc.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax_roc.set_title("ROC")
    bins = np.linspace(0, 1, 26)
    ax_hist.hist(prob_ai[labels == 0], bins=bins, alpha=0.6, label="real (0)", color="tab:blue")
    ax_hist.hist(prob_ai[labels == 1], bins=bins, alpha=0.6, label="AI (1)", color="tab:red")
    ax_hist.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.2f}")
    ax_hist.set_xlabel("P(AI)")
    ax_hist.set_title("Scores by true class")
    ax_hist.legend()
    return _figure_to_data_uri(fig)


def plot_confusion(labels: np.ndarray, prob_ai: np.ndarray, threshold: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay.from_predictions(
        labels, (prob_ai >= threshold).astype(int), labels=[0, 1], display_labels=["real", "AI"], ax=ax,
        colorbar=False,
    )
    ax.set_title("Confusion matrix")
    return _figure_to_data_uri(fig)


def plot_group_bars(table: pd.DataFrame, column: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(table) + 2), 3.2))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["accuracy"], width=0.4, label="accuracy")
    ax.bar(x + 0.2, table["flagged_as_ai"], width=0.4, label="flagged as AI")
    ax.set_xticks(x, table[column].astype(str), rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"By {column}")
    ax.legend(loc="lower right")
    return _figure_to_data_uri(fig)


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="grid")


def processing_kind(values: pd.Series) -> pd.Series:
    """`bicubic0.62+blur0.90+jpeg81` -> `bicubic+blur+jpeg` (the benchmark's replayable processing strings)."""
    return values.fillna("none").astype(str).str.replace(r"[0-9.]+", "", regex=True)


def evaluate_frame(joined: pd.DataFrame, threshold: float) -> dict:
    """Overall metrics plus one table per optional group column present."""
    labels = joined["label"].astype(int).to_numpy()
    prob_ai = joined["prob_ai"].astype(float).to_numpy()
    result: dict = {"overall": binary_metrics(labels, prob_ai, threshold), "groups": {}}
    if "size" not in joined and {"width", "height"} <= set(joined.columns):  # what the predictions measured
        sized = joined["width"].notna() & joined["height"].notna()
        size = joined["width"].astype("Int64").astype(str) + "x" + joined["height"].astype("Int64").astype(str)
        joined = joined.assign(size=size.where(sized))
    for column in GROUP_COLUMNS:
        if column in joined and joined[column].notna().any():
            frame = joined
            if column == "processing":  # group by the kind of processing, not its exact parameters
                frame = joined.assign(processing=processing_kind(joined["processing"]))
            result["groups"][column] = metrics_by_group(frame, column, threshold)
    return result


def render_report(
    joined: pd.DataFrame,
    threshold: float,
    title: str = "raydetect evaluation",
    context: dict[str, object] | None = None,
    n_errors: int = 0,
) -> tuple[str, dict]:
    """HTML text and a JSON-able summary for scored rows joined to their labels."""
    result = evaluate_frame(joined, threshold)
    labels = joined["label"].astype(int).to_numpy()
    prob_ai = joined["prob_ai"].astype(float).to_numpy()
    overall = result["overall"]
    headline = " · ".join(
        f"{name} <b>{overall[name]:.3f}</b>" for name in ("accuracy", "f1", "precision", "recall", "auc_roc")
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>generated {datetime.now(UTC).isoformat(timespec='seconds')} · "
        f"{overall['n']} labelled images scored · {n_errors} unreadable · threshold {threshold:.3f}</p>",
        f"<p class='headline'>{headline}</p>",
    ]
    if context:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items()
        )
        sections.append(f"<table class='grid ctx'>{rows}</table>")
    sections.append(f"<img alt='ROC and score histogram' src='{plot_roc_and_histogram(labels, prob_ai, threshold)}'>")
    sections.append(f"<img alt='confusion matrix' src='{plot_confusion(labels, prob_ai, threshold)}'>")
    for column, table in result["groups"].items():
        sections.append(f"<h2>By {html.escape(column)}</h2>")
        sections.append(f"<img alt='by {column}' src='{plot_group_bars(table, column)}'>")
        sections.append(_table_html(table))
        if column == "category" and len(table) > 1:
            gap = float(table["accuracy"].max() - table["accuracy"].min())
            sections.append(f"<p>Largest accuracy gap between categories: <b>{gap:.3f}</b></p>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "img{max-width:100%;margin:.5em 0;display:block}.headline{font-size:1.2em}.meta{color:#666}"
        "table.grid{border-collapse:collapse;margin:.5em 0}table.grid td,table.grid th"
        "{border:1px solid #ddd;padding:4px 10px;text-align:right}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
    summary = {
        "overall": overall,
        "groups": {k: v.to_dict(orient="records") for k, v in result["groups"].items()},
        "errors": n_errors,
        "threshold": threshold,
        "context": {k: str(v) for k, v in (context or {}).items()},  # what was evaluated (the registry reads it)
    }
    return page, summary


def load_predictions(uri: str) -> pd.DataFrame:
    """All Parquet files under a predictions folder (local or s3://), as one frame."""
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_fs(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True,
                           ignore_prefixes=["_", "."])
    return dataset.to_table().to_pandas()


def write_report(
    predictions_uri: str,
    labelled: pd.DataFrame,
    output_html: str,
    threshold: float | None = None,
    title: str = "raydetect evaluation",
    context: dict[str, object] | None = None,
) -> dict:
    """Join predictions to labels, write the HTML report and a JSON summary beside it; return the summary."""
    from raydetect.evaluate.metrics import join_predictions

    predictions = load_predictions(predictions_uri)
    if threshold is None:
        threshold = float(predictions["threshold"].iloc[0]) if "threshold" in predictions else 0.5
    joined = join_predictions(predictions, labelled)
    if joined.empty:
        raise ValueError(f"no scored row of {predictions_uri} matches a labelled image")
    n_errors = int(predictions["error"].notna().sum()) if "error" in predictions else 0
    page, summary = render_report(joined, threshold, title, context, n_errors)
    storage.write_text(output_html, page)
    summary_uri = output_html.rsplit(".", 1)[0] + ".json"
    storage.write_text(summary_uri, json.dumps(summary, indent=2, default=float))
    return summary
