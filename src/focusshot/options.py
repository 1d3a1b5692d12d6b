"""Options: declared once in typed dataclasses, filled from files and ``--set`` strings (DESIGN
principle 10: files only fill dataclasses).

Declaring: an options class is a frozen dataclass whose fields are written out, each with
:func:`option`, the one way to give a field its default and help text (the CLI, ``focusshot
methods`` and the docs read the help), so the type checker sees every option. Options shared by
several methods live in one base class or mixin they inherit (the tuning recipes' training fields,
FORT's fields); a component's config (an adapter's, the training loop's) is built from the fields
by a method of the options class, and :func:`check_component` builds it when the options are
created, so the component's own validation refuses a bad value before any image is read.
:class:`Checked` roots the ``__post_init__`` chain a mixin's checks join through ``super()``.

Filling:

A settings mapping is ``{method: {option: value}}``. Files are JSON, TOML (Python 3.11+) or
YAML (when PyYAML is installed); ``--set lora.rank=8`` adds or overrides one value. Values given
on the command line are read as JSON where they parse (``8``, ``1e-3``, ``true``,
``["*.attn.q"]``) and as plain text otherwise. Whether a method and option exist is checked
when the method is created (:func:`focusshot.methods.base.create_method`), which lists the valid
ones.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "Checked",
    "check_component",
    "merge_settings",
    "option",
    "option_help",
    "options_dict",
    "parse_setting",
    "read_options_file",
]

T = TypeVar("T")


def option(default: T, help: str, *, repr: bool = True) -> T:
    """A dataclass field with ``default`` and its ``help`` text (in ``metadata["help"]``). Typed as
    its default, so ``rank: int = option(4, ...)`` reads to the type checker as the field it is.

    Args:
        default: the field's default value, shared by every instance; dataclasses refuse a
            mutable one such as a list or dict (use a tuple).
        help: one line saying what the option does, shown by the CLI, ``focusshot methods`` and
            the docs' option tables.
        repr: whether the dataclass's ``repr`` shows the field (default ``True``).
    """
    return dataclasses.field(default=default, metadata={"help": help}, repr=repr)


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The default of field ``f`` (a new one from its factory), ``dataclasses.MISSING`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def option_help(options_cls: type) -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` of every init field of a dataclass (for listings, the CLI, the docs).

    Args:
        options_cls: the dataclass (an options class). A field without a default gives
            ``dataclasses.MISSING``, one with a default factory a freshly made value, and one
            without help text ``""``.
    """
    out = []
    for f in dataclasses.fields(options_cls):
        if not f.init:
            continue
        default = field_default(f)
        out.append((f.name, default, f.metadata.get("help", "")))
    return out


def options_dict(options: Any) -> dict[str, Any]:
    """The options dataclass ``options`` as JSON-able values (tuples become lists)."""
    out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(options)))
    return out


class Checked:
    """The root of an options class whose checks are spread over mixins: every ``__post_init__``
    in the hierarchy calls ``super().__post_init__()`` and ends here."""

    def __post_init__(self) -> None:
        """Nothing left to check."""


def check_component(options: object, names: tuple[str, ...], build: Callable[[], object]) -> None:
    """Run ``build`` (which makes a component's config from the option fields ``names``), so the
    component's own validation refuses a bad value now; its error becomes a ``ValueError`` naming the
    options class and those fields."""
    try:
        build()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{type(options).__name__} ({', '.join(names)}): {exc}") from None


def read_options_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{method: {option: value}}`` from a ``.json``, ``.toml`` or ``.yaml``/``.yml`` file.

    Args:
        path: the options file; its suffix (any case) picks the format. TOML needs Python 3.11 or
            ``tomli``, YAML needs PyYAML.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: another suffix, a missing parser, a file that does not parse, or content that
            is not a table of method tables.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such options file")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # Python 3.10 has no tomllib; tomli is the same parser (a dependency there)
                try:
                    import tomli as tomllib
                except ImportError as exc:
                    raise ValueError(
                        f"{p}: reading TOML on Python 3.10 needs tomli (pip install tomli); or use JSON/YAML"
                    ) from exc
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ValueError(
                    f"{p}: reading YAML needs PyYAML (pip install pyyaml); or use JSON/TOML"
                ) from exc
            data = yaml.safe_load(text)
        else:
            raise ValueError(f"{p}: options files are .json, .toml or .yaml, not {suffix or 'no suffix'!r}")
    except ValueError:
        raise
    except Exception as exc:  # parse errors of any of the three formats
        raise ValueError(f"{p}: cannot parse options file: {exc}") from exc
    return _check(data, str(p))


def _check(data: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(
            f"{where}: options must map each method to a table of options, e.g. {{lora: {{rank: 8}}}}"
        )
    return {str(k): dict(v) for k, v in data.items()}


def parse_setting(text: str) -> tuple[str, str, Any]:
    """``"lora.rank=8"`` -> ``("lora", "rank", 8)``."""
    key, sep, raw = text.partition("=")
    method, dot, option = key.strip().partition(".")
    if not sep or not dot or not method or not option:
        raise ValueError(f"--set {text!r}: expected METHOD.OPTION=VALUE, e.g. lora.rank=8")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return method, option.strip(), value


def merge_settings(base: dict[str, dict[str, Any]], settings: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``base`` with every ``METHOD.OPTION=VALUE`` of ``settings`` applied (later ones win).

    Args:
        base: ``{method: {option: value}}``, e.g. from :func:`read_options_file`; not modified.
        settings: ``--set`` strings ``METHOD.OPTION=VALUE``; a value is read as JSON where it
            parses (``8``, ``1e-3``, ``true``, ``["*.attn.q"]``) and kept as text otherwise.

    Returns:
        a new settings mapping.

    Raises:
        ValueError: a setting that is not ``METHOD.OPTION=VALUE``.
    """
    out = {k: dict(v) for k, v in base.items()}
    for text in settings:
        method, option, value = parse_setting(text)
        out.setdefault(method, {})[option] = value
    return out
