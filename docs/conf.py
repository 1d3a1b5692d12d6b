"""Sphinx configuration of focusshot's documentation: sphinx-build -W -b html docs docs/_build/html."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

from focusshot.versions import VERSION  # noqa: E402

project = "focusshot"
author = "the focusshot developers"
copyright = "2026, the focusshot developers"
release = VERSION
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "focusshot_options",
    "focusshot_cli",
    "focusshot_tables",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"focusshot {VERSION}"
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
# text as written: "--workers" stays two hyphens (no en dash), quotes and "..." stay as typed
smartquotes = False
# wide tables scroll inside their wrapper, with a scrollbar and an edge shadow that show it
html_static_path = ["_static"]
html_css_files = ["focusshot.css"]
