"""The evaluation report: metrics, plots and per-group tables in one self-contained HTML file.

Sections: headline metrics with bootstrap 95 % intervals; the decision (threshold, review band and the share
of images sent to review, with the card's rule); calibration (ECE and a reliability diagram before and after
the card's temperature); ROC, score histograms, precision-recall curve, confusion matrix; per-group tables
(fairlearn) with the equalized-odds difference across `category`, flagged above `evaluate.fairness_limit`;
and, when given, the robustness sweep's table of drops (`evaluate/robustness.py`) and the adversarial
table (`evaluate/adversarial.py`); galleries of the most confident false positives and false negatives, with
their Grad-CAM overlays when the model is at hand (`evaluate/gallery.py`)."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from raydetect import storage
from raydetect.config import StorageSettings
from raydetect.evaluate.calibration import expected_calibration_error, logit, reliability_bins, sigmoid
from raydetect.evaluate.metrics import HEADLINE, binary_metrics, bootstrap_intervals, equalized_odds, metrics_by_group

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


def plot_reliability(labels: np.ndarray, prob_ai: np.ndarray, before: np.ndarray | None, bins: int) -> str:
    """Observed AI rate against mean P(AI) per bin, after (and before) the temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    curves = [("calibrated", prob_ai, "tab:green")]
    if before is not None:
        curves.append(("before (T = 1)", before, "tab:orange"))
    for name, probs, colour in curves:
        b = reliability_bins(labels, probs, bins)
        filled = b["count"] > 0
        ece = expected_calibration_error(labels, probs, bins)
        ax.plot(b["mean_prob"][filled], b["rate"][filled], "o-", color=colour, label=f"{name}: ECE {ece:.3f}")
    ax.set_xlabel("mean P(AI) in bin")
    ax.set_ylabel("share AI-generated")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    return _figure_to_data_uri(fig)


