"""The web page in a real headless Chromium: pick an image, see the decision and the Grad-CAM heatmap."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve_support import deploy, make_model, serve_instance, settings_for_tests, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium"),
]


def _photo(path: Path) -> Path:
    """A real photograph (scikit-image's cat) as a JPEG."""
    from skimage import data

    Image.fromarray(data.chelsea()).save(path, format="JPEG", quality=90)
    return path


def test_page_scores_an_upload_and_shows_the_heatmap(ray_cluster, tmp_path: Path, artifacts_dir: Path):
    from playwright.sync_api import sync_playwright

    model = make_model(tmp_path / "model", "resnet18", image_size=128, seed=5, name="resnet18-demo", views="native")
    image_path = _photo(tmp_path / "chelsea.jpg")
    with serve_instance() as url:
        deploy(settings_for_tests(tmp_path), model)
        wait_ready(url)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1100})
                external: list[str] = []
                page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else
                        external.append(r.url))
                page.goto(url + "/")
                assert "raydetect" in page.title()
                page.set_input_files("#file", str(image_path))
                page.wait_for_selector("#result:not(.hidden)", timeout=120_000)
                page.wait_for_function(
                    "() => { const i = document.getElementById('overlay');"
                    " return i.complete && i.naturalWidth > 0; }", timeout=60_000
                )
                decision = page.inner_text("#decision").strip().lower()
                size = page.evaluate(
                    "() => [document.getElementById('overlay').naturalWidth,"
                    " document.getElementById('overlay').naturalHeight]"
                )
                reason = page.inner_text("#reason")
                info = page.inner_text("#imginfo")
                overlay_src = page.get_attribute("#overlay", "src")
                page.screenshot(path=str(artifacts_dir / "serve_page.png"), full_page=True)
            finally:
                browser.close()
        assert decision in {"real", "ai", "review"}
        assert size == [451, 300]  # the heatmap overlay has the photo's own size
        assert "(P(AI)=" in reason and "evidence for" in reason
        assert not external, external  # no CDN or any other outside request
        # the overlay really carries heat: it differs from the photo where the model looked
        overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(overlay_src.split(",", 1)[1]))).convert("RGB"),
                             dtype=np.int16)
        original = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.int16)
        assert np.abs(overlay - original).mean() > 2
        # 451 x 300 under 128 px native tiles: 4 x 3 tiles, and their heat covers the whole photo, edges included
        assert "451 × 300 px, 12 views" in info, info
        changed = np.abs(overlay - original).mean(axis=(0, 2))
        assert changed[:60].mean() > 1 and changed[-60:].mean() > 1, (changed[:60].mean(), changed[-60:].mean())
        assert httpx.get(url + "/healthz").status_code == 200
