"""The report's galleries: the most confident mistakes. False positives are real images called AI, highest
P(AI) first; false negatives are AI images called real, lowest P(AI) first (`evaluate.gallery_size` of each).
With the model at hand (`raydetect evaluate --model`), each comes with its Grad-CAM overlay (the evidence for
the wrong call, stitched over the whole image; explain/core.py) and the reason naming it; the overlays are
scaled down to `evaluate.gallery_max_side` and embedded as base64 PNGs, so the report stays one file."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
from PIL import Image

from raydetect import storage

KINDS = {
    "false_positives": ("Most confident false positives", "real images called AI, highest P(AI) first"),
    "false_negatives": ("Most confident false negatives", "AI-generated images called real, lowest P(AI) first"),
}


def confident_errors(joined: pd.DataFrame, threshold: float, k: int) -> dict[str, pd.DataFrame]:
    """The `k` most confident false positives and false negatives at `threshold` (ties: manifest order)."""
    labels = joined["label"].astype(int)
    prob = joined["prob_ai"].astype(float)
    fp = joined[(labels == 0) & (prob >= threshold)].sort_values("prob_ai", ascending=False, kind="stable")
    fn = joined[(labels == 1) & (prob < threshold)].sort_values("prob_ai", ascending=True, kind="stable")
    return {"false_positives": fp.head(k), "false_negatives": fn.head(k)}


def _data_uri(image: Image.Image, max_side: int) -> str:
    from raydetect.explain.gradcam import png_bytes

    image = image.copy()
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def gallery_item(row: pd.Series, detector, max_side: int) -> dict:
    """One mistake: its path, P(AI) from the scoring run, and (readable) the image or its Grad-CAM overlay."""
    from raydetect.data.images import try_decode

    item = {"path": str(row["path"]), "label": int(row["label"]), "prob_ai": float(row["prob_ai"]),
            "reason": None, "image": None, "error": None}  # fmt: skip
    try:
        image, error = try_decode(storage.read_bytes(item["path"]))
    except OSError as exc:
        image, error = None, f"missing: {exc}"
    if image is None:
        return {**item, "error": str(error)}
    if detector is None:
        return {**item, "image": _data_uri(image, max_side)}
    from raydetect.explain.core import explain_image

    explanation = explain_image(detector, image, "gradcam")
    return {**item, "image": _data_uri(explanation.overlay, max_side), "reason": explanation.reason}


def error_galleries(joined: pd.DataFrame, threshold: float, detector, settings) -> dict[str, dict]:
    """Both galleries (`settings`: config.EvaluateSettings): per kind, how many such mistakes there are and the
    shown ones (`gallery_item`); {} when `gallery_size` is 0."""
    if settings.gallery_size <= 0:
        return {}
    errors = confident_errors(joined, threshold, settings.gallery_size)
    labels = joined["label"].astype(int).to_numpy()
    wrong = {"false_positives": int(np.sum((labels == 0) & (joined["prob_ai"].to_numpy() >= threshold))),
             "false_negatives": int(np.sum((labels == 1) & (joined["prob_ai"].to_numpy() < threshold)))}  # fmt: skip
    return {
        kind: {"count": wrong[kind], "overlays": detector is not None,
               "items": [gallery_item(row, detector, settings.gallery_max_side) for _, row in rows.iterrows()]}
        for kind, rows in errors.items()
    }  # fmt: skip


def galleries_html(galleries: dict[str, dict], threshold: float) -> str:
    """The two gallery sections (an h2 each) as HTML."""
    import html

    parts = []
    for kind, (title, what) in KINDS.items():
        gallery = galleries.get(kind)
        if gallery is None:
            continue
        shown = len(gallery["items"])
        how = ("with the Grad-CAM evidence for the wrong call and the reason naming it" if gallery["overlays"]
               else "(no model given: `raydetect evaluate --model` adds their Grad-CAM overlays)")  # fmt: skip
        parts.append(f"<h2>{title}</h2><p>{shown} of {gallery['count']} {what} at threshold {threshold:.3f}, "
                     f"{how}.</p>")  # fmt: skip
        figures = []
        for i, item in enumerate(gallery["items"], 1):
            caption = f"<b>P(AI) {item['prob_ai']:.3f}</b> · {html.escape(item['path'])}"
            if item["reason"]:
                caption += f"<br>{html.escape(item['reason'])}"
            body = (f"<img alt='{kind.replace('_', ' ')[:-1]} {i}' src='{item['image']}'>" if item["image"]
                    else f"<p class='flag'>{html.escape(str(item['error']))}</p>")  # fmt: skip
            figures.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
        parts.append(f"<div class='gallery' id='{kind}'>{''.join(figures)}</div>" if figures
                     else "<p>None at this threshold.</p>")  # fmt: skip
    return "".join(parts)


def gallery_summary(galleries: dict[str, dict]) -> dict[str, dict]:
    """The galleries for the JSON summary: everything but the embedded images."""
    return {kind: {**g, "items": [{k: v for k, v in item.items() if k != "image"} for item in g["items"]]}
            for kind, g in galleries.items()}  # fmt: skip