def plot_precision_recall(labels: np.ndarray, prob_ai: np.ndarray, threshold: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay

    fig, ax = plt.subplots(figsize=(4.6, 4))
    if len(np.unique(labels)) == 2:
        PrecisionRecallDisplay.from_predictions(labels, prob_ai, ax=ax, name="detector")
        m = binary_metrics(labels, prob_ai, threshold)
        ax.plot([m["recall"]], [m["precision"]], "ko", label=f"threshold {threshold:.2f}")
        ax.legend(loc="lower left")
    ax.set_title("Precision-recall")
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


def uncalibrated(prob_ai: np.ndarray, temperature: float | None) -> np.ndarray | None:
    """P(AI) before the card's temperature: sigmoid(logit(p) * T); None when T is unknown or 1."""
    if temperature is None or temperature == 1.0:
        return None
    return sigmoid(logit(prob_ai) * temperature)


def calibration_summary(labels: np.ndarray, prob_ai: np.ndarray, card, bins: int) -> dict:
    """ECE after (and before) the temperature, with the card's rule and validation figures."""
    temperature = card.temperature if card is not None else None
    before = uncalibrated(prob_ai, temperature)
    out = {"temperature": temperature, "ece": expected_calibration_error(labels, prob_ai, bins), "bins": bins}
    if before is not None:
        out["ece_before"] = expected_calibration_error(labels, before, bins)
    if card is not None and card.calibration:
        out["card"] = card.calibration
    return out


def review_share(prob_ai: np.ndarray, band: list[float]) -> float:
    low, high = band
    return float(np.mean((prob_ai >= low) & (prob_ai < high))) if low < high and len(prob_ai) else 0.0


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


def _headline_table(overall: dict, intervals: dict) -> str:
    rows = "".join(
        f"<tr><th>{name}</th><td>{overall[name]:.3f}</td><td>"
        + (f"{intervals[name][0]:.3f} - {intervals[name][1]:.3f}" if name in intervals else "")
        + "</td></tr>"
        for name in HEADLINE
    )
    return f"<table class='grid headline'><tr><th>metric</th><th>value</th><th>95 % CI</th></tr>{rows}</table>"


def _calibration_html(cal: dict, band: list[float], threshold: float, share: float) -> str:
    parts = [f"<p>Threshold <b>{threshold:.3f}</b>, review band <b>[{band[0]:.3f}, {band[1]:.3f})</b>: "
             f"<b>{share:.1%}</b> of these images go to review.</p>"]
    card = cal.get("card")
    if card:
        rule = card.get("threshold_rule", "?")
        target = f" (target FPR {card.get('target_fpr')})" if rule == "target_fpr" else ""
        parts.append(
            f"<p>Chosen on {html.escape(str(card.get('fitted_on', 'validation')))} ({card.get('n')} images) by the "
            f"rule <code>{html.escape(str(rule))}</code>{target}; band: outside it, decisions at least "
            f"{card.get('review_precision')} precise there. Temperature {card.get('temperature', 1.0):.3f}"
            + (f" (skipped: {html.escape(str(card['skipped']))})" if card.get("skipped") else "") + ".</p>"
        )
    else:
        parts.append("<p>No calibration recorded for this model (temperature 1, the card's own threshold).</p>")
    ece = f"<b>{cal['ece']:.3f}</b>"
    if "ece_before" in cal:
        ece = f"before the temperature <b>{cal['ece_before']:.3f}</b>, after <b>{cal['ece']:.3f}</b>"
    parts.append(f"<p>ECE ({cal['bins']} equal-width bins of P(AI)): {ece}</p>")
    return "".join(parts)


def _fairness_html(fairness: dict) -> str:
    flag = " <b class='flag'>ABOVE THE LIMIT</b>" if fairness["flagged"] else " (within the limit)"
    return (f"<p>Equalized-odds difference across <code>category</code> (fairlearn): "
            f"<b>{fairness['equalized_odds_difference']:.3f}</b>, limit {fairness['limit']:.3f}{flag}</p>")


def render_report(
    joined: pd.DataFrame,
    threshold: float,
    title: str = "raydetect evaluation",
    context: dict[str, object] | None = None,
    n_errors: int = 0,
    *,
    card=None,
    settings=None,
    robustness: pd.DataFrame | None = None,
    adversarial: pd.DataFrame | None = None,
    galleries: dict[str, dict] | None = None,
    generalisation: pd.DataFrame | None = None,
) -> tuple[str, dict]:
    """HTML text and a JSON-able summary for scored rows joined to their labels. `card`: the model card
    (temperature, calibration, review band); `settings`: `evaluate:` (config.EvaluateSettings); `robustness`:
    the sweep's table (`robustness.sweep`); `adversarial`: `adversarial.adversarial_eval`'s table;
    `galleries`: `gallery.error_galleries` of these rows; `generalisation`: training's leave-one-generator-out
    table (`train.cv.generalisation_table`)."""
    from raydetect.config import EvaluateSettings
    from raydetect.evaluate.gallery import galleries_html, gallery_summary

    settings = settings or EvaluateSettings()
    bins = card.calibration.get("bins", 15) if card is not None and card.calibration else 15
    result = evaluate_frame(joined, threshold)
    labels = joined["label"].astype(int).to_numpy()
    prob_ai = joined["prob_ai"].astype(float).to_numpy()
    overall = result["overall"]
    intervals = bootstrap_intervals(labels, prob_ai, threshold, settings.bootstrap) if settings.bootstrap else {}
    band = list(card.review_band) if card is not None else [threshold, threshold]
    share = review_share(prob_ai, band)
    cal = calibration_summary(labels, prob_ai, card, bins)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>generated {datetime.now(UTC).isoformat(timespec='seconds')} · "
        f"{overall['n']} labelled images scored · {n_errors} unreadable · threshold {threshold:.3f}</p>",
        "<h2>Headline metrics</h2>",
        _headline_table(overall, intervals),
        f"<p class='meta'>95 % intervals: percentile bootstrap over images, {settings.bootstrap} resamples.</p>",
    ]
    if context:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items()
        )
        sections.append(f"<table class='grid ctx'>{rows}</table>")
    sections.append("<h2>Decision and calibration</h2>")
    sections.append(_calibration_html(cal, band, threshold, share))
    before = uncalibrated(prob_ai, cal["temperature"])
    sections.append(f"<img alt='reliability diagram' src='{plot_reliability(labels, prob_ai, before, bins)}'>")
    sections.append("<h2>ROC, scores, precision-recall, confusion</h2>")
    sections.append(f"<img alt='ROC and score histogram' src='{plot_roc_and_histogram(labels, prob_ai, threshold)}'>")
    sections.append(f"<img alt='precision-recall curve' src='{plot_precision_recall(labels, prob_ai, threshold)}'>")
    sections.append(f"<img alt='confusion matrix' src='{plot_confusion(labels, prob_ai, threshold)}'>")
    fairness = None
    for column, table in result["groups"].items():
        sections.append(f"<h2>By {html.escape(column)}</h2>")
        sections.append(f"<img alt='by {column}' src='{plot_group_bars(table, column)}'>")
        sections.append(_table_html(table))
        if column == "category" and len(table) > 1:
            gap = float(table["accuracy"].max() - table["accuracy"].min())
            sections.append(f"<p>Largest accuracy gap between categories: <b>{gap:.3f}</b></p>")
            eod = equalized_odds(joined, "category", threshold)
            fairness = {"equalized_odds_difference": eod, "limit": settings.fairness_limit,
                        "flagged": bool(eod > settings.fairness_limit)}  # fmt: skip
            sections.append(_fairness_html(fairness))
    if robustness is not None and len(robustness):
        sections.append("<h2>Robustness</h2>")
        sections.append(
            f"<p>The same metrics on a sample of {int(robustness['n'].iloc[0])} labelled images after each "
            "perturbation (both classes alike), and the drop from the clean sample (negative: better).</p>"
        )
        sections.append(_table_html(robustness))
    if adversarial is not None and len(adversarial):
        sections.append("<h2>Adversarial attacks</h2>")
        sections.append(
            f"<p>{int(adversarial['n'].iloc[0])} labelled images attacked through the detector's views with FGSM "
            "and PGD (L-infinity budget eps, in grey levels of 255; random start, signed steps; fp32), "
            "each pushed towards the wrong class.</p>"
        )
        sections.append(_table_html(adversarial))
    if generalisation is not None and len(generalisation):
        sections.append("<h2>Generalisation: leave one generator out</h2>")
        sections.append(
            "<p>From training (<code>--leave-generator-out</code>): the same recipe and folds trained without "
            "each generator's AI images, validated on them and the real images (never trained on): F1, AUC, "
            "the share of its AI images caught and of the real images passed.</p>"
        )
        sections.append(_table_html(generalisation))
    if galleries:
        sections.append(galleries_html(galleries, threshold))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "img{max-width:100%;margin:.5em 0;display:block}.headline{font-size:1.05em}.meta{color:#666}"
        ".flag{color:#b00}table.grid{border-collapse:collapse;margin:.5em 0}table.grid td,table.grid th"
        "{border:1px solid #ddd;padding:4px 10px;text-align:right}"
        ".gallery{display:flex;flex-wrap:wrap;gap:14px}.gallery figure{margin:0;width:320px}"
        ".gallery figcaption{font-size:.85em;color:#444;overflow-wrap:anywhere}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
    summary = {
        "overall": overall,
        "intervals": intervals,
        "decision": {"threshold": threshold, "review_band": band, "review_share": share},
        "calibration": cal,
        "fairness": fairness,
        "groups": {k: v.to_dict(orient="records") for k, v in result["groups"].items()},
        "robustness": robustness.to_dict(orient="records") if robustness is not None else None,
        "adversarial": adversarial.to_dict(orient="records") if adversarial is not None else None,
        "galleries": gallery_summary(galleries) if galleries else None,
        "generalisation": generalisation.to_dict(orient="records") if generalisation is not None else None,
        "errors": n_errors,
        "threshold": threshold,
        "context": {k: str(v) for k, v in (context or {}).items()},  # what was evaluated (the registry reads it)
    }
    return page, summary


