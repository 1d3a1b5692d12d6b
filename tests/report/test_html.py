"""report.html: written by evaluate, self-contained, and opened in a real headless Chromium (Debian's
``chromium``, driven by Playwright) with every image loaded, the run's methods in its tables and
no console errors; a screenshot is saved."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from focusshot.api import evaluate
from focusshot.report.html import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    import os

    old = os.environ.get("FOCUSSHOT_CACHE")
    os.environ["FOCUSSHOT_CACHE"] = str(tmp / "cache")
    try:
        out = evaluate(
            "tiny-clip-vit",
            "world:clutter?per_class=6&image_size=32",
            ["zeroshot", "protonet", "logistic"],
            "episodic",
            tmp / "run",
            ways=3,
            shots=1,
            queries=2,
            episodes=3,
            pretrained=False,
        )
    finally:
        if old is None:
            os.environ.pop("FOCUSSHOT_CACHE", None)
        else:
            os.environ["FOCUSSHOT_CACHE"] = old
    return out.directory


def test_report_is_self_contained(run_dir) -> None:
    page = (run_dir / "report.html").read_text()
    assert "<h2>Summary</h2>" in page and "prefers-color-scheme: dark" in page
    assert all(m in page for m in ("zeroshot", "protonet", "logistic"))
    # nothing is fetched from anywhere: every image is inline, no script or stylesheet is linked
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "<script" not in page
    assert page.count("data:image/png;base64,") >= 3  # forest plot, reliability, attention maps
    with pytest.raises(FileNotFoundError, match="run.json"):
        write_report(run_dir / "nope")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_opens_in_headless_chromium(run_dir) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for scheme in ("light", "dark"):
            page = browser.new_page(viewport={"width": 390, "height": 844}, color_scheme=scheme)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((run_dir / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            sizes = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            assert sizes and all(w > 0 for w in sizes), sizes
            tables = page.evaluate("Array.from(document.querySelectorAll('table')).map(t => t.innerText)")
            assert any(all(m in t for m in ("zeroshot", "protonet", "logistic")) for t in tables)
            page.screenshot(path=str(run_dir / f"report_{scheme}.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (run_dir / "report_light.png").stat().st_size > 0
