"""The report in a real browser: headless Chromium screenshots the page and dumps its DOM.

Checks: every plot image decodes (naturalWidth > 0), the expected titles are in the DOM, and the
plot regions of the screenshot are not blank (enough non-white pixels). Skipped when no Chromium
is installed (Debian: ``apt-get install -y chromium``; or point ``BSTAR_CHROMIUM`` at a binary).
"""

import os
import re
import shutil
import subprocess

import pytest

from bstar.reports import build_report

from .htmltables import parse

WIDTH, HEIGHT = 1280, 2400


def _chromium() -> str | None:
    env = os.environ.get("BSTAR_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium, or set BSTAR_CHROMIUM)"
)

# test-only: after load, write each image's box and decoded width into the DOM for --dump-dom
_PROBE = """<script>
window.addEventListener('load', function () {
  document.querySelectorAll('img').forEach(function (img) {
    var r = img.getBoundingClientRect();
    img.setAttribute('data-rect', [r.left, r.top + window.scrollY, r.width, r.height].map(Math.round).join(','));
    img.setAttribute('data-natural', img.naturalWidth + 'x' + img.naturalHeight);
  });
  document.body.setAttribute('data-probed', '1');
});
</script>"""


def _chrome(tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=15000",
        "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}", *args,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"chromium failed ({p.returncode}): {p.stderr[-2000:]}"
    return p


@pytest.fixture(scope="module")
def rendered(report_lake, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    path = build_report(["alpha", "beta"], report_lake, out=str(tmp / "report.html"))
    html = open(path, encoding="utf-8").read()
    probe = tmp / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    png = tmp / "shot.png"
    _chrome(tmp, f"--screenshot={png}", f"file://{path}")
    dom = _chrome(tmp, "--dump-dom", f"file://{probe}").stdout
    return png, dom


def test_dom_has_titles_and_decoded_plots(rendered):
    _, dom = rendered
    assert 'data-probed="1"' in dom, "the page did not finish loading within the virtual time budget"
    page = parse(dom)
    for title in ["bstar report: alpha, beta", "Pass@1 per round", "Sampled metrics: Pass@K-S and Reward@K-S",
                  "Diversity", "Balance score per round", "Configuration search (balance score)",
                  "Selected samples per query", "Sample responses: best and worst by reward"]:
        assert title in page.headings, f"missing heading {title!r}"
    for caption in ["Greedy Pass@1 per round", "Pass@K-S per round", "Reward@K-S per round",
                    "Balance score of each round's configuration",
                    "alpha: Balance score over the (temperature, threshold) grid"]:
        assert caption in dom
    assert len(page.images) == 8
    for img in page.images:
        w, h = (int(x) for x in img["data-natural"].split("x"))
        assert w >= 300 and h >= 200, f"plot {img['data-plot']} did not decode: {img['data-natural']}"


def test_screenshot_plot_regions_are_not_blank(rendered):
    from PIL import Image

    png, dom = rendered
    shot = Image.open(png).convert("L")
    assert shot.size == (WIDTH, HEIGHT)
    page = parse(dom)
    checked = []
    for img in page.images:
        x, y, w, h = (int(v) for v in img["data-rect"].split(","))
        if w <= 0 or h <= 0 or x + w > WIDTH or y + h > HEIGHT:
            continue  # below the fold of the screenshot
        region = shot.crop((x, y, x + w, y + h))
        hist = region.histogram()
        non_white = 1 - sum(hist[245:]) / (w * h)
        assert non_white > 0.03, f"plot {img['data-plot']} at {x},{y} looks blank ({non_white:.3f} non-white)"
        checked.append(img["data-plot"])
    assert len(checked) >= 4, f"only {checked} inside the {WIDTH}x{HEIGHT} screenshot"
    # and the page background itself is white: the margin left of the content is blank
    margin = shot.crop((0, 0, 20, HEIGHT)).histogram()
    assert sum(margin[245:]) / (20 * HEIGHT) > 0.99
    assert re.search(r"pass1", " ".join(checked))
