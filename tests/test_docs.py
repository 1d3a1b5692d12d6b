"""The documentation: every registered method has a page with its options generated from code, the
README stays short and starts with the two commands, the Sphinx site builds with warnings as
errors, and a reader's browser opens it with every image and internal link resolving."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from focusshot.methods.base import list_methods

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _directives() -> dict[str, list[str]]:
    """Method name -> the pages whose ``method-options`` directive shows it."""
    out: dict[str, list[str]] = {}
    for page in DOCS.rglob("*.md"):
        for name in re.findall(r"^```\{method-options\}\s+(\S+)\s*$", page.read_text(), re.M):
            out.setdefault(name, []).append(str(page.relative_to(DOCS)))
    return out


def test_every_registered_method_has_a_page_with_its_options() -> None:
    shown = _directives()
    missing = [m for m in list_methods() if m not in shown]
    assert not missing, f"methods without a docs page (add a method-options directive): {missing}"
    unknown = sorted(set(shown) - set(list_methods()))
    assert not unknown, f"docs show methods that are not registered: {unknown}"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert "focusshot evaluate --backbone world-clip --data world:clutter --method all" in block
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = [line for line in ci.splitlines() if line.startswith("ruff check")]
    assert test_command and test_command[0] in block  # the README's command 2 is what CI runs
    assert text.index("```bash") < text.index("## ")  # before any section


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
    pytest.importorskip("myst_parser", reason="myst-parser is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value and ((tag == "a" and key == "href") or (tag == "img" and key == "src")):
                self.refs.append(value)


def test_site_builds_and_every_internal_link_and_image_resolves(site) -> None:
    pages = list(site.rglob("*.html"))
    assert (site / "index.html").is_file() and (site / "methods" / "fort.html").is_file()
    broken = []
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        for ref in parser.refs:
            url = urlparse(ref)
            if url.scheme or ref.startswith(("#", "mailto:")):
                continue
            target = (page.parent / unquote(url.path)).resolve()
            if url.path and not target.exists():
                broken.append(f"{page.relative_to(site)} -> {ref}")
    assert not broken, broken
    # the options tables are generated from the code
    fort = (site / "methods" / "fort.html").read_text()
    assert "lora+fort.fort_alpha" in fort and "lora+fort.rank" in fort


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_site_opens_in_headless_chromium(site) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for name in ("index.html", "methods/fort.html", "methods/sav.html"):
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((site / name).resolve().as_uri())
            page.wait_for_load_state("load")
            sizes = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 0 for w in sizes), (name, sizes)
            assert page.title()
        browser.close()
    assert errors == []
