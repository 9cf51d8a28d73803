"""The web page in a real headless Chromium (Debian's package, driven by Playwright's Python API):
two images uploaded through the file picker, the probabilities the page shows against the API's,
the 7x7 mosaic it draws against dgsnet's own tile of the same file.

Playwright cannot download its browser here, so it drives /usr/bin/chromium; where that is missing and
the tests run as root, the session installs it with apt-get (a minute or two) and skips, saying why,
only where that cannot be done. DGSNET_UPDATE_SCREENSHOT=1 writes the page to docs/serve-page.png.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from dgsnet.image.decode import load_rgb
from dgsnet.image.preprocess import select_patches

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def chromium() -> str:
    if not CHROMIUM.exists():
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            pytest.skip(f"PAGE TEST NOT RUN: {CHROMIUM} is missing and cannot be installed here "
                        f"({'no apt-get' if apt is None else 'not root'}); install Debian's chromium package")
        steps = [[apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if done.returncode != 0:
                pytest.skip(f"PAGE TEST NOT RUN: `{' '.join(step)}` failed ({done.stderr.strip()[-500:]})")
        if not CHROMIUM.exists():
            pytest.skip(f"PAGE TEST NOT RUN: apt-get installed chromium but {CHROMIUM} is still missing")
    return str(CHROMIUM)


def test_page_shows_the_apis_probabilities_and_the_tile(server, serve_images, chromium, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [dev] extra")
    good, _ = serve_images
    # lossless files, so the browser's pixels are the decoder's: one photo, one small (mirror-padded) image
    files = [next(p for p in good if p.name.endswith("chelsea.png")), next(p for p in good if p.name == "tiny.png")]
    api = httpx.post(server.url + "/v1/detect", timeout=120,
                     files=[("image", (p.name, p.read_bytes())) for p in files]).json()["results"]

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1000})
            external = []
            page.on("request", lambda r: r.url.startswith(server.url) or external.append(r.url))
            page.goto(server.url + "/")
            page.wait_for_selector("#threshold")
            assert page.inner_text("#threshold") == "0.5"
            assert "detector.onnx" in page.inner_text("#model")
            page.set_input_files("#files", [str(p) for p in files])
            # (locators, not wait_for_function: the page's CSP forbids the eval that would need)
            sync_api.expect(page.locator(".result")).to_have_count(2, timeout=60_000)
            for path, entry in zip(files, api):
                card = page.locator(f".result[data-name='{path.name}']")
                shown = card.locator(".probability").inner_text()
                assert shown == f"{entry['probability']:.4f}"
                assert abs(float(shown) - entry["probability"]) <= 5e-5
                assert card.locator(".label").text_content() == entry["label"]
                width = card.locator(".fill").evaluate("e => e.style.width")
                assert abs(float(width.rstrip("%")) - 100 * entry["probability"]) <= 0.0051  # the bar's length
                pixels = np.array(card.locator("canvas").evaluate(
                    "c => Array.from(c.getContext('2d').getImageData(0, 0, 224, 224).data)"), np.uint8)
                mosaic = pixels.reshape(224, 224, 4)[..., :3]
                tile = select_patches(load_rgb(path))
                # inside each patch (the outline covers its outer 3 px) the page shows dgsnet's tile
                inner = np.zeros((224, 224), bool)
                for r in range(7):
                    for c in range(7):
                        inner[r * 32 + 3:r * 32 + 29, c * 32 + 3:c * 32 + 29] = True
                np.testing.assert_array_equal(mosaic[inner], tile[inner])
                colours = [tuple(mosaic[(s // 7) * 32 + 1, (s % 7) * 32 + 16]) for s in range(49)]
                low = {s for s, patch in enumerate(entry["patches"]["tile"]) if patch["entropy"] == "low"}
                assert {s for s, c in enumerate(colours) if c[2] > c[0]} == low  # blue outline: low entropy
            assert not external, external
            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("DGSNET_UPDATE_SCREENSHOT") == "1":
                shutil.copyfile(shot, ROOT / "docs" / "serve-page.png")
        finally:
            browser.close()
