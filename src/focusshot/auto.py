"""``fit --method auto``: choose a method by cross-validation on the user's own support set.

Someone with forty photos in eight folders cannot know whether ProtoNet, a linear probe,
Tip-Adapter-F or a tuned adapter suits them. :func:`choose_method` estimates each candidate's
accuracy on the support set alone -- never on validation or test images -- and picks the best:

* **Folds**: leave-one-out when the support set is small (at most ``loo_max`` images), else
  stratified k-fold with ``k = min(5, smallest class)``; folds are drawn per class from ``seed``.
  Every training fold holds every class. With one image in some class no honest estimate
  exists: the choice falls back to the method registered with ``auto_fallback`` (``text``: a
  CLIP backbone's Tip-Adapter; ``any``: ProtoNet) and says so.
* **Candidates** (:func:`~focusshot.methods.base.auto_candidates`: every method registered with
  an ``auto_order``): the frozen-feature methods the backbone supports (cheap: the shared cache pays
  for each image once), then methods that train, each only while the time ``budget_s`` they may
  use together lasts (one fold is timed first; the method is dropped if all its folds would
  overrun).
* **The winner** has the most held-out images right; a tie goes to the cheaper method (the
  candidates are listed cheapest first, so the choice does not depend on timing noise). Every
  candidate's accuracy (with a 95% interval over held-out images), NLL and time are returned,
  with why the winner won.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from focusshot.backbones.base import Backbone
from focusshot.data.sources import LabelledImages
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.metrics import nll
from focusshot.evaluation.prepare import PreparedImages, prepare_fit
from focusshot.methods.base import auto_candidates, auto_fallback, create_method

__all__ = ["choose_method", "cv_folds"]


def cv_folds(labels: Sequence[int], seed: int, loo_max: int = 40) -> list[list[int]]:
    """Held-out index lists: leave-one-out for ``len(labels) <= loo_max``, else stratified k-fold
    (``k = min(5, smallest class)``), each class's images shuffled by ``seed`` and dealt round
    robin. Raises ``ValueError`` when a class has fewer than two images."""
    counts: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        counts.setdefault(int(y), []).append(i)
    smallest = min(len(v) for v in counts.values())
    if smallest < 2:
        raise ValueError("a class has one image: no image can be held out without losing the class")
    if len(labels) <= loo_max:
        return [[i] for i in range(len(labels))]
    k = min(5, smallest)
    g = torch.Generator().manual_seed(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in sorted(counts):
        idx = counts[c]
        for j, p in enumerate(torch.randperm(len(idx), generator=g).tolist()):
            folds[j % k].append(idx[p])
    return [sorted(f) for f in folds]


def _candidates(backbone: Backbone, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The names that can run on ``backbone`` without regions, and why the others cannot."""
    ok, skipped = [], {}
    for name in names:
        m = create_method(name)
        if m.needs_text and not backbone.capabilities.text:
            skipped[name] = "needs a CLIP backbone"
            continue
        if m.needs_regions or m.augment_views():
            skipped[name] = "needs regions or augmented views"
            continue
        try:
            m.prefix(backbone).resolve(backbone)
        except ValueError as exc:
            skipped[name] = str(exc).split(";")[0]
            continue
        ok.append(name)
    return ok, skipped


def choose_method(
    backbone: Backbone,
    support: LabelledImages,
    cache: FeatureCache,
    *,
    budget_s: float = 60.0,
    seed: int = 0,
    candidates: Sequence[str] | None = None,
    loo_max: int = 40,
    progress: bool = False,
) -> dict[str, Any]:
    """Cross-validate candidates on ``support`` only; returns the report (``method`` is the winner).

    The report: ``method``, ``estimated`` (False when no estimate was possible), ``reason``,
    ``folds`` (``"leave-one-out"`` or ``"stratified k-fold"``, ``k``), ``candidates`` (one row per
    method: accuracy, ci95, nll, seconds, correct, held_out), ``skipped`` (method -> why).
    """
    labels = list(support.labels)
    names = list(candidates) if candidates is not None else auto_candidates()
    runnable, skipped = _candidates(backbone, names)
    default = auto_fallback(backbone)
    try:
        folds = cv_folds(labels, seed, loo_max)
    except ValueError as exc:
        return {
            "method": default,
            "estimated": False,
            "reason": f"{exc}: no honest estimate is possible, so the documented default {default!r} is used",
            "candidates": [],
            "skipped": skipped,
        }
    images = PreparedImages(backbone, cache, support, progress=progress)  # each candidate adds itself
    y = images.labels
    spent = 0.0  # seconds the methods that train have used (the frozen ones are not counted)
    rows: list[dict[str, Any]] = []
    for name in runnable:
        method = create_method(name)
        if method.trains and spent >= budget_s:
            skipped[name] = f"time budget of {budget_s:.0f} s spent"
            continue
        t0 = time.perf_counter()
        images.add([method])  # its prefix (once per distinct prefix), the text if it needs text
        correct = 0
        losses: list[float] = []
        for f, held in enumerate(folds):
            out = set(held)
            keep = torch.tensor([i for i in range(len(labels)) if i not in out])
            try:
                feats, fold_labels, ctx = prepare_fit(method, images, keep, seed=seed)
                fitted = method.fit(feats, fold_labels, ctx)
                with torch.inference_mode():
                    logits = fitted.logits(images.rows(method, torch.tensor(held))[0]).double()
            except (ValueError, RuntimeError) as exc:  # e.g. an adapter with nothing to wrap here
                skipped[name] = "failed: " + (str(exc).splitlines() or [type(exc).__name__])[0][:120]
                break
            correct += int((logits.argmax(-1) == y[held]).sum())
            losses.append(nll(logits, y[held], from_logits=True) * len(held))
            if method.trains and f == 0:  # would the other folds fit in the budget?
                per_fold = time.perf_counter() - t0
                if spent + per_fold * len(folds) > budget_s:
                    skipped[name] = f"{len(folds)} folds of ~{per_fold:.1f} s exceed the time budget"
                    spent += per_fold
                    break
        else:
            if method.trains:
                spent += time.perf_counter() - t0
            n = len(labels)
            acc = correct / n
            rows.append(
                {
                    "method": name,
                    "accuracy": acc,
                    "ci95": 1.96 * math.sqrt(acc * (1 - acc) / n),
                    "nll": sum(losses) / n,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "correct": correct,
                    "held_out": n,
                    "trains": method.trains,
                }
            )
    if not rows:
        return {
            "method": default,
            "estimated": False,
            "reason": f"no candidate could be cross-validated; the default {default!r} is used",
            "candidates": [],
            "skipped": skipped,
        }
    order = {r["method"]: i for i, r in enumerate(rows)}  # candidates are listed cheapest first
    best = max(rows, key=lambda r: (r["correct"], -order[r["method"]]))
    tied = [r["method"] for r in rows if r["correct"] == best["correct"] and r is not best]
    second = sorted(rows, key=lambda r: -r["correct"])[1] if len(rows) > 1 else None
    why = f"most held-out images right ({best['correct']} of {best['held_out']})"
    if tied:
        why += f"; tied with {tied}, and cheaper (listed first)"
    elif second is not None:
        why += f", {best['correct'] - second['correct']} more than {second['method']}"
    return {
        "method": best["method"],
        "estimated": True,
        "reason": why,
        "folds": {
            "scheme": "leave-one-out" if len(folds) == len(labels) else "stratified k-fold",
            "k": len(folds),
        },
        "candidates": sorted(rows, key=lambda r: (-r["correct"], order[r["method"]])),
        "skipped": skipped,
        "seed": seed,
        "budget_s": budget_s,
    }
