"""Comparing two runs of one configuration: what is guaranteed equal, and how equal.

Two runs of the same configuration (one process against a merged ``torchrun`` run, a resumed run
against an uninterrupted one) give

* **bit-identical rows** when every process computes with the same number of CPU threads, on the
  same CPU model and the same library versions;
* otherwise **equal within float tolerance**: a matrix product split over a different number of
  threads sums in another order, and no BLAS promises the same last bits. Floats then agree to
  ``1e-6`` relative (per-query confidences, which the results round to 4 decimals, within one unit
  of that rounding); the fields that say what was run and what was right (:data:`EXACT_FIELDS`)
  agree exactly.

:func:`run_differences` checks the second, weaker guarantee and lists every departure;
:func:`focusshot.evaluation.results.comparable_rows` checks the first.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from focusshot.evaluation.results import comparable_rows

__all__ = ["EXACT_FIELDS", "REL_TOL", "differences", "run_differences", "table_differences"]

#: fields equal exactly whatever the thread counts: what was run, and what was right
EXACT_FIELDS = frozenset(
    {"method", "episode", "seed", "run_seed", "shots", "ways", "queries", "correct", "accuracy", "n"}
)
#: relative tolerance of every other float
REL_TOL = 1e-6
#: values the results round, with the unit of that rounding
ROUNDED = {"confidence": 1e-4}


def _close(a: float, b: float, rel: float, unit: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), 1e-12, unit * 1.0001)


def differences(a: Any, b: Any, where: str = "", field: str = "", rel: float = REL_TOL) -> list[str]:
    """Where ``a`` and ``b`` (JSON-like values) differ beyond the guarantee; empty when equal.

    Strings, booleans, ``None`` and the values of :data:`EXACT_FIELDS` must be equal; other
    numbers within ``rel`` (relative), or within the rounding unit of a :data:`ROUNDED` field.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys differ: {sorted(set(a) ^ set(b))}"]
        return [d for k in sorted(a) for d in differences(a[k], b[k], f"{where}.{k}", k, rel)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{where}[{i}]", field, rel)
        ]
    numbers = (int, float)
    if (
        field not in EXACT_FIELDS
        and isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return (
            [] if _close(float(a), float(b), rel, ROUNDED.get(field, 0.0)) else [f"{where}: {a!r} != {b!r}"]
        )
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _number(cell: str) -> Any:
    try:
        return int(cell)
    except ValueError:
        try:
            return float(cell)
        except ValueError:
            return cell


def table_differences(
    a: str | os.PathLike[str], b: str | os.PathLike[str], rel: float = REL_TOL
) -> list[str]:
    """:func:`differences` between two CSV tables (``summary.csv``, ``paired.csv``), cell by cell."""
    rows = []
    for path in (a, b):
        with open(path, newline="") as f:
            rows.append([{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)])
    return differences(rows[0], rows[1], Path(a).name, rel=rel)


#: ``attention.json`` keys that record the figures of the first episode's fits (which a run resumed
#: past that episode cannot draw), left out of :func:`run_differences`
FIGURE_KEYS = ("explain", "explain_figure", "methods_figure")


def run_differences(a: str | os.PathLike[str], b: str | os.PathLike[str], rel: float = REL_TOL) -> list[str]:
    """Every departure of run folder ``b`` from ``a`` beyond float tolerance: the result lines (less
    their timings, in order), ``summary.csv`` and ``paired.csv``, and ``attention.json`` (less the
    records of figures, :data:`FIGURE_KEYS`)."""
    a, b = Path(a), Path(b)
    rows = [[json.loads(line) for line in comparable_rows(d)] for d in (a, b)]
    out = differences(rows[0], rows[1], "results.jsonl", rel=rel)
    for name in ("summary.csv", "paired.csv"):
        if (a / name).is_file() or (b / name).is_file():
            if not ((a / name).is_file() and (b / name).is_file()):
                out.append(f"{name}: in only one of the runs")
            else:
                out += table_differences(a / name, b / name, rel)
    if (a / "attention.json").is_file() or (b / "attention.json").is_file():
        att = [
            json.loads((d / "attention.json").read_text()) if (d / "attention.json").is_file() else None
            for d in (a, b)
        ]
        for record in att:  # figure records, not results: a resumed run draws no first-episode figure
            for key in FIGURE_KEYS:
                if isinstance(record, dict):
                    record.pop(key, None)
        out += differences(att[0], att[1], "attention.json", rel=rel)
    return out
