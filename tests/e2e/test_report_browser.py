"""The evaluation report in a real headless Chromium: every section is there, every embedded image decodes,
the galleries show their Grad-CAM overlays, and nothing is fetched from outside the file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from raydetect.config import EvaluateSettings
from raydetect.evaluate.report import write_report
from raydetect.models.bundle import ModelCard, load_detector
from tests.datasets import write_scored_images
from tests.e2e.test_serve_browser import CHROMIUM, CHROMIUM_ARGS
from tests.serve_support import make_model

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium"),
]

SECTIONS = [
    "Headline metrics", "Decision and calibration", "ROC, scores, precision-recall, confusion", "By category",
    "By generator", "Robustness", "Adversarial attacks", "Most confident false positives",
    "Most confident false negatives",
]  # fmt: skip


def _report(tmp_path: Path) -> Path:
    frame = write_scored_images(tmp_path / "images", n=24, size=96, seed=3)
    run = tmp_path / "run"
    run.mkdir()
    frame.assign(error=None, threshold=0.5)[["path", "prob_ai", "error", "threshold"]].to_parquet(run / "p.parquet")
    card = ModelCard(backbone="tinycnn").calibrated({"temperature": 1.5, "threshold": 0.5, "review_band": [0.4, 0.6],
                                                     "threshold_rule": "max_f1", "n": 40, "bins": 10})  # fmt: skip
    table = pd.DataFrame({"perturbation": ["clean", "jpeg50"], "n": [24, 24], "accuracy": [0.6, 0.5]})
    model = load_detector(make_model(tmp_path / "model", "tinycnn", image_size=64, views="native"), device="cpu")
    out = tmp_path / "report.html"
    write_report(str(run), frame.drop(columns=["prob_ai"]), str(out), card=card, explainer=model,
                 settings=EvaluateSettings(bootstrap=20), robustness=table,
                 adversarial=table.rename(columns={"perturbation": "attack"}))  # fmt: skip
    return out


def test_report_opens_with_every_section_and_its_galleries(tmp_path: Path, artifacts_dir: Path, one_torch_thread):
    from playwright.sync_api import sync_playwright

    report = _report(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            external: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else external.append(r.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
            gallery = {kind: page.eval_on_selector_all(
                f"#{kind} figure", "els => els.map(e => [e.querySelector('img').naturalWidth,"
                " e.getBoundingClientRect().width, e.querySelector('figcaption').textContent])")
                for kind in ("false_positives", "false_negatives")}  # fmt: skip
            page.screenshot(path=str(artifacts_dir / "evaluation_report.png"), full_page=True)
        finally:
            browser.close()
    assert headings == SECTIONS
    assert len(images) >= 5 + 12 and all(complete and width > 0 for _, complete, width in images), images
    for kind, figures in gallery.items():
        assert len(figures) == 6, kind  # evaluate.gallery_size
        for width, box, caption in figures:
            assert 0 < width <= 320 and box > 0  # the overlay decoded and is laid out
            assert caption.startswith("P(AI) ") and "evidence for" in caption
    assert not external, external
