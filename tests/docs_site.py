"""The Sphinx site built once per test session (tests/test_docs.py and tests/test_docs_browser.py
share it): ``sphinx-build -W -b html docs <tmp>``, warnings as errors. ``FOCUSSHOT_DOCS_HTML=DIR``
reuses a site already built there instead (e.g. ``docs/_build/html``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_BUILT: dict[str, Path | str] = {}


def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site (built on the first call of the session); skips without Sphinx or MyST. A
    failed build fails every caller with its warnings, without building again."""
    given = os.environ.get("FOCUSSHOT_DOCS_HTML")
    if given:
        assert (Path(given) / "index.html").is_file(), f"FOCUSSHOT_DOCS_HTML={given}: no index.html there"
        return Path(given)
    pytest.importorskip("sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
    pytest.importorskip("myst_parser", reason="myst-parser is not installed (pip install -e '.[docs]')")
    if "html" not in _BUILT:
        out = tmp_path_factory.mktemp("site")
        proc = subprocess.run(
            [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
            capture_output=True,
            text=True,
        )
        _BUILT["html"] = out if proc.returncode == 0 else f"sphinx-build failed:\n{proc.stderr[-4000:]}"
    result = _BUILT["html"]
    assert isinstance(result, Path), result
    return result
