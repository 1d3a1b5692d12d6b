"""Open-set metrics and the choice of a rejection threshold from the support set alone.

The scores themselves are defined once, in :mod:`focusshot.methods.open_set`; here they are
measured and thresholded. A query is *accepted* (a known class) when its score is at least the
threshold, *rejected* (``unknown``) below it.

* :func:`auroc`: the area under the ROC curve of known (positive) against unknown queries, the
  Mann-Whitney statistic with ties counted one half;
* :func:`fpr_at_tpr`: the fraction of unknown queries accepted at the highest threshold that
  keeps ``tpr`` (95%) of the known ones;
* :func:`open_accuracy`: open-set accuracy at a threshold, over known and unknown queries
  together (a known query counts when accepted *and* classified right, an unknown one when
  rejected); :func:`oracle_threshold` is the best threshold on the queries themselves, the
  ceiling any threshold chosen beforehand is measured against;
* :func:`balanced_threshold` (the threshold at which the known-rejected rate and the
  unknown-accepted rate are equal, as near as the scores allow) and :func:`tpr_threshold`;
* :func:`choose_threshold`: leave-one-class-out on a support set: each class in turn plays the
  unknown and the method is fitted on the others (one support image of each other class with two
  or more held out to play a known query), and the threshold is read off the pooled known and
  unknown scores. With one image per class no image is left to hold out: the known queries are
  then seeded augmented views of the other classes' images (:func:`loco_scores`), each with its
  image's box mapped into it for the methods that read one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from focusshot.data.transforms import VIEW_MIN_VISIBLE
from focusshot.evaluation.prepare import PreparedImages, prepare_fit, view_regions
from focusshot.methods.base import Fitted, Method
from focusshot.methods.open_set import open_scores

__all__ = [
    "LOCO_VIEWS",
    "RULES",
    "NoKnownViews",
    "auroc",
    "balanced_threshold",
    "choose_threshold",
    "fpr_at_tpr",
    "loco_refusal",
    "loco_scores",
    "one_image_per_class",
    "open_accuracy",
    "oracle_threshold",
    "roc_curve",
    "threshold_by_rule",
    "tpr_threshold",
]

#: how ``--reject auto`` reads a threshold off the known and unknown scores
RULES = ("balanced", "tpr")

#: augmented views of each support image that play the known images of leave-one-class-out when
#: every class has one support image (:func:`loco_scores`)
LOCO_VIEWS = 4


class NoKnownViews(ValueError):
    """Leave-one-class-out with one image per class found no augmented view that shows its
    image's box, for a method that reads boxes and has no fallback for them (:func:`loco_scores`)."""


def _array(x: Any, name: str) -> np.ndarray:
    a = (
        x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    ).reshape(-1)
    if a.size == 0:
        raise ValueError(f"no {name} scores")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} scores must be finite")
    return a


def auroc(known: Any, unknown: Any) -> float:
    """P(a known query scores above an unknown one), ties counted one half (Mann-Whitney U / n1 n2)."""
    k, u = _array(known, "known"), _array(unknown, "unknown")
    both = np.concatenate([k, u])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    # average ranks over ties (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], both.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u_stat = ranks[: k.size].sum() - k.size * (k.size + 1) / 2.0
    return float(u_stat / (k.size * u.size))


def tpr_threshold(known: Any, tpr: float = 0.95) -> float:
    """The highest threshold that accepts at least ``tpr`` of ``known`` (accept: score >= threshold)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"the target true-positive rate must be in (0, 1], got {tpr}")
    k = np.sort(_array(known, "known"))
    rejected = int(math.floor((1.0 - tpr) * k.size + 1e-9))  # at most this many known below
    return float(k[rejected])


def fpr_at_tpr(known: Any, unknown: Any, tpr: float = 0.95) -> float:
    """The fraction of ``unknown`` accepted at :func:`tpr_threshold` of ``known`` (FPR@95%TPR)."""
    t = tpr_threshold(known, tpr)
    return float(np.mean(_array(unknown, "unknown") >= t))


def _candidates(k: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Thresholds between every two neighbouring distinct scores, and one past each end."""
    vals = np.unique(np.concatenate([k, u]))
    gap = max(float(vals[-1] - vals[0]), 1.0) * 1e-6
    return np.concatenate([[vals[0] - gap], (vals[1:] + vals[:-1]) / 2.0, [vals[-1] + gap]])


