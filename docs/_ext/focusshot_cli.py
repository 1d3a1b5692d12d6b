"""Sphinx directive ``cli-reference``: every sub-command of the ``focusshot`` command with its
usage and a table of its arguments (default and help), read from the real argparse parser
(:func:`focusshot.cli.build_parser`) when the site is built, so the reference cannot drift from
the code.

In a MyST page::

    ```{cli-reference}
    ```

An optional argument names another parser factory, ``module:function``.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

USAGE_WIDTH = 88  # usage lines wrap here, whatever the terminal that builds the docs


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """``(name, sub-parser, one-line help)`` of ``parser``'s sub-commands, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias of a sub-command already listed
                    continue
                seen.add(id(sub))
                out.append((name, sub, helps.get(name, "")))
    return out


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command below ``parser`` (depth first): ``(words after focusshot, parser, help)``."""
    for name, sub, help_ in subcommands(parser):
        yield (*path, name), sub, help_
        yield from walk(sub, (*path, name))


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a reader types: no ``--help``, no sub-command slot, nothing suppressed."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        and a.help != argparse.SUPPRESS
    ]


def invocation(action: argparse.Action) -> str:
    """``--ways WAYS``, ``--strict``, ``support``: as ``--help`` prints it."""
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest
    fmt = argparse.HelpFormatter("focusshot")
    value = fmt._format_args(action, fmt._get_default_metavar_for_optional(action))
    return ", ".join(s if action.nargs == 0 else f"{s} {value}" for s in action.option_strings)


def default_text(action: argparse.Action) -> str:
    """The default in words: ``required``, ``off`` (a switch), ``not set``, or the value as typed."""
    if isinstance(action, argparse._VersionAction):
        return ""
    if not action.option_strings or action.required:
        return "required"
    if action.nargs == 0:
        return "on" if action.default else "off"
    d = action.default
    if d is None:
        return "not set"
    if isinstance(d, (list, tuple)):
        return ",".join(str(v) for v in d)
    return str(d)


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The action's help with ``%(default)s`` and the like expanded, plus its choices and
    whether it repeats when the help does not say so."""
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        choices = ", ".join(f"`{c}`" for c in action.choices)
        text = f"{text} (one of {choices})" if text else f"one of {choices}"
    if isinstance(action, argparse._AppendAction) and "repeat" not in text:
        text += " (repeatable)"
    return text


def usage(parser: argparse.ArgumentParser) -> str:
    fmt = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return fmt.format_help().strip()


def inline(text: str) -> list[nodes.Node]:
    """Plain text with ```code``` spans as literals (help strings use backticks for commands)."""
    out: list[nodes.Node] = []
    for i, part in enumerate(re.split(r"`([^`]+)`", text)):
        if part:
            out.append(nodes.literal(part, part) if i % 2 else nodes.Text(part))
    return out


def _entry(*children: nodes.Node) -> nodes.entry:
    entry = nodes.entry()
    entry += nodes.paragraph("", "", *children)
    return entry


def table(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> nodes.table:
    tab = nodes.table(classes=["cli-arguments"])
    group = nodes.tgroup(cols=3)
    tab += group
    for width in (30, 14, 56):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for title in ("argument", "default", "what it does"):
        row += _entry(nodes.Text(title))
    head += row
    group += head
    body = nodes.tbody()
    for action in actions:
        row = nodes.row()
        call = invocation(action)
        row += _entry(nodes.literal(call, call))
        default = default_text(action)
        row += _entry(nodes.literal(default, default) if default else nodes.Text(""))
        row += _entry(*inline(help_text(parser, action)))
        body += row
    group += body
    return tab


class CliReference(SphinxDirective):
    """A section per command: its help, its usage, and a table of its arguments."""

    optional_arguments = 1
    has_content = False

    def section(self, title: str, ident: str) -> nodes.section:
        sec = nodes.section(ids=[ident], names=[ident])
        sec += nodes.title("", "", nodes.literal(title, title))
        self.state.document.note_implicit_target(sec, sec)
        return sec

    def run(self) -> list[nodes.Node]:
        factory = self.arguments[0] if self.arguments else "focusshot.cli:build_parser"
        module, _, func = factory.partition(":")
        parser: argparse.ArgumentParser = getattr(importlib.import_module(module), func)()
        prog = parser.prog
        top = self.section(prog, "cli-" + prog)
        if parser.description:
            top += nodes.paragraph("", "", *inline(parser.description))
        top += nodes.literal_block(usage(parser), usage(parser), language="text")
        names = [" ".join(path) for path, _, _ in walk(parser)]
        lst = nodes.bullet_list()
        for path, _sub, help_ in walk(parser):
            lst += nodes.list_item("", nodes.paragraph("", "", _link(path), nodes.Text(": "), *inline(help_)))
        top += nodes.paragraph("", f"{len(names)} commands:")
        top += lst
        top_args = arguments(parser)
        if top_args:
            top += table(parser, top_args)
        out: list[nodes.Node] = [top]
        for path, sub, help_ in walk(parser):
            sec = self.section(f"{prog} {' '.join(path)}", "cli-" + "-".join(path))
            if help_:
                sec += nodes.paragraph("", "", *inline(help_[0].upper() + help_[1:] + "."))
            if sub.description and sub.description != help_:
                sec += nodes.paragraph("", "", *inline(sub.description))
            sec += nodes.literal_block(usage(sub), usage(sub), language="text")
            args = arguments(sub)
            if args:
                sec += table(sub, args)
            if subcommands(sub):
                sec += nodes.paragraph("", "", nodes.Text("Sub-commands: "), *self._links(path, sub))
            out.append(sec)
        return out

    @staticmethod
    def _links(path: tuple[str, ...], sub: argparse.ArgumentParser) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for i, (name, _, _) in enumerate(subcommands(sub)):
            if i:
                out.append(nodes.Text(", "))
            out.append(_link((*path, name)))
        return out


def _link(path: tuple[str, ...]) -> nodes.reference:
    """A link to a command's section, showing its words as code."""
    words = " ".join(path)
    return nodes.reference("", "", nodes.literal(words, words), refid="cli-" + "-".join(path))


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("cli-reference", CliReference)
    return {"version": "1", "parallel_read_safe": True}
