"""The HTML reports as a reader sees them: each one opens in headless Chromium with no console
error and no broken image, fits the window's width, has a screenshot that is not blank, and
stays light (images compressed and never repeated)."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path

import pytest

# Byte budgets for the pages written by the quick configurations used here.
BUDGETS = {"demo": 1_500_000, "coverage": 400_000, "scaling": 300_000}

_PAGE_FACTS = """
const images = Array.from(document.images);
return {
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  viewport: window.innerWidth,
  images: images.length,
  broken: images.filter(i => !i.complete || i.naturalWidth === 0)
                .map(i => i.alt || i.src.slice(0, 60)),
  title: document.title,
  sections: document.querySelectorAll('section').length,
};
"""


def _data_images(text: str) -> list[bytes]:
    found = re.findall(r'src="data:image/[a-z+]+;base64,([^"]+)"', text)
    return [base64.b64decode(data) for data in found]


def _screenshot_is_not_blank(png: bytes) -> bool:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    low, high = image.getextrema()
    return high - low > 50


def check_in_browser(browser, page: Path, screenshot_dir: Path, name: str) -> dict:
    assert page.exists(), f"{page} was not written"
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.resolve().as_uri())
    facts = browser.execute_script(_PAGE_FACTS)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    shot = screenshot_dir / f"{name}.png"
    # The whole page (up to 16,000 px tall), not only the window.
    clip = {"x": 0, "y": 0, "width": facts["viewport"], "height": min(facts["height"], 16_000),
            "scale": 1}
    png = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": clip})["data"]
    shot.write_bytes(base64.b64decode(png))
    facts.update(errors=errors, screenshot=shot)
    return facts


def _check_report(browser, page, screenshot_dir, name, min_images):
    facts = check_in_browser(browser, page, screenshot_dir, name)
    assert facts["errors"] == [], f"console errors in {name}: {facts['errors']}"
    assert facts["broken"] == [], f"broken images in {name}: {facts['broken']}"
    assert facts["images"] >= min_images, facts
    assert facts["sections"] >= 1 and facts["title"], facts
    # The page fits the window's width (tables and figures scale down), and has content.
    assert facts["width"] <= facts["viewport"], f"{name} is wider than the window: {facts}"
    assert facts["height"] > 600, facts
    assert _screenshot_is_not_blank(facts["screenshot"].read_bytes()), facts["screenshot"]
    # Light: under budget, every image compressed (PNG or SVG) and none repeated.
    text = page.read_text()
    assert len(text.encode()) < BUDGETS[name], f"{name}: {len(text.encode()):,} bytes"
    images = _data_images(text)
    assert len(images) == facts["images"], "every image is inlined"
    digests = [hashlib.sha256(image).hexdigest() for image in images]
    assert len(set(digests)) == len(digests), f"{name} repeats an image"
    return facts


# The quick demo's short NUTS run on eight schools warns, as it should for a user; the report
# shows those diagnostics, so here they are expected, not noise. (With jax 0.12 the
# stuck-chain rule also restarts some of this short run's chains, and says so.)
@pytest.mark.filterwarnings("ignore:.*divergent transition")
@pytest.mark.filterwarnings("ignore:R-hat > 1.01")
@pytest.mark.filterwarnings("ignore:Stuck chain")
def test_demo_report_in_chromium(browser, demo_report, screenshot_dir):
    _check_report(browser, demo_report, screenshot_dir, "demo", min_images=10)


def test_coverage_report_in_chromium(browser, coverage_report, screenshot_dir):
    _check_report(browser, coverage_report, screenshot_dir, "coverage", min_images=3)


def test_scaling_report_in_chromium(browser, scaling_report, screenshot_dir):
    _check_report(browser, scaling_report, screenshot_dir, "scaling", min_images=3)


def test_the_check_catches_what_it_looks_for(browser, tmp_path, screenshot_dir):
    """Negative control: a console error, a broken image and an overflowing table are found."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body><section>"
        "<img alt='missing' src='missing.png'><div style='width:3000px'>wide</div>"
        "<script>console.error('boom')</script></section></body></html>")
    facts = check_in_browser(browser, page, screenshot_dir, "negative_control")
    messages = " ".join(entry["message"] for entry in facts["errors"])
    assert "boom" in messages and "missing.png" in messages
    assert facts["broken"] == ["missing"]
    assert facts["width"] > facts["viewport"]


def test_report_figures_are_compressed():
    """figure_html inlines a palette PNG, under half the bytes of matplotlib's own PNG of the
    same figure at the same resolution, and caps the width of very wide figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image
    from ppl.diagnostics.html import FIGURE_DPI, MAX_FIGURE_WIDTH_PX, figure_html

    def trace_figure(width):
        rng = np.random.default_rng(0)
        fig, axes = plt.subplots(2, 2, figsize=(width, 4))
        for ax in axes.ravel():
            for _ in range(4):
                ax.plot(rng.normal(size=1000), lw=0.5)
        return fig

    plain = io.BytesIO()
    trace_figure(12).savefig(plain, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    (image,) = _data_images(figure_html(trace_figure(12), "trace"))
    assert Image.open(io.BytesIO(image)).mode == "P"
    assert len(image) < len(plain.getvalue()) / 2, (len(image), len(plain.getvalue()))
    (wide,) = _data_images(figure_html(trace_figure(30), "wide"))
    assert Image.open(io.BytesIO(wide)).width <= MAX_FIGURE_WIDTH_PX