def roc_curve(known: Any, unknown: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` at every candidate threshold, from (1, 1) down to (0, 0)."""
    k, u = _array(known, "known"), _array(unknown, "unknown")
    t = _candidates(k, u)
    ks, us = np.sort(k), np.sort(u)
    tpr = 1.0 - np.searchsorted(ks, t, side="left") / ks.size
    fpr = 1.0 - np.searchsorted(us, t, side="left") / us.size
    return fpr, tpr


def balanced_threshold(known: Any, unknown: Any) -> float:
    """The threshold where the rate of known scores rejected and of unknown scores accepted are
    equal, as near as the scores allow: the smallest larger of the two rates (then the smallest
    difference, then the smallest sum)."""
    k, u = _array(known, "known"), _array(unknown, "unknown")
    t = _candidates(k, u)
    fnr = np.searchsorted(np.sort(k), t, side="left") / k.size
    fpr = 1.0 - np.searchsorted(np.sort(u), t, side="left") / u.size
    best = np.lexsort((fnr + fpr, np.abs(fnr - fpr), np.maximum(fnr, fpr)))[0]
    return float(t[best])


def threshold_by_rule(known: Any, unknown: Any, rule: str = "balanced", tpr: float = 0.95) -> float:
    """:func:`balanced_threshold` or :func:`tpr_threshold` (``rule`` in :data:`RULES`)."""
    if rule == "balanced":
        return balanced_threshold(known, unknown)
    if rule == "tpr":
        return tpr_threshold(known, tpr)
    raise ValueError(f"unknown threshold rule {rule!r}; valid rules: {', '.join(RULES)}")


def open_accuracy(scores: Any, correct: Any, known: Any, threshold: float) -> float:
    """Open-set accuracy at ``threshold``: over every query, a known one (``known`` true) counts
    when accepted and classified right (``correct``), an unknown one when rejected."""
    s = _array(scores, "query")
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    kn = np.asarray(known, dtype=bool).reshape(-1)
    accepted = s >= threshold
    return float(np.mean(np.where(kn, accepted & ok, ~accepted)))


def oracle_threshold(scores: Any, correct: Any, known: Any) -> tuple[float, float]:
    """The threshold with the best :func:`open_accuracy` on these very queries (the lowest of the
    best), and that accuracy: the ceiling of any threshold chosen without them."""
    s = _array(scores, "query")
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    kn = np.asarray(known, dtype=bool).reshape(-1)
    t = _candidates(s, s)
    order = np.argsort(s, kind="mergesort")
    sv = s[order]
    gain_known = np.cumsum((kn & ok)[order][::-1])[::-1]  # known right at or above each position
    unknown_below = np.cumsum(~kn[order])  # unknown at or below each position
    pos = np.searchsorted(sv, t, side="left")  # queries below t: positions < pos
    above = np.r_[gain_known, 0][pos]
    below = np.r_[0, unknown_below][pos]
    acc = (above + below) / s.size
    i = int(np.argmax(acc))
    return float(t[i]), float(acc[i])


def _fit_method(m: Method[Any], support: Tensor, labels: Tensor, ctx: Any) -> Any:
    from focusshot.evaluation.protocols import head_threads  # the protocols use this module

    with head_threads():
        return m.fit(support, labels, ctx)


def loco_refusal(method: Method[Any], labels: Sequence[int]) -> str:
    """Why ``choose_threshold`` cannot run for ``method`` on a support set with ``labels``; ``""``
    when it can."""
    if method.trains:
        return (
            f"method {method.name!r} trains per fit, and leave-one-class-out would train it once per "
            "class: set the threshold by hand (--reject VALUE), or measure one with focusshot evaluate "
            "--open-ways"
        )
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    counts = counts[counts > 0]
    if counts.size < 3:
        return (
            f"leave-one-class-out needs at least 3 classes (one plays the unknown, two stay known); "
            f"the support set has {counts.size}"
        )
    return ""


def one_image_per_class(labels: Sequence[int]) -> bool:
    """Whether every class of a support set with ``labels`` has a single image (then
    :func:`loco_scores` takes its known images from augmented views)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return bool(counts.max() < 2)


def loco_scores(
    method: Method[Any],
    support: PreparedImages,
    names: Sequence[str],
    *,
    index: Tensor | None = None,
    classes: Sequence[int] | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    view_seed: int | None = None,
    views: int = LOCO_VIEWS,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Leave-one-class-out scores ``names`` of a support set: ``(known, unknown)``, each score
    name -> the pooled scores ``(n,)``.

    For each support class ``h`` in turn, ``method`` is fitted (the frozen-feature path,
    :func:`~focusshot.evaluation.prepare.prepare_fit`) on the other classes' images, except one
    image of each class that has two or more (the ``h``-th of that class, cyclically), which plays
    a known query; ``h``'s images play the unknown ones.

    **One image per class.** When no class has a second image (:func:`one_image_per_class`), no
    image is left to hold out. Then each fold is fitted on the other classes' images, all of them
    as they are (the evaluation view, as ``fit`` sees them), and the known queries are ``views``
    seeded augmented views (:class:`~focusshot.data.transforms.AugmentTransform`: a random crop of
    half the image's area or more, flipped half the time; :meth:`Prefix.with_view
    <focusshot.backbones.prefix.Prefix.with_view>` ``(1..views, view_seed)``) of each of those
    images: views the fold's classifier was not fitted on in that form, of its own classes. ``h``'s
    image, as it is, plays the unknown one, as with more shots. The known scores are optimistic
    (a view of a fitted image resembles it more than a new image of its class would), which puts
    the balanced threshold high: it rejects more known images than it would with a second image
    of each class. A support set where some class has two images or more keeps the held-out-image
    rule (its classes with one image give no known queries).

    **Regions of the views.** A method that reads each image's box (``method.needs_regions`` and
    ``method.uses_boxes()``) gets, with every view, its image's box in that view
    (:func:`~focusshot.evaluation.prepare.view_regions`: clipped to the view's crop, scaled to
    it, mirrored when the view is flipped); the unknown images get their own regions, as with
    more shots. A view that shows less than
    :data:`~focusshot.data.transforms.VIEW_MIN_VISIBLE` of its image's box follows the method's
    ``missing_box``: ``"whole"`` scores it with no region (the whole view, as an image without a
    box is scored); otherwise it is left out of the known queries, since a new image of a known
    class would come with its object in the box. An image without a box (``missing_box="whole"``
    only) gives views without a region.

    Args:
        method: a method that does not train (:func:`loco_refusal`).
        support: the prepared images the support set comes from.
        names: the open-set scores (:data:`focusshot.methods.open_set.SCORES`).
        index: the support images in ``support`` (``None``: all).
        classes: the support's classes as ``support.data`` numbers them (``None``: every class).
        temperature: the classifier's temperature (``msp`` reads it).
        seed: the fits' seed.
        view_seed: one image per class: the augmented views' seed (default ``seed``; the views
            are cached per image, view and seed).
        views: one image per class: the augmented views of each image (:data:`LOCO_VIEWS`).

    Raises:
        ValueError: :func:`loco_refusal`'s reason, or a score the method cannot give.
        NoKnownViews: one image per class, and no view shows its image's box (a method without
            a fallback for a missing box).
    """
    idx = torch.arange(len(support.data.paths)) if index is None else index.long()
    labels = support.labels[idx]
    order = list(classes) if classes is not None else sorted({int(y) for y in labels.tolist()})
    why = loco_refusal(method, labels.tolist())
    if why:
        raise ValueError(why)
    if one_image_per_class(labels.tolist()):
        return _view_scores(
            method,
            support,
            names,
            idx,
            order,
            temperature=temperature,
            seed=seed,
            view_seed=seed if view_seed is None else view_seed,
            views=views,
        )
    known: dict[str, list[Tensor]] = {n: [] for n in names}
    unknown: dict[str, list[Tensor]] = {n: [] for n in names}
    for fold, h in enumerate(order):
        rest = [c for c in order if c != h]
        fit_rows: list[int] = []
        held: list[int] = []
        for c in rest:
            rows = idx[labels == c].tolist()
            if len(rows) >= 2:
                out = rows[fold % len(rows)]
                held.append(out)
                fit_rows.extend(r for r in rows if r != out)
            else:
                fit_rows.extend(rows)
        feats, ys, ctx = prepare_fit(method, support, torch.tensor(fit_rows), classes=rest, seed=seed)
        fitted = _fit_method(method, feats, ys, ctx)
        for rows, into in ((held, known), (idx[labels == h].tolist(), unknown)):
            if rows:
                q, regions = support.rows(method, torch.tensor(rows))
                _score_into(into, fitted, q, names, regions, temperature)
    return _joined(known), _joined(unknown)


def _score_into(
    into: dict[str, list[Tensor]],
    fitted: Fitted,
    query: Tensor,
    names: Sequence[str],
    regions: Tensor | None,
    temperature: float,
) -> None:
    """Append ``fitted``'s open-set scores ``names`` of ``query`` (its prefix, ``(M, ...)``) to ``into``."""
    with torch.inference_mode():
        got = open_scores(fitted, query, names, regions, temperature=temperature)
    for n in names:
        into[n].append(got[n])


def _joined(scores: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    """Each score's folds concatenated: name -> ``(M,)``."""
    return {n: torch.cat(v) for n, v in scores.items()}


def _view_scores(
    method: Method[Any],
    support: PreparedImages,
    names: Sequence[str],
    idx: Tensor,
    order: list[int],
    *,
    temperature: float,
    seed: int,
    view_seed: int,
    views: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """:func:`loco_scores` with one image per class: the known queries are augmented views.

    Returns:
        ``(known, unknown)``: score name -> the pooled known scores (every kept view of every
        image each fold was fitted on, ``(K,)``) and unknown scores (each held-out image,
        ``(U,)``), folds in ``order``.

    Raises:
        NoKnownViews: no view of a box-reading method's images shows its box.
    """
    if views < 1:
        raise ValueError(f"leave-one-class-out with one image per class needs views >= 1, got {views}")
    backbone = support.backbone
    prefix = support.prefixes[method.name]  # resolved once, where the request was
    rows = idx.tolist()
    paths = [support.data.paths[i] for i in rows]
    seen = torch.stack(  # (V, N, *prefix): view v of support image rows[j]
        [
            support.cache.get_resolved(
                backbone,
                paths,
                prefix.with_view(v, view_seed),
                batch_size=support.batch_size,
                progress=False,
            )
            for v in range(1, views + 1)
        ]
    )
    labels = support.labels[idx]
    regions: Tensor | None = None  # (V, N, 4): each view's box, in that view
    shown: Tensor | None = None  # (V, N): the views that show their image's box
    if method.needs_regions and method.uses_boxes() and support.regions is not None:
        regions, shown = view_regions(backbone, support.data, rows, views, view_seed)
        if method.missing_box() == "whole":
            shown = None  # a view without its box is scored whole (its row is NaN)
    known: dict[str, list[Tensor]] = {n: [] for n in names}
    unknown: dict[str, list[Tensor]] = {n: [] for n in names}
    held = 0
    for h in order:
        rest = [c for c in order if c != h]
        fit_pos = [j for c in rest for j in (labels == c).nonzero().flatten().tolist()]
        fit_rows = torch.tensor([rows[j] for j in fit_pos])
        feats, ys, ctx = prepare_fit(method, support, fit_rows, classes=rest, seed=seed)
        fitted = _fit_method(method, feats, ys, ctx)
        held_in = seen[:, fit_pos].flatten(0, 1)  # every view of every image the fold was fitted on
        held_regions = None if regions is None else regions[:, fit_pos].flatten(0, 1)
        if shown is not None and held_regions is not None:
            keep = shown[:, fit_pos].flatten()
            held_in, held_regions = held_in[keep], held_regions[keep]
        if held_in.shape[0]:
            _score_into(known, fitted, held_in, names, held_regions, temperature)
            held += int(held_in.shape[0])
        out, out_regions = support.rows(method, idx[labels == h])
        _score_into(unknown, fitted, out, names, out_regions, temperature)
    if not held:
        raise NoKnownViews(
            f"method {method.name!r} reads each image's box, and none of the {views} augmented views "
            f"of the {len(rows)} support images (one per class) shows at least "
            f"{VIEW_MIN_VISIBLE:.0%} of its image's box, so leave-one-class-out has no known images: "
            "give a class a second image, set the threshold by hand (--reject VALUE), or set the "
            "method's option missing_box='whole' to score such views whole"
        )
    return _joined(known), _joined(unknown)


def choose_threshold(
    method: Method[Any],
    support: PreparedImages,
    score: str,
    *,
    index: Tensor | None = None,
    classes: Sequence[int] | None = None,
    rule: str = "balanced",
    tpr: float = 0.95,
    temperature: float = 1.0,
    seed: int = 0,
    view_seed: int | None = None,
    views: int = LOCO_VIEWS,
) -> dict[str, Any]:
    """A rejection threshold for ``method``'s ``score``, from its support set alone: the
    :func:`threshold_by_rule` (``rule`` ``balanced`` or ``tpr``, with ``tpr``) of the pooled
    :func:`loco_scores` (whose arguments the others are).

    Returns:
        ``{"score", "threshold", "chosen_by", "rule", ...}`` with the pooled counts, the
        leave-one-class-out AUROC and the true- and false-positive rates at the threshold, as a
        classifier file stores it. With one image per class ``chosen_by`` says that augmented
        views played the known images, and ``views`` and ``view_seed`` say which.

    Raises:
        ValueError: :func:`loco_refusal`'s reason, or a score the method cannot give.
        NoKnownViews: one image per class, and no view shows its image's box.
    """
    threshold_by_rule([0.0], [0.0], rule, tpr)  # checks the rule and the rate before any fit
    known, unknown = loco_scores(
        method,
        support,
        [score],
        index=index,
        classes=classes,
        temperature=temperature,
        seed=seed,
        view_seed=view_seed,
        views=views,
    )
    k, u = known[score], unknown[score]
    t = threshold_by_rule(k, u, rule, tpr)
    labels = support.labels if index is None else support.labels[index]
    how: dict[str, Any] = {"chosen_by": "leave-one-class-out on the support set"}
    if one_image_per_class(labels.tolist()):
        how = {
            "chosen_by": "leave-one-class-out on the support set, augmented views as the known images",
            "views": views,
            "view_seed": seed if view_seed is None else view_seed,
        }
    return {
        "score": score,
        "threshold": t,
        **how,
        "rule": rule,
        **({"target_tpr": tpr} if rule == "tpr" else {}),
        "folds": len(classes) if classes is not None else int(torch.unique(labels).numel()),
        "known_scores": int(k.numel()),
        "unknown_scores": int(u.numel()),
        "auroc": auroc(k, u),
        "tpr": float((k >= t).double().mean()),
        "fpr": float((u >= t).double().mean()),
    }


def check_reject(
    method: Method[Any],
    reject: float | str | None,
    labels: Sequence[int],
    *,
    tpr: float | None = None,
    open_score: str | None = None,
) -> None:
    """What ``fit(..., reject=, reject_tpr=, open_score=)`` asks for, checked before the fit.

    Raises:
        ValueError: ``reject`` neither ``"auto"`` nor a number, ``reject_tpr`` or ``open_score``
            without ``reject``, ``reject_tpr`` with a number, a rate outside ``(0, 1]``, an unknown
            score (the list), or ``auto`` where leave-one-class-out cannot run (the reason).
    """
    from focusshot.methods.open_set import check_score

    if open_score is not None:
        check_score(open_score)
    if reject is None:
        if tpr is not None or open_score is not None:
            raise ValueError(
                "reject_tpr and open_score say how to reject: give reject too ('auto' or a number)"
            )
        return
    if isinstance(reject, bool) or not isinstance(reject, (int, float, str)):
        raise ValueError(f"reject must be 'auto' or a threshold (a number), got {reject!r}")
    if isinstance(reject, str):
        if reject != "auto":
            raise ValueError(f"reject must be 'auto' or a threshold (a number), got {reject!r}")
        if tpr is not None:
            tpr_threshold([0.0], tpr)  # checks the rate
        why = loco_refusal(method, labels)
        if why:
            raise ValueError(f"reject='auto': {why}")
    elif tpr is not None:
        raise ValueError("reject_tpr chooses a threshold with reject='auto'; a given threshold takes none")
    elif not math.isfinite(float(reject)):
        raise ValueError(f"the rejection threshold must be finite, got {reject!r}")


def fit_rejection(
    method: Method[Any],
    fitted: Any,
    support: PreparedImages,
    reject: float | str,
    *,
    tpr: float | None = None,
    open_score: str | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The rejection a classifier file stores (``info["reject"]``) for ``fit(..., reject=)``:
    :func:`choose_threshold` on the whole support set for ``"auto"`` (``tpr``: the ``tpr`` rule,
    else ``balanced``; ``classes``: the order of its folds, default every class in label order),
    or the number given. ``open_score`` defaults to the method's
    (:attr:`~focusshot.methods.base.Method.open_score`); :func:`check_reject` ran before the fit.

    Raises:
        ValueError: a score the fit cannot give (the reason).
        NoKnownViews: as :func:`choose_threshold`.
    """
    score = open_score or method.open_score
    why = fitted.open_scores().get(score, "")
    if why:
        raise ValueError(f"method {method.name!r} cannot reject by the open-set score {score!r}: {why}")
    if reject == "auto":
        rule = "balanced" if tpr is None else "tpr"
        return choose_threshold(
            method,
            support,
            score,
            rule=rule,
            tpr=0.95 if tpr is None else tpr,
            temperature=temperature,
            seed=seed,
            classes=classes,
        )
    return {"score": score, "threshold": float(reject), "chosen_by": "given"}
