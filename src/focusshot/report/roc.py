"""ROC curves of an open-set run (``evaluate --open-ways`` / ``--open-classes``): known against
unknown queries, one panel per method, one curve per open-set score, the scores of every episode
(or split run) pooled. Read from the result lines alone (``open[score]["scores"]``: the known
queries' scores first, ``known_queries`` of them)."""

from __future__ import annotations

import math
from typing import Any

from focusshot.evaluation.open_set import auroc, roc_curve

__all__ = ["roc_figure"]


def pooled_scores(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """method -> score -> (known scores, unknown scores), pooled over the result lines."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for r in rows:
        n = r.get("known_queries")
        for score, rec in (r.get("open") or {}).items():
            if n is None or "scores" not in rec:
                continue
            k, u = out.setdefault(r["method"], {}).setdefault(score, ([], []))
            k.extend(rec["scores"][:n])
            u.extend(rec["scores"][n:])
    return out


def roc_figure(rows: list[dict[str, Any]]) -> Any:
    """A matplotlib figure of the pooled ROC curves, or ``None`` when no line holds open-set scores."""
    pooled = pooled_scores(rows)
    if not pooled:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(pooled))
    nrows = math.ceil(len(pooled) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.4 * nrows), squeeze=False)
    for ax, (method, scores) in zip(axes.flat, pooled.items(), strict=False):
        for score, (k, u) in scores.items():
            if not k or not u:
                continue
            fpr, tpr = roc_curve(k, u)
            ax.plot(fpr, tpr, label=f"{score} ({auroc(k, u):.3f})")
        ax.plot([0, 1], [0, 1], color="#adb5bd", lw=0.8, ls="--")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("unknown accepted (FPR)", fontsize=8)
        ax.set_ylabel("known accepted (TPR)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right", title="score (pooled AUROC)", title_fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pooled) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
