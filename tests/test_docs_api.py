"""The API reference describes every parameter: each function, method and class that docs/api.md
documents (its ``automodule`` / ``autoclass`` directives and their ``:members:``) has every
parameter (a dataclass: every field) described in its docstring (a Google-style ``Args:`` or
``Attributes:`` section, a ``#:`` comment, or an option's ``help``). The public names a user meets
first (``evaluate``, ``fit``, ``Classifier``, ``RunOutcome``, ``LabelledImages``) are there.

Any gap fails, naming the object and its undescribed parameters.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented() -> Iterator[tuple[str, Any]]:
    """``(qualified name, object)`` of every top-level object docs/api.md documents."""
    text = API_PAGE.read_text()
    for m in re.finditer(r"^\.\. auto(module|class|function):: (\S+)\n((?:   :\w+:.*\n)*)", text, re.M):
        kind, target, opts = m.groups()
        members = re.search(r":members:(.*)", opts)
        if kind == "module":
            module = importlib.import_module(target)
            names = [n.strip() for n in members.group(1).split(",") if n.strip()] if members else []
            if members and not names:  # every public member with a docstring
                names = list(getattr(module, "__all__", None) or vars(module))
                names = [
                    n
                    for n in names
                    if not n.startswith("_")
                    and (inspect.isclass(getattr(module, n)) or inspect.isfunction(getattr(module, n)))
                    and getattr(getattr(module, n), "__module__", None) == target
                    and inspect.getdoc(getattr(module, n))
                ]
            for n in names:
                yield f"{target}.{n}", getattr(module, n)
        else:
            module_name, _, name = target.rpartition(".")
            obj = getattr(importlib.import_module(module_name), name)
            yield target, obj
            if kind == "class" and members:
                for n in (x.strip() for x in members.group(1).split(",") if x.strip()):
                    yield f"{target}.{n}", getattr(obj, n)


def described(obj: Any) -> set[str]:
    """The parameter and attribute names ``obj``'s docstring describes (as napoleon reads it)."""
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    rst = str(GoogleDocstring(inspect.getdoc(obj) or "", Config(napoleon_use_param=True), what="function"))
    names = set(re.findall(r"^:param (?:[^:]+ )?(?:\\?\*)*(\w+):", rst, re.M))  # napoleon: \*\*kwargs
    names |= set(re.findall(r"^\.\. attribute:: (\w+)", rst, re.M))
    return names | set(re.findall(r"^:ivar (\w+):", rst, re.M))


def _parameters(func: Any) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls")]


def gaps(qual: str, obj: Any) -> Iterator[tuple[str, list[str]]]:
    """``(name, undescribed parameters)`` of ``obj`` and, for a class, of its public methods."""
    if not inspect.isclass(obj):
        missing = [p for p in _parameters(obj) if p not in described(obj)]
        if missing:
            yield qual, missing
        return
    names = described(obj)
    if dataclasses.is_dataclass(obj):
        from sphinx.pycode import ModuleAnalyzer

        comments = ModuleAnalyzer.for_module(obj.__module__).find_attr_docs()
        names |= {attr for (cls, attr) in comments if cls == obj.__name__}
        wanted = [f.name for f in dataclasses.fields(obj) if not f.metadata.get("help")]
    else:
        names |= described(obj.__init__)
        wanted = _parameters(obj)
    missing = [p for p in wanted if p not in names]
    if missing:
        yield qual, missing
    for name, member in vars(obj).items():
        func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if name.startswith("_") or not inspect.isfunction(func) or not inspect.getdoc(func):
            continue
        missing = [p for p in _parameters(func) if p not in described(func)]
        if missing:
            yield f"{qual}.{name}", missing


def test_the_names_a_user_meets_first_are_in_the_api_reference() -> None:
    names = {q for q, _ in documented()}
    for want in ("focusshot.api.evaluate", "focusshot.api.fit", "focusshot.classifier.Classifier"):
        assert want in names, want
    assert any(q.endswith(".RunOutcome") for q in names) and any(q.endswith(".LabelledImages") for q in names)


def test_every_parameter_in_the_api_reference_is_described() -> None:
    pytest.importorskip("sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
    found = {q: m for qual, obj in documented() for q, m in gaps(qual, obj)}
    assert not found, "parameters without a description (add an Args: section):\n" + "\n".join(
        f"{q}: {', '.join(m)}" for q, m in sorted(found.items())
    )