def load_predictions(uri: str, storage_settings: StorageSettings | None = None) -> pd.DataFrame:
    """All Parquet files under a predictions folder (local or s3://), as one frame."""
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_fs(uri, storage_settings)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True,
                           ignore_prefixes=["_", "."])
    return dataset.to_table().to_pandas()


def run_card(predictions_uri: str):
    """A decision card for a scoring run from its `_SUCCESS` manifest (threshold, band, calibration of the
    model card it scored with); None for a run without one."""
    from raydetect.models.bundle import ModelCard
    from raydetect.score.results import read_success

    run = read_success(predictions_uri)
    if not run or "model_name" not in run:
        return None
    return ModelCard(backbone="run", name=str(run["model_name"]), version=str(run.get("model_version")),
                     threshold=float(run.get("threshold", 0.5)), review_band=list(run.get("review_band", [0.4, 0.6])),
                     calibration=run.get("calibration"))  # fmt: skip


def write_report(
    predictions_uri: str,
    labelled: pd.DataFrame,
    output_html: str,
    threshold: float | None = None,
    title: str = "raydetect evaluation",
    context: dict[str, object] | None = None,
    *,
    card=None,
    settings=None,
    robustness: pd.DataFrame | None = None,
    adversarial: pd.DataFrame | None = None,
    explainer=None,
    generalisation: pd.DataFrame | None = None,
) -> dict:
    """Join predictions to labels, write the HTML report and a JSON summary beside it; return the summary.
    Without `card`, the scoring run's `_SUCCESS` manifest gives threshold, band and calibration. `explainer`:
    the loaded model (`bundle.load_detector`), for the galleries' Grad-CAM overlays; without it they show the
    images alone."""
    from raydetect.config import EvaluateSettings
    from raydetect.evaluate.gallery import error_galleries
    from raydetect.evaluate.metrics import join_predictions

    predictions = load_predictions(predictions_uri)
    if threshold is None:
        threshold = float(predictions["threshold"].iloc[0]) if "threshold" in predictions else 0.5
    joined = join_predictions(predictions, labelled)
    if joined.empty:
        raise ValueError(f"no scored row of {predictions_uri} matches a labelled image")
    n_errors = int(predictions["error"].notna().sum()) if "error" in predictions else 0
    card = card if card is not None else run_card(predictions_uri)
    galleries = error_galleries(joined, threshold, explainer, settings or EvaluateSettings())
    page, summary = render_report(joined, threshold, title, context, n_errors, card=card, settings=settings,
                                  robustness=robustness, adversarial=adversarial, galleries=galleries,
                                  generalisation=generalisation)  # fmt: skip
    storage.write_text(output_html, page)
    summary_uri = output_html.rsplit(".", 1)[0] + ".json"
    storage.write_text(summary_uri, json.dumps(summary, indent=2, default=float))
    return summary
