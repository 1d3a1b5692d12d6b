"""Method options from files and ``--set`` strings (DESIGN principle 10: files only fill dataclasses).

A settings mapping is ``{method: {option: value}}``. Files are JSON, TOML (Python 3.11+) or
YAML (when PyYAML is installed); ``--set lora.rank=8`` adds or overrides one value. Values given
on the command line are read as JSON where they parse (``8``, ``1e-3``, ``true``,
``["*.attn.q"]``) and as plain text otherwise. Whether a method and option exist is checked
when the method is created (:func:`focusshot.methods.base.create_method`), which lists the valid
ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


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
            import tomllib

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
