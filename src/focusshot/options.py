"""Options: declared once in typed dataclasses, filled from files and ``--set`` strings (DESIGN
principle 10: files only fill dataclasses).

Declaring: :func:`option` is the one way to write a field with its default and help text (the CLI,
``focusshot methods`` and the docs read the help). :func:`takes` composes a component's config
into a method's options: the fields, their types and help come from the component (an adapter's
config, the training loop's), so they are declared in one place; the method states only the
defaults its paper uses, and the values are checked by the component's own validation when the
options are created, before any image is read.

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
import inspect
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "KEEP",
    "Take",
    "merge_settings",
    "option",
    "option_help",
    "parse_setting",
    "read_options_file",
    "takes",
]

T = TypeVar("T", bound=type)


def option(default: Any, help: str) -> Any:
    """A dataclass field with ``default`` and its ``help`` text (in ``metadata["help"]``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The default of field ``f`` (a new one from its factory), ``dataclasses.MISSING`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def option_help(options_cls: type) -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` of every init field of a dataclass (for listings, the CLI, the docs)."""
    out = []
    for f in dataclasses.fields(options_cls):
        if not f.init:
            continue
        default = field_default(f)
        out.append((f.name, default, f.metadata.get("help", "")))
    return out


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


#: :func:`takes`: keep the component's own default
KEEP: Any = _Keep()


@dataclasses.dataclass(frozen=True)
class Take:
    """A field :func:`takes` composes with more than a default: the component's field it comes from
    (``source``, when the option is named otherwise) and a ``help`` text (when its meaning in the
    method differs, e.g. a 0 that means "the number of classes")."""

    default: Any = KEEP
    source: str = ""
    help: str = ""


def takes(source: type, *, check: bool = True, **spec: Any) -> Callable[[T], T]:
    """Class decorator, put *below* ``@dataclass``: add fields of the dataclass ``source`` to the
    decorated options class, with this class's defaults.

    ``spec`` maps each option name to its default (:data:`KEEP`: ``source``'s) or to a
    :class:`Take`. Type and help come from ``source``. With ``check`` the options' ``__post_init__``
    also builds ``source`` from these fields, so ``source``'s own validation rejects a bad value
    when the options are created (the error names the option).
    """
    fields = {f.name: f for f in dataclasses.fields(source)}

    def deco(cls: T) -> T:
        own = dict(inspect.get_annotations(cls))
        added: dict[str, Any] = {}
        mapping: dict[str, str] = {}
        for name, value in spec.items():
            take = value if isinstance(value, Take) else Take(default=value)
            src = take.source or name
            if src not in fields:
                raise TypeError(f"{cls.__name__}: {source.__name__} has no field {src!r}")
            f = fields[src]
            default = take.default
            if default is KEEP:
                default = field_default(f)
                if default is dataclasses.MISSING:
                    raise TypeError(f"{cls.__name__}: {source.__name__}.{src} has no default to keep")
            added[name] = f.type
            setattr(cls, name, option(default, take.help or f.metadata.get("help", "")))
            mapping[name] = src
        cls.__annotations__ = {**added, **{k: v for k, v in own.items() if k not in added}}
        if check:
            previous = getattr(cls, "__post_init__", None)

            def __post_init__(self: Any) -> None:
                if previous is not None:
                    previous(self)
                try:
                    source(**{src: getattr(self, name) for name, src in mapping.items()})
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{type(self).__name__} ({', '.join(mapping)}): {exc}") from None

            cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
        return cls

    return deco


def read_options_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{method: {option: value}}`` from a ``.json``, ``.toml`` or ``.yaml``/``.yml`` file."""
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
    """``base`` with every ``METHOD.OPTION=VALUE`` of ``settings`` applied (later ones win)."""
    out = {k: dict(v) for k, v in base.items()}
    for text in settings:
        method, option, value = parse_setting(text)
        out.setdefault(method, {})[option] = value
    return out
