"""Calibration pooled over result lines: one ECE for the summary, the reliability table and figure.

A method's result lines hold either per-query ``confidence`` (top-label, 4 decimals) and
``correct`` (episodic runs) or per-bin sums ``bins`` (split runs). :func:`pooled_bins` pools them
into one :class:`~focusshot.evaluation.metrics.ReliabilityBins` per method, and every pooled ECE
focusshot writes (``summary``'s ``ece_pooled``, ``reliability.md``, the figure's titles) is that
object's :attr:`~focusshot.evaluation.metrics.ReliabilityBins.ece`: 15 equal-width bins of
top-label confidence (Guo et al., 2017).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from focusshot.evaluation.metrics import ReliabilityBins, confidence_bins, selective_accuracy

__all__ = ["BINS", "COVERAGES", "pooled_bins", "pooled_calibration", "row_bins"]

#: equal-width confidence bins of every ECE
BINS = 15
#: coverages of the selective accuracies
COVERAGES = (0.5, 0.8, 0.9)


def row_bins(row: dict[str, Any], bins: int = BINS) -> ReliabilityBins | None:
    """The bins of one result line (``None`` when it holds no per-query calibration data)."""
    if "bins" in row:
        return ReliabilityBins.from_sums(row["bins"])
    if "confidence" in row and "correct" in row:
        if len(row["confidence"]) != len(row["correct"]):
            raise ValueError(
                f"result line of {row.get('method')!r}: {len(row['confidence'])} confidences but "
                f"{len(row['correct'])} correctness flags"
            )
        return confidence_bins(row["confidence"], [c == "1" for c in row["correct"]], bins)
    return None


def pooled_bins(rows: Iterable[dict[str, Any]], bins: int = BINS) -> dict[str, ReliabilityBins]:
    """Per method (first-appearance order), the bins of all its result lines pooled."""
    out: dict[str, ReliabilityBins] = {}
    for r in rows:
        b = row_bins(r, bins)
        if b is not None:
            out[r["method"]] = out.get(r["method"], ReliabilityBins.empty(len(b.counts))) + b
    return {m: b for m, b in out.items() if b.n > 0}


def pooled_calibration(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``ece_pooled`` over every query of ``rows`` (one method's episodic lines), the number of
    queries, and selective accuracies ``sel50``/``sel80``/``sel90`` at those coverages."""
    pooled = pooled_bins(rows)
    if len(pooled) != 1:
        return {}
    (b,) = pooled.values()
    out: dict[str, Any] = {"ece_pooled": b.ece, "queries_pooled": b.n}
    conf = np.asarray([c for r in rows for c in r.get("confidence", [])])
    ok = np.asarray([int(c) for r in rows if "confidence" in r for c in r["correct"]])
    if len(conf) == b.n:
        for cov in COVERAGES:
            out[f"sel{round(cov * 100)}"] = selective_accuracy(conf, ok, cov)
    return out
