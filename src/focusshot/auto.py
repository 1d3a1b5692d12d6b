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
  an ``auto_order``) that run on the backbone (:func:`~focusshot.methods.base.cannot_run` says why
  the others do not; methods that need augmented views are left out too), cheapest first: the
  frozen-feature methods, then those that train.
* **The budget** ``budget_s`` bounds the whole choice, every candidate included: the seconds its
  own prefix (and its folds) take, and the final fit of the winner on every image, which is kept
  from the budget (estimated from the winner's folds). Only the shared start -- the frozen
  candidates' features (pooled, through the cache) and the class text -- is outside it. A
  candidate starts while time is left; after each fold its mean fold time says whether its other
  folds and a final fit still end within the budget, and it is stopped if not. Every fit runs
  under the budget's deadline (:mod:`focusshot.deadlines`), and every loop that can run long
  checks it: training (:func:`~focusshot.training.loop.train`) at every step, and the frozen
  heads' solvers (the logistic probe's C grid and Newton steps, the SVM and MetaOptNet dual
  solvers, LP++'s and Tip-Adapter-F's epochs). A fit is stopped in mid-fold when the deadline
  passes, or as soon as the pace of its steps says that this fold and those to come will not end
  by it. What is left uninterrupted is short (one solver step or training step, a closed-form
  head such as ridge) except a candidate's own feature extraction (the prefix of a method that
  trains), which runs to its end and can overrun the budget. A stopped candidate is listed under
  ``skipped`` with the fold it stopped at, the step it was at and why; the report's ``budget``
  says where the time went.
* **The winner** has the most held-out images right; a tie goes to the cheaper method (the
  candidates are listed cheapest first, so the choice does not depend on timing noise). Every
  candidate's accuracy (with a 95% interval over held-out images), NLL and time are returned,
  with why the winner won.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from focusshot.backbones.base import Backbone
from focusshot.data.sources import LabelledImages
from focusshot.deadlines import DeadlineExceeded, deadline, now
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.metrics import nll
from focusshot.evaluation.prepare import PreparedImages, prepare_fit
from focusshot.evaluation.protocols import method_threads
from focusshot.methods.base import auto_candidates, auto_fallback, cannot_run, create_method
from focusshot.methods.request import Resolved, resolve

__all__ = ["choose_method", "cv_folds", "write_report"]


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
    """The names that run on ``backbone`` with no more input and no augmented views, and why the
    others do not."""
    ok, skipped = [], {}
    for name in names:
        why = cannot_run(name, backbone)
        if not why and create_method(name).augment_views():
            why = "needs augmented views of the support images (auto computes none)"
        if why:
            skipped[name] = why
        else:
            ok.append(name)
    return ok, skipped


@dataclass
class _Budget:
    """The time ``budget_s`` from ``start`` (a :func:`now` time); ``reserve``: seconds kept for the
    final fit of the best candidate so far."""

    budget_s: float
    start: float
    reserve: float = 0.0

    @property
    def end(self) -> float:
        return self.start + self.budget_s

    def left(self) -> float:
        """Seconds a candidate may still use (the reserve kept back)."""
        return self.end - self.reserve - now()

    def spent(self, why: str) -> str:
        return f"{why}: the budget of {self.budget_s:g} s was spent"


