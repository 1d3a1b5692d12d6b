"""Reliability diagrams: per method, accuracy against confidence over 15 equal-width bins.

Reads result lines (``results.jsonl`` rows) as the evaluation wrote them and pools every query
of a method (:func:`focusshot.evaluation.calibration.pooled_bins`), so a method's diagram and
its pooled ECE cover the whole test set, and equal the summary's ``ece_pooled``. Drawn
with PIL (no plotting dependency): one panel per method, bars at each bin's accuracy, the
diagonal of perfect calibration, the gap shaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from focusshot.evaluation.calibration import pooled_bins
from focusshot.evaluation.metrics import ReliabilityBins

__all__ = ["pooled_bins", "reliability_table", "save_reliability_figure"]


def reliability_table(pooled: dict[str, ReliabilityBins]) -> list[dict[str, Any]]:
    """One row per method: pooled ECE (``ece_pooled``: every prediction of the rows pooled, the same
    figure as the summary's), accuracy, mean confidence and the number of predictions."""
    return [
        {
            "method": m,
            "predictions": b.n,
            "accuracy": float(b.correct.sum() / b.n),
            "mean_confidence": float(b.confidence_sum.sum() / b.n),
            "ece_pooled": b.ece,
        }
        for m, b in pooled.items()
    ]


def save_reliability_figure(
    pooled: dict[str, ReliabilityBins], path: str | Path, methods: Sequence[str] | None = None
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
        k = len(b.counts)
        w = size / k
        for j in range(k):
            if b.counts[j] == 0:
                continue
            acc, conf = float(b.accuracy[j]), float(b.confidence[j])
            left, right = x0 + j * w + 1, x0 + (j + 1) * w - 1
            draw.rectangle([left, y0 + size * (1 - acc), right, y0 + size], fill=(70, 110, 200))
            lo, hi = sorted((acc, conf))
            draw.rectangle([left, y0 + size * (1 - hi), right, y0 + size * (1 - lo)], outline=(220, 60, 60))
        draw.text((x0, y0 - pad + 4), f"{m}  ECE {b.ece:.3f}  n={b.n}", fill="black")
        draw.text((x0, y0 + size + 4), "confidence 0 -> 1 (x); accuracy (y)", fill=(90, 90, 90))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
