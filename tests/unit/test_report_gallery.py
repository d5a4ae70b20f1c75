"""The report's galleries of the most confident mistakes, with the model's Grad-CAM overlays (no Ray)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from raydetect.config import EvaluateSettings
from raydetect.evaluate.gallery import confident_errors
from raydetect.evaluate.report import write_report
from raydetect.models.bundle import load_detector
from tests.datasets import write_scored_images
from tests.serve_support import make_model


def _run(folder: Path, frame) -> str:
    """A scoring run's folder holding `frame`'s P(AI)."""
    folder.mkdir()
    frame.assign(error=None, threshold=0.5)[["path", "prob_ai", "error", "threshold"]].to_parquet(folder / "p.parquet")
    return str(folder)


def test_confident_errors_are_the_surest_wrong_calls_in_order():
    import pandas as pd

    frame = pd.DataFrame({"path": list("abcdefgh"), "label": [0, 0, 0, 1, 1, 1, 0, 1],
                          "prob_ai": [0.9, 0.6, 0.95, 0.1, 0.4, 0.05, 0.2, 0.8]})  # fmt: skip
    errors = confident_errors(frame, 0.5, k=2)
    assert errors["false_positives"]["path"].tolist() == ["c", "a"]
    assert errors["false_negatives"]["path"].tolist() == ["f", "d"]


def test_report_galleries_embed_grad_cam_overlays_of_the_surest_mistakes(tmp_path: Path, one_torch_thread):
    frame = write_scored_images(tmp_path / "images", n=16, size=80)
    model = make_model(tmp_path / "model", "tinycnn", image_size=64, views="native")
    settings = EvaluateSettings(bootstrap=0, gallery_size=3, gallery_max_side=48)
    out = tmp_path / "report.html"
    summary = write_report(_run(tmp_path / "run", frame), frame.drop(columns=["prob_ai"]), str(out),
                           settings=settings, explainer=load_detector(model, device="cpu"))  # fmt: skip
    page = out.read_text()
    for kind, title in (("false_positives", "Most confident false positives"),
                        ("false_negatives", "Most confident false negatives")):  # fmt: skip
        gallery = summary["galleries"][kind]
        expected = confident_errors(frame, 0.5, 3)[kind]
        assert [item["path"] for item in gallery["items"]] == expected["path"].tolist() and len(expected) == 3
        assert gallery["overlays"] and gallery["count"] >= 3
        assert all(item["reason"].startswith(("AI (P(AI)=", "real (P(AI)=", "review")) for item in gallery["items"])
        assert f"<h2>{title}</h2>" in page and f"id='{kind}'" in page
    assert page.count("<figure>") == 6 and "http://" not in page
    first = page.split("alt='false positive 1' src='data:image/png;base64,", 1)[1].split("'", 1)[0]
    thumb = Image.open(io.BytesIO(base64.b64decode(first)))
    assert max(thumb.size) == 48  # scaled down to gallery_max_side (the images are 80 px)
    saved = json.loads((tmp_path / "report.json").read_text())["galleries"]
    assert "image" not in saved["false_positives"]["items"][0]  # no base64 in the JSON summary


def test_without_a_model_the_galleries_show_the_images_and_say_why(tmp_path: Path):
    frame = write_scored_images(tmp_path / "images", n=8)
    frame.loc[0, "path"] = str(tmp_path / "gone.png")  # a file removed since scoring
    frame.loc[0, "prob_ai"] = 0.99  # the surest false positive
    summary = write_report(_run(tmp_path / "run", frame), frame.drop(columns=["prob_ai"]), str(tmp_path / "r.html"),
                           settings=EvaluateSettings(bootstrap=0))  # fmt: skip
    page = (tmp_path / "r.html").read_text()
    items = summary["galleries"]["false_positives"]["items"]
    assert items[0]["error"].startswith("missing") and items[0]["reason"] is None
    assert page.count("alt='false positive ") == len(items) - 1  # each readable one, as it is (no overlay)
    assert "no model given" in page and page.count("<figure>") == sum(len(g["items"]) for g in
                                                                       summary["galleries"].values())
    none = write_report(_run(tmp_path / "run0", frame), frame.drop(columns=["prob_ai"]), str(tmp_path / "n.html"),
                        settings=EvaluateSettings(bootstrap=0, gallery_size=0))
    assert none["galleries"] is None and "Most confident" not in (tmp_path / "n.html").read_text()