def _cross_validate(
    request: Resolved,
    images: PreparedImages,
    folds: list[list[int]],
    seed: int,
    budget: _Budget,
    to_beat: int,
) -> tuple[dict[str, Any] | None, str, float]:
    """One candidate within ``budget``: its row (``None``: skipped), why it was skipped, and the
    estimated seconds of its final fit on every image (needed only if it gets more than
    ``to_beat`` held-out images right)."""
    method = request.method
    labels = images.labels
    n, k = len(labels), len(folds)
    images.add([request])  # its prefix (once per distinct prefix), the text if it needs text
    if budget.left() <= 0:
        return None, budget.spent(f"stopped before fold 1 of {k}, computing its features"), 0.0
    t0 = now()
    correct, losses = 0, []
    for f, held in enumerate(folds, 1):
        out = set(held)
        keep = torch.tensor([i for i in range(n) if i not in out])
        try:
            feats, fold_labels, ctx = prepare_fit(method, images, keep, seed=seed)
            # training and the heads' solvers stop at the deadline (the reserve kept back), or once
            # the pace of their steps says that this fold and the k - f to come will not end by it
            # heads on one thread, as evaluate fits them (tiny problems: a second thread only adds
            # synchronisation, and on a busy CPU makes a head's time vary tenfold); training on all
            with method_threads(method), deadline(budget.end - budget.reserve, repeats=k - f):
                fitted = method.fit(feats, fold_labels, ctx)
            with method_threads(method), torch.inference_mode():
                logits = fitted.logits(images.rows(method, torch.tensor(held))[0]).double()
        except DeadlineExceeded as exc:
            at = f"stopped in fold {f} of {k}" + (f" ({exc.where})" if exc.where else "")
            if not exc.projected:
                return None, budget.spent(at), 0.0
            pace = "its training" if method.trains else "its solver"
            why = (
                f"{at}: at the pace of {pace}, its {k - f + 1} folds would not end within the "
                f"budget of {budget.budget_s:g} s"
            )
            return None, why, 0.0
        except (ValueError, RuntimeError) as exc:  # e.g. an adapter with nothing to wrap here
            return None, "failed: " + (str(exc).splitlines() or [type(exc).__name__])[0][:120], 0.0
        correct += int((logits.argmax(-1) == labels[held]).sum())
        losses.append(nll(logits, labels[held], from_logits=True) * len(held))
        # do the other folds and a final fit on all n images (if it can win) still fit?
        per_fold = (now() - t0) / f
        final = per_fold * n / (n - n / k)  # a fold trains on n - n/k images on average
        if f == k and correct <= to_beat:
            break  # done, and it cannot win: no final fit of its own to make room for
        need = per_fold * (k - f) + max(0.0, final - budget.reserve)
        if need > budget.left():
            left = max(0.0, budget.left())
            rest = {0: "", 1: "its last fold and "}.get(k - f, f"its other {k - f} folds and ")
            then = rest + "a final fit"
            why = (
                f"stopped after fold {f} of {k}: at ~{per_fold:.1f} s a fold, {then} (~{need:.1f} s) "
                f"would not end within the budget of {budget.budget_s:g} s ({left:.1f} s left)"
            )
            return None, why, final
    acc = correct / n
    row = {
        "method": method.name,
        "accuracy": acc,
        "ci95": 1.96 * math.sqrt(acc * (1 - acc) / n),
        "nll": sum(losses) / n,
        "seconds": 0.0,  # set by the caller: the candidate's whole time, its prefix included
        "correct": correct,
        "held_out": n,
        "trains": method.trains,
    }
    return row, "", final


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
    """Cross-validate candidates on ``support`` only, within ``budget_s`` seconds; returns the
    report (``method`` is the winner).

    The report: ``method``, ``estimated`` (False when no estimate was possible), ``reason``,
    ``folds`` (``"leave-one-out"`` or ``"stratified k-fold"``, ``k``), ``candidates`` (one row per
    method that finished its folds: accuracy, ci95, nll, seconds, correct, held_out, trains),
    ``skipped`` (method -> why: it does not run here, it failed, or the budget stopped it, saying
    at which fold), ``budget`` (``budget_s``; ``shared_s``: the shared features and text, outside
    the budget; ``spent_s``: what the candidates used; ``final_fit_s``: kept for the winner's fit
    on every image, estimated from its folds; ``left_s``; ``seconds``: each candidate that
    started -> its seconds, stopped ones included).
    """
    if not budget_s >= 0:
        raise ValueError(f"budget_s must be >= 0 seconds, got {budget_s!r}")
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
    requests = {name: resolve(name, None, backbone) for name in runnable}  # each prefix derived once
    t_shared = now()
    images = PreparedImages(backbone, cache, support, progress=progress)  # each candidate adds itself
    images.add([r for r in requests.values() if not r.method.trains])  # the shared start
    budget = _Budget(budget_s, now())
    seconds: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for name in runnable:
        if budget.left() <= 0:
            kept = f" ({budget.reserve:.1f} s of it kept for the final fit)" if budget.reserve >= 0.05 else ""
            skipped[name] = budget.spent("not started") + kept
            continue
        t0 = now()
        to_beat = -1 if best is None else best["correct"]
        row, why, final = _cross_validate(requests[name], images, folds, seed, budget, to_beat)
        seconds[name] = round(now() - t0, 3)
        if row is None:
            skipped[name] = why
            continue
        row["seconds"] = seconds[name]
        rows.append(row)
        if best is None or row["correct"] > best["correct"]:  # ties go to the cheaper (earlier) one
            best = row
            budget.reserve = final
    spent = sum(seconds.values())
    report_budget = {
        "budget_s": budget_s,
        "shared_s": round(budget.start - t_shared, 3),
        "spent_s": round(spent, 3),
        "final_fit_s": round(budget.reserve, 3),
        "left_s": round(budget_s - spent - budget.reserve, 3),
        "seconds": seconds,
    }
    loo = len(folds) == len(labels)
    scheme = {"scheme": "leave-one-out" if loo else "stratified k-fold", "k": len(folds)}
    if best is None:
        return {
            "method": default,
            "estimated": False,
            "reason": f"no candidate could be cross-validated; the default {default!r} is used",
            "folds": scheme,
            "candidates": [],
            "skipped": skipped,
            "seed": seed,
            "budget_s": budget_s,
            "budget": report_budget,
        }
    order = {r["method"]: i for i, r in enumerate(rows)}  # candidates are listed cheapest first
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
        "folds": scheme,
        "candidates": sorted(rows, key=lambda r: (-r["correct"], order[r["method"]])),
        "skipped": skipped,
        "seed": seed,
        "budget_s": budget_s,
        "budget": report_budget,
    }


def write_report(report: dict[str, Any], classifier: str | os.PathLike[str]) -> Path:
    """Write ``report`` (:func:`choose_method`'s, ``info["auto"]`` of the fit) beside the
    classifier file it chose for, as ``<classifier stem>.auto.json`` (``focusshot report`` shows
    every such file of a folder); returns its path."""
    path = Path(classifier)
    out = path.with_name(path.stem + ".auto.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
