"""Sphinx directive ``method-options``: a method's options table, generated from its options
dataclass (:func:`focusshot.options.option_help`), so the docs cannot drift from the code.

In a MyST page::

    ```{method-options} lora
    ```
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


class MethodOptions(SphinxDirective):
    """The registry name's summary, flags and a table of its options (name, default, help)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        from focusshot.methods.base import method_class
        from focusshot.options import option_help

        name = self.arguments[0]
        cls = method_class(name)  # an unknown name fails the build
        flags = ["trains" if cls.trains else "training-free"]
        if cls.needs_text:
            flags.append("needs a CLIP backbone (text)")
        if cls.groups:
            flags.append("groups: " + ", ".join(cls.groups))
        if cls.extends:
            flags.append(f"extends `{cls.extends}` (its options reach it)")
        lines = [f"**`{name}`**: {_cell(cls.summary)} ({'; '.join(flags)})", ""]
        rows = option_help(cls.Options)
        if rows:
            lines += ["| option | default | what it does |", "|---|---|---|"]
            lines += [f"| `{name}.{o}` | `{_cell(repr(d))}` | {_cell(h)} |" for o, d, h in rows]
        container = nodes.container(classes=["method-options"])
        self.state.nested_parse(StringList(lines, source="method-options"), self.content_offset, container)
        return [container]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("method-options", MethodOptions)
    return {"version": "1", "parallel_read_safe": True}
