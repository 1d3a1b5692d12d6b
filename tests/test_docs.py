"""The documentation: every registered method has a page with its options generated from code, the
README stays short and starts with the two commands, the Sphinx site builds with warnings as
errors with every image and internal link resolving, and its CLI reference shows every command and
flag. The site in a real browser: tests/test_docs_browser.py; the commands on its pages:
tests/test_docs_commands.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from focusshot.methods.base import list_methods
from tests.docs_site import built_site

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


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
    return built_site(tmp_path_factory)  # built once per session (tests/test_docs_browser.py too)


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
    assert (site / "index.html").is_file() and (site / "reference" / "cli.html").is_file()
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
    # the options tables are generated from the code (whichever page shows FORT's LoRA variant)
    assert any("lora+fort.fort_alpha" in t and "lora+fort.rank" in t for t in (p.read_text() for p in pages))


def test_cli_reference_shows_every_command_and_flag_with_its_default(site) -> None:
    import argparse

    from focusshot.cli import build_parser

    page = (site / "reference" / "cli.html").read_text()
    missing: list[str] = []

    def visit(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        if f'id="cli-{"-".join(words)}"' not in page and words:
            missing.append(" ".join(words))
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and f">{flag}" not in page:
                    missing.append(f"{' '.join(words)} {flag}")
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    visit(sub, (*words, name))

    visit(build_parser(), ())
    assert not missing, f"the CLI reference lacks {missing}"
    assert "runs/evaluate" in page  # evaluate's default --output, as the parser has it
