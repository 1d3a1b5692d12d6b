"""The documentation site in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
the index, a tutorial, a method page and the CLI reference are opened on a desktop and a phone
screen and screenshotted, with no console error, every image loaded, every table readable to its
last column (a table wider than the text scrolls inside its wrapper, nothing clips it), and the
navigation's titles as the pages write them (``--workers``, not an en dash)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.docs_site import DOCS, built_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)

# Every table in the article: can its last column be scrolled into view, inside the page?
TABLES_JS = """() => Array.from(document.querySelectorAll('article table')).map((table, i) => {
  const wrapper = table.closest('.table-wrapper') || table.parentElement;
  const style = getComputedStyle(wrapper);
  const overflows = wrapper.scrollWidth > wrapper.clientWidth + 1;
  wrapper.scrollLeft = wrapper.scrollWidth;
  const cells = table.querySelectorAll('tr:first-child > *');
  const last = cells[cells.length - 1].getBoundingClientRect();
  const box = wrapper.getBoundingClientRect();
  let clippedBy = null;
  for (let a = wrapper.parentElement; a && a !== document.body; a = a.parentElement) {
    const o = getComputedStyle(a).overflowX;
    if ((o === 'hidden' || o === 'clip') && a.getBoundingClientRect().right < box.right - 1) {
      clippedBy = a.tagName + '.' + a.className;
    }
  }
  wrapper.scrollLeft = 0;
  return {i, overflows, overflowX: style.overflowX, lastRight: last.right, boxLeft: box.left,
          boxRight: box.right, viewport: document.documentElement.clientWidth, clippedBy,
          head: table.innerText.slice(0, 60)};
})"""


def _docname(html: Path, site: Path) -> str:
    return html.relative_to(site).with_suffix("").as_posix()


def _plain(markdown: str) -> str:
    """A heading's text as the reader sees it: no backticks, emphasis markers or link targets."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"(\*\*|\*|__)(\S.*?\S|\S)\1", r"\2", text)
    return " ".join(text.split())


def written_titles() -> dict[str, str]:
    """Docname -> the title its source writes: the first ``# `` heading, or a toctree entry's
    explicit ``Title <doc>``."""
    titles: dict[str, str] = {}
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts:
            continue
        m = re.search(r"^# (.+)$", page.read_text(), re.M)
        if m:
            titles[page.relative_to(DOCS).with_suffix("").as_posix()] = _plain(m.group(1))
    for page in DOCS.rglob("*.md"):
        base = page.relative_to(DOCS).parent
        for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                explicit = re.match(r"^\s*(.+?)\s*<([^>]+)>\s*$", line)
                if explicit and not line.lstrip().startswith(":"):
                    titles[(base / explicit.group(2)).as_posix()] = _plain(explicit.group(1))
    return titles


def pages_to_check(site: Path) -> dict[str, Path]:
    """The index, the first tutorial, the first page that shows a method's options table, and the
    CLI reference; found by globbing, since pages are renamed as the docs grow."""
    out = {"index": site / "index.html", "cli reference": site / "reference" / "cli.html"}
    tutorials = sorted(site.glob("tutorials/*.html")) + sorted(site.glob("tutorial/*.html"))
    if tutorials:
        out["tutorial"] = tutorials[0]
    for html in sorted(site.rglob("*.html")):
        if 'class="method-options' in html.read_text():
            out["method page"] = html
            break
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return built_site(tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_pages_open_with_no_errors_and_tables_that_scroll_instead_of_clipping(
    site, browser, tmp_path
) -> None:
    pages = pages_to_check(site)
    assert {"index", "cli reference", "method page"} <= set(pages), sorted(pages)
    errors: list[str] = []
    problems: list[str] = []
    scrolled = 0
    for (label, html), (device, (width, height)) in (
        (p, v) for p in pages.items() for v in VIEWPORTS.items()
    ):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on(
            "console",
            lambda m, w=f"{label} ({device})": errors.append(f"{w}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e, w=f"{label} ({device})": errors.append(f"{w}: {e}"))
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        sizes = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        if not all(w > 0 for w in sizes):
            problems.append(f"{label} ({device}): an image did not load {sizes}")
        for t in page.evaluate(TABLES_JS):
            where = f"{label} ({device}) table {t['i']} ({t['head']!r})"
            if t["clippedBy"]:
                problems.append(f"{where}: clipped by {t['clippedBy']}")
            if t["overflows"]:
                scrolled += 1
                if t["overflowX"] not in ("auto", "scroll"):
                    problems.append(
                        f"{where}: wider than its wrapper, which does not scroll ({t['overflowX']})"
                    )
            if t["lastRight"] > t["boxRight"] + 1:
                problems.append(f"{where}: its last column ends at {t['lastRight']:.0f} px, past the wrapper")
            if t["boxRight"] > t["viewport"] + 1:
                problems.append(
                    f"{where}: the wrapper runs past the screen ({t['boxRight']:.0f} > {t['viewport']})"
                )
        shot = tmp_path / f"{_docname(html, site).replace('/', '_')}_{device}.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 0
        page.close()
    assert errors == []
    assert not problems, "\n".join(problems)
    assert scrolled, "no table was wider than the text on a phone: the scroll path went unchecked"


def test_navigation_titles_are_as_written(site, browser) -> None:
    titles = written_titles()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto((site / "index.html").resolve().as_uri())
    links = page.evaluate(
        "Array.from(document.querySelectorAll('.sidebar-tree a.reference'))"
        ".map(a => [a.getAttribute('href'), a.innerText])"
    )
    page.close()
    assert links, "no navigation links in the sidebar"
    wrong = []
    for href, text in links:
        doc = href.split("#")[0].removesuffix(".html").removeprefix("./")
        expected = titles.get(doc)
        if expected is not None and " ".join(text.split()) != expected:
            wrong.append(f"{doc}: nav shows {text!r}, the page writes {expected!r}")
    assert not wrong, "\n".join(wrong)
    shown = " ".join(text for _, text in links)
    assert "\u2013" not in shown or "\u2013" in " ".join(titles.values()), shown  # no en dash from "--"
