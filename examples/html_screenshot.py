"""Make README's picture of `landscape plot --html` (docs/html-page.png) in headless Chromium.

    python examples/html_screenshot.py docs/html-page.png      # about a minute on 2 cores

Trains a small CNN on the bundled digits for 8 epochs in a temporary store, computes a 41x41 plane
at epochs 0, 2, 4 and 8, writes the page and photographs it at 1200x700 with Debian's Chromium
(/usr/bin/chromium, software WebGL), the browser the tests use.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from landscape_cli import grid, train
from landscape_cli.views.page import write_html

ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        train("cnn", "digits", epochs=8, store=store, progress=False, name="quickstart")
        grid("quickstart", store=store, width=41, pairs=1, batches=1, epochs=[0, 2, 4, 8], batch_size=64, progress=False)
        page_path = write_html(["quickstart"], store=store).path
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto(page_path.as_uri())
            page.wait_for_function("Number(document.body.dataset.renders || 0) >= 1", timeout=60_000)
            page.screenshot(path=out)
            browser.close()
    print(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/html-page.png")
