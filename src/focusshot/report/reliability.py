"""Reliability diagrams: per method, accuracy against confidence over 15 equal-width bins.

Reads result lines (``results.jsonl`` rows) as the evaluation wrote them and pools every query
of a method (episodic rows: their per-query ``confidence`` and ``correct``; split rows: their
per-bin sums ``bins``), so a method's diagram and its pooled ECE cover the whole test set. Drawn
with PIL (no plotting dependency): one panel per method, bars at each bin's accuracy, the
diagonal of perfect calibration, the gap shaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["pooled_bins", "reliability_table", "save_reliability_figure"]

BINS = 15


def pooled_bins(rows: Iterable[dict[str, Any]], bins: int = BINS) -> dict[str, dict[str, np.ndarray]]:
    """Per method: ``count``, ``correct`` and ``confidence`` sums per bin ``(bins,)``, pooled."""
    out: dict[str, dict[str, np.ndarray]] = {}
    edges = np.linspace(0.0, 1.0, bins + 1)
    for r in rows:
        acc = out.setdefault(r["method"], {k: np.zeros(bins) for k in ("count", "correct", "confidence")})
        if "bins" in r:
            for k in acc:
                acc[k] += np.asarray(r["bins"][k], dtype=float)
        elif "confidence" in r and "correct" in r:
            conf = np.asarray(r["confidence"], dtype=float)
            ok = np.asarray([c == "1" for c in r["correct"]], dtype=float)
            which = np.searchsorted(edges[1:-1], conf, side="left")
            acc["count"] += np.bincount(which, minlength=bins)
            acc["correct"] += np.bincount(which, weights=ok, minlength=bins)
            acc["confidence"] += np.bincount(which, weights=conf, minlength=bins)
    return {m: v for m, v in out.items() if v["count"].sum() > 0}


def _ece(b: dict[str, np.ndarray]) -> float:
    n = b["count"].sum()
    full = b["count"] > 0
    return float(np.sum(np.abs(b["correct"][full] - b["confidence"][full])) / n)


def reliability_table(pooled: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per method: pooled ECE, accuracy, mean confidence and the number of predictions."""
    out = []
    for m, b in pooled.items():
        n = float(b["count"].sum())
        out.append(
            {
                "method": m,
                "predictions": int(n),
                "accuracy": float(b["correct"].sum() / n),
                "mean_confidence": float(b["confidence"].sum() / n),
                "ece": _ece(b),
            }
        )
    return out


def save_reliability_figure(
    pooled: dict[str, dict[str, np.ndarray]], path: str | Path, methods: Sequence[str] | None = None
) -> Path:
    """One reliability panel per method (in ``methods`` order when given), written as a PNG."""
    names = [m for m in (methods or list(pooled)) if m in pooled]
    if not names:
        raise ValueError("no method has predictions to draw")
    size, pad, cols = 220, 34, min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (size + 2 * pad), rows * (size + 2 * pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, m in enumerate(names):
        b = pooled[m]
        x0 = (i % cols) * (size + 2 * pad) + pad
        y0 = (i // cols) * (size + 2 * pad) + pad
        draw.rectangle([x0, y0, x0 + size, y0 + size], outline="black")
        draw.line([x0, y0 + size, x0 + size, y0], fill=(150, 150, 150))  # perfect calibration
        k = len(b["count"])
        w = size / k
        for j in range(k):
            if b["count"][j] == 0:
                continue
            acc = b["correct"][j] / b["count"][j]
            conf = b["confidence"][j] / b["count"][j]
            left, right = x0 + j * w + 1, x0 + (j + 1) * w - 1
            draw.rectangle([left, y0 + size * (1 - acc), right, y0 + size], fill=(70, 110, 200))
            lo, hi = sorted((acc, conf))
            draw.rectangle([left, y0 + size * (1 - hi), right, y0 + size * (1 - lo)], outline=(220, 60, 60))
        n = int(b["count"].sum())
        draw.text((x0, y0 - pad + 4), f"{m}  ECE {_ece(b):.3f}  n={n}", fill="black")
        draw.text((x0, y0 + size + 4), "confidence 0 -> 1 (x); accuracy (y)", fill=(90, 90, 90))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
