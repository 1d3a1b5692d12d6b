"""Table cells that hold a number, optionally with its interval or sign (``0.651 ± 0.025``,
``+0.027``, ``12.5%``), get the class ``fs-nowrap`` so ``_static/focusshot.css`` keeps them on one
line: a wide results table then scrolls sideways instead of breaking every value over three lines.
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes

NUMBER = re.compile(r"^[+\-−]?[\d.,]+\s?%?(\s?±\s?[\d.,]+\s?%?)?(\s?(s|ms|MB|GB|x|×))?$")


def mark_numbers(app: Any, doctree: nodes.document) -> None:
    for entry in doctree.findall(nodes.entry):
        if NUMBER.match(entry.astext().strip()):
            entry["classes"].append("fs-nowrap")


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-read", mark_numbers)
    return {"version": "1", "parallel_read_safe": True}
