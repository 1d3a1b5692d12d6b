"""The open-set protocols: how well each method tells images of its classes from images of others.

* **Episodic** (``evaluate --open-ways U``): each N-way K-shot episode
  (:class:`~focusshot.data.open_episodes.OpenEpisodeSampler`) adds U classes the support never
  shows and their images to the queries, as many unknown queries as known ones by default. Every
  method sees the same episodes, whose known part is the closed-set episode of the same seed.
* **Split** (``evaluate --protocol split --open-classes A,B``): the named classes are held out of
  training (and validation); their test images are the unknown queries.

Per method, fit and open-set score (:mod:`focusshot.methods.open_set`), a result line records
the closed-set accuracy on the known queries; AUROC and FPR at 95% TPR of known against unknown;
open-set accuracy at the oracle threshold (the best on those very queries) and at the threshold
``fit --reject auto`` would choose from the support alone
(:func:`~focusshot.evaluation.open_set.loco_scores`, balanced rule; at one shot its known images
are augmented views of the support, seeded as a training method's views are, with each image's box
mapped into its views for the methods that read boxes), where it can run.
Summaries are per (method, score) with 95% intervals; paired differences are against the first
method, score by score, as every other metric.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.data.labelled import LabelledImages
from focusshot.data.open_episodes import OpenEpisodeSampler
from focusshot.distributed import current
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.metrics import accuracy, paired_difference
from focusshot.evaluation.open_set import (
    NoKnownViews,
    auroc,
    balanced_threshold,
    fpr_at_tpr,
    loco_refusal,
    loco_scores,
    open_accuracy,
    oracle_threshold,
)
from focusshot.evaluation.prepare import PreparedImages, prepare_fit, prepare_images
from focusshot.evaluation.protocols import (
    EpisodicConfig,
    MethodOptions,
    RunOutcome,
    SplitConfig,
    _bar,
    _base_info,
    _fit,
    _gather,
    _logits,
    _query_record,
    _record_precision,
    _requests,
    _tick,
    _write_timing,
    split_indices,
)
from focusshot.evaluation.results import ResultLog, summarise, write_tables
from focusshot.methods.base import Fitted, Method
from focusshot.methods.open_set import SCORES, check_scores, open_scores

__all__ = ["OPEN_METRICS", "OpenEpisodicConfig", "run_open_episodic", "run_open_split", "split_open_classes"]

#: what each (method, score) summary line averages over episodes (or split runs)
OPEN_METRICS = ("accuracy", "auroc", "fpr95", "open_accuracy_oracle", "open_accuracy_auto")


@dataclass
class OpenEpisodicConfig(EpisodicConfig):
    """Settings of an open-set episodic evaluation."""

    open_ways: int = field(default=5, metadata={"help": "U, unknown classes per episode"})
    open_queries: int | None = field(
        default=None, metadata={"help": "unknown queries per episode (default: N * Q, as many as known)"}
    )
    scores: tuple[str, ...] = field(
        default=tuple(SCORES), metadata={"help": "open-set scores to measure (each one a method gives)"}
    )


def _short(x: Tensor) -> list[float]:
    """Scores as 6-significant-digit floats (result lines stay small; ranks barely change)."""
    return [float(f"{v:.6g}") for v in x.tolist()]


def score_record(
    fitted: Fitted,
    feats: Tensor,
    regions: Tensor | None,
    logits: Tensor,
    labels: Tensor,
    known: int,
    names: Sequence[str],
    auto: tuple[dict[str, Tensor], dict[str, Tensor]] | str,
) -> dict[str, Any]:
    """The open-set part of one result line.

    Args:
        fitted: the fit.
        feats, regions, logits: the queries' prefix, regions and logits, known ones first.
        labels: the known queries' labels ``(known,)``.
        known: how many of the queries are known (the rest are unknown).
        names: the scores to measure (those the fit refuses are recorded with the reason).
        auto: :func:`~focusshot.evaluation.open_set.loco_scores` of the support, or why there are none.
    """
    support = fitted.open_scores()
    given = [n for n in names if not support.get(n, "")]
    with torch.inference_mode():
        scores = open_scores(fitted, feats, given, regions, logits=logits)
    correct = (logits[:known].argmax(-1) == labels).tolist()
    ok = correct + [False] * (len(feats) - known)
    is_known = [True] * known + [False] * (len(feats) - known)
    out: dict[str, Any] = {}
    for n in given:
        s = scores[n]
        k, u = s[:known], s[known:]
        _, oracle = oracle_threshold(s, ok, is_known)
        rec: dict[str, Any] = {
            "auroc": auroc(k, u),
            "fpr95": fpr_at_tpr(k, u, 0.95),
            "open_accuracy_oracle": oracle,
            "scores": _short(s),
        }
        if not isinstance(auto, str):
            t = balanced_threshold(auto[0][n], auto[1][n])
            rec["threshold_auto"] = t
            rec["open_accuracy_auto"] = open_accuracy(s, ok, is_known, t)
        out[n] = rec
    record: dict[str, Any] = {"open": out, "known_queries": known, "unknown_queries": len(feats) - known}
    refused = {n: support[n] for n in names if support.get(n, "")}
    if refused:
        record["open_refused"] = refused
    if isinstance(auto, str):
        record["auto_refused"] = auto
    return record


def _auto(
    m: Method[Any],
    pool: PreparedImages,
    index: Tensor,
    classes: Sequence[int],
    names: list[str],
    seed: int,
    view_seed: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]] | str:
    """:func:`loco_scores` of a fit's support, or why ``--reject auto`` cannot run there
    (``view_seed``: the augmented views' seed at one image per class, as the fit's views)."""
    why = loco_refusal(m, pool.labels[index].tolist())
    if why:
        return why
    try:
        return loco_scores(m, pool, names, index=index, classes=classes, seed=seed, view_seed=view_seed)
    except NoKnownViews as exc:  # no view of this support shows its box: this fit has no auto
        return str(exc)


def _given(fitted: Fitted, names: Sequence[str]) -> list[str]:
    support = fitted.open_scores()
    return [n for n in names if not support.get(n, "")]


def run_open_episodic(
    backbone: Backbone,
    data: LabelledImages,
    methods: Sequence[str],
    config: OpenEpisodicConfig,
    output: str | Path,
    cache: FeatureCache,
    progress: bool = False,
    method_options: MethodOptions = None,
) -> RunOutcome:
    """Open-set episodes (module docstring) of ``data``; results go to ``output``.

    Arguments as :func:`~focusshot.evaluation.protocols.run_episodic`. Writes ``results.jsonl``
    (one line per method and episode: the closed-set metrics of the known queries, and per score
    ``open[score]``), ``summary.md`` / ``.csv`` (one line per method and score) and ``paired.md``
    / ``.csv`` (every method against the first, score by score).

    Raises:
        ValueError: too few classes for N + U ways (the counts), or an unknown score (the list).
    """
    names = check_scores(config.scores)
    requests = _requests(methods, method_options, backbone)
    ms = [r.method for r in requests]
    sampler = OpenEpisodeSampler(
        data.labels,
        config.ways,
        config.shots,
        config.queries,
        config.episodes,
        config.seed,
        config.open_ways,
        config.open_queries,
        class_names=data.class_names,
    )
    cfg = {**asdict(config), "scores": list(names), "data": sampler.fingerprint()}
    info = _base_info(backbone, "open-episodic", cfg, ms)
    info["data_classes"] = data.class_names
    _record_precision(info, cache)
    ctx = current()
    log = ResultLog(output, info, ("method", "episode"), shard=ctx.rank if ctx.active else None)
    pool = prepare_images(backbone, cache, data, requests, progress=progress)
    bar = _bar(progress and ctx.main, len(sampler), "episodes")
    for ep in sampler:
        if not ctx.owns(ep.index):
            continue
        todo = [m for m in ms if not log.has(method=m.name, episode=ep.index)]
        known_ep = ep.known
        sup = torch.tensor(known_ep.support)
        qry = torch.tensor(known_ep.query + ep.unknown)
        yq = torch.tensor(known_ep.query_labels)
        for m in todo:
            t0 = time.perf_counter()
            support, ys, fit_ctx = prepare_fit(
                m,
                pool,
                sup,
                classes=known_ep.classes,
                seed=ep.seed,
                view_seed=config.seed,
                device=str(ctx.device),
            )
            fitted = _fit(m, support, ys, fit_ctx)
            feats, regions = pool.rows(m, qry)
            logits = _logits(m, fitted, feats, regions)
            n_known = len(known_ep.query)
            auto = _auto(m, pool, sup, known_ep.classes, _given(fitted, names), ep.seed, config.seed)
            row = {
                "method": m.name,
                "episode": ep.index,
                "seed": ep.seed,
                "run_seed": config.seed,
                "ways": known_ep.ways,
                "shots": known_ep.shots,
                "queries": known_ep.queries,
                "open_ways": len(ep.unknown_classes),
                "accuracy": accuracy(logits[:n_known], yq),
                **_query_record(logits[:n_known], yq),
                **score_record(fitted, feats, regions, logits, yq, n_known, names, auto),
                "seconds": round(time.perf_counter() - t0, 4),
            }
            log.append(row)
        _tick(bar, log, ctx, len(ms))
    if not _gather(log, ctx, [(m.name, i) for i in range(len(sampler)) for m in ms], bar, len(ms)):
        return RunOutcome(log.directory, [], [], [])
    return _finish(log, ms, "episode")


def split_open_classes(
    splits: dict[str, LabelledImages], open_classes: Sequence[str]
) -> tuple[dict[str, LabelledImages], LabelledImages]:
    """``splits`` without the classes ``open_classes`` (train, val and test keep the others,
    renumbered in their order), and the test images of those classes (the unknown queries).

    Raises:
        ValueError: a class the data lack (the valid names), or fewer than 2 known classes left.
    """
    test = splits["test"]
    missing = [c for c in open_classes if c not in test.class_names]
    if missing:
        raise ValueError(
            f"--open-classes {missing} are not classes of the data; classes: {', '.join(test.class_names)}"
        )
    keep = [c for c in test.class_names if c not in set(open_classes)]
    if len(keep) < 2:
        raise ValueError(
            f"--open-classes leaves {len(keep)} known class(es) of {len(test.class_names)}; "
            "at least 2 must stay"
        )
    out = {name: _classes(part, keep) for name, part in splits.items()}
    return out, _classes(test, list(open_classes))


def _classes(data: LabelledImages, names: list[str]) -> LabelledImages:
    """The images of classes ``names`` (in data order), relabelled ``0..len(names)-1`` in that order."""
    position = {data.class_names.index(n): j for j, n in enumerate(names)}
    keep = data.subset(i for i, y in enumerate(data.labels) if y in position)
    return LabelledImages(keep.paths, [position[y] for y in keep.labels], names, keep.boxes, data.split)


def run_open_split(
    backbone: Backbone,
    splits: dict[str, LabelledImages],
    methods: Sequence[str],
    config: SplitConfig,
    open_classes: Sequence[str],
    output: str | Path,
    cache: FeatureCache,
    progress: bool = False,
    method_options: MethodOptions = None,
    scores: Sequence[str] = tuple(SCORES),
) -> RunOutcome:
    """The split protocol with ``open_classes`` held out of training: each K and seed fits on
    the other classes' train images (validation likewise) and is scored on the whole test split,
    the held-out classes' test images as unknown queries.

    Raises:
        ValueError: as :func:`split_open_classes`, or an unknown score (the list).
    """
    names = check_scores(scores)
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"the split protocol needs a {need!r} split; found {sorted(splits)}")
    known_splits, unknown = split_open_classes(splits, open_classes)
    requests = _requests(methods, method_options, backbone)
    ms = [r.method for r in requests]
    train, test, val = known_splits["train"], known_splits["test"], known_splits.get("val")
    cfg = {
        **asdict(config),
        "shots": list(config.shots),
        "seeds": list(config.seeds),
        "open_classes": list(open_classes),
        "scores": list(names),
    }
    info = _base_info(backbone, "open-split", cfg, ms)
    info["data_classes"] = train.class_names
    _record_precision(info, cache)
    ctx = current()
    log = ResultLog(output, info, ("method", "shots", "split_seed"), shard=ctx.rank if ctx.active else None)
    p_train = prepare_images(backbone, cache, train, requests, progress=progress)
    boxes = None
    if test.boxes is not None or unknown.boxes is not None:
        boxes = (test.boxes or [None] * len(test.paths)) + (unknown.boxes or [None] * len(unknown.paths))
    both = LabelledImages(
        test.paths + unknown.paths, test.labels + [0] * len(unknown.paths), test.class_names, boxes
    )
    p_test = prepare_images(backbone, cache, both, requests, text=False, progress=progress)
    p_val = (
        None if val is None else prepare_images(backbone, cache, val, requests, text=False, progress=progress)
    )
    classes = len(train.class_names)
    n_known = len(test.paths)
    y_known = torch.tensor(test.labels)
    pair = -1  # (K, seed) pairs, shared out over ranks as in run_split
    for k in config.shots:
        for s in config.seeds:
            pair += 1
            idx, vidx = split_indices(train, val, k, s)
            for i, m in enumerate(ms):
                if not ctx.owns(pair + i) or log.has(method=m.name, shots=k, split_seed=s):
                    continue
                t0 = time.perf_counter()
                support, labels, fit_ctx = prepare_fit(
                    m, p_train, idx, val=p_val, val_index=vidx, seed=s, device=str(ctx.device)
                )
                fitted = _fit(m, support, labels, fit_ctx)
                feats, regions = p_test.rows(m)
                logits = _logits(m, fitted, feats, regions)
                auto = _auto(m, p_train, idx, list(range(classes)), _given(fitted, names), s)
                row = {
                    "method": m.name,
                    "shots": k,
                    "split_seed": s,
                    "seed": s,
                    "accuracy": accuracy(logits[:n_known], y_known),
                    **_query_record(logits[:n_known], y_known),
                    **score_record(fitted, feats, regions, logits, y_known, n_known, names, auto),
                    "seconds": round(time.perf_counter() - t0, 4),
                }
                log.append(row)
    order = [(m.name, k, s) for k in config.shots for s in config.seeds for m in ms]
    if not _gather(log, ctx, order):
        return RunOutcome(log.directory, [], [], [])
    return _finish(log, ms, "split_seed", group=("shots",))


def _long(rows: list[dict[str, Any]], group: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (result line, score): the line's group fields, closed accuracy and the score's
    metrics."""
    out = []
    for r in rows:
        for score, rec in r.get("open", {}).items():
            item = {
                "method": r["method"],
                "score": score,
                **{g: r[g] for g in group},
                "accuracy": r["accuracy"],
            }
            item.update({key: rec[key] for key in OPEN_METRICS if key in rec})
            out.append(item)
    return out


def open_paired(
    rows: list[dict[str, Any]], methods: list[str], unit: str, group: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Every method against the first, per score (against the first method's same score, or its
    default where it lacks it) and metric, paired over shared ``unit`` values (episodes, or split
    seeds)."""
    if len(methods) < 2:
        return []
    from focusshot.methods.base import method_class

    base = methods[0]
    long = _long(rows, (unit, *group))
    by: dict[tuple, dict[Any, dict[str, Any]]] = {}
    for r in long:
        by.setdefault((r["method"], r["score"], *(r[g] for g in group)), {})[r[unit]] = r
    out = []
    keys = sorted(
        {(r["score"], *(r[g] for g in group)) for r in long if r["method"] != base},
        key=lambda k: (list(SCORES).index(k[0]), *k[1:]),
    )
    for m in methods[1:]:
        for key in keys:
            score, rest = key[0], key[1:]
            mine = by.get((m, score, *rest))
            if not mine:
                continue
            base_score = score if (base, score, *rest) in by else method_class(base).open_score
            theirs = by.get((base, base_score, *rest), {})
            for metric in ("auroc", "fpr95", "open_accuracy_oracle", "open_accuracy_auto"):
                shared = sorted(
                    u for u in set(mine) & set(theirs) if metric in mine[u] and metric in theirs[u]
                )
                if len(shared) < 2:
                    continue
                res = paired_difference(
                    [mine[u][metric] for u in shared], [theirs[u][metric] for u in shared]
                )
                out.append(
                    {
                        "method": m,
                        "score": score,
                        **dict(zip(group, rest, strict=True)),
                        "baseline": base,
                        "baseline_score": base_score,
                        "metric": metric,
                        "mean_difference": res.mean,
                        "ci95": res.half_width,
                        "significant": res.significant,
                        unit + "s": res.episodes,
                    }
                )
    return out


def _finish(log: ResultLog, ms: list[Method[Any]], unit: str, group: tuple[str, ...] = ()) -> RunOutcome:
    """Summary (per method and score), paired differences (against the first method) and timing."""
    rows = log.rows
    order = {m.name: i for i, m in enumerate(ms)}
    long = _long(rows, group)
    # episodes: mean and 95% interval; split runs (a few seeds): mean and std, as the split protocol
    summary = summarise(long, ("method", "score", *group), OPEN_METRICS, ci=not group)
    rank = list(SCORES)  # the order of SCORES, however a resumed log's lines hold them
    summary.sort(
        key=lambda r: (order.get(r["method"], len(order)), *(r[g] for g in group), rank.index(r["score"]))
    )
    write_tables(log.directory, summary)
    _write_timing(log.directory, rows, unit)
    pairs = open_paired(rows, [m.name for m in ms], unit, group)
    from focusshot.evaluation.results import paired

    closed = [
        {
            "method": p["method"],
            "score": "-",
            "baseline": p["baseline"],
            "baseline_score": "-",
            "metric": "accuracy",
            "mean_difference": p["mean_difference"],
            "ci95": p["ci95"],
            "significant": p["significant"],
            unit + "s": p["episodes"],
        }
        for p in (paired(rows, [m.name for m in ms], unit) if not group else [])
    ]
    if pairs or closed:
        write_tables(log.directory, [*closed, *pairs], "paired")
    return RunOutcome(log.directory, rows, summary, [*closed, *pairs])


def run_open(
    backbone: Backbone,
    source: LabelledImages | dict[str, LabelledImages],
    methods: list[str],
    protocol: str,
    output: Path,
    cache: FeatureCache,
    *,
    episodic: EpisodicConfig,
    split: SplitConfig,
    pool: LabelledImages | None,
    open_ways: int = 0,
    open_queries: int | None = None,
    open_classes: Sequence[str] = (),
    scores: Sequence[str] | None = None,
    progress: bool = False,
    method_options: MethodOptions = None,
) -> RunOutcome:
    """:func:`focusshot.evaluate`'s open-set runs: ``open_ways`` under the episodic protocol
    (:func:`run_open_episodic` on ``pool``), ``open_classes`` under the split protocol
    (:func:`run_open_split` on ``source``).

    Raises:
        ValueError: ``open_ways`` with the split protocol or ``open_classes`` with the episodic
            one, or what the runs raise.
    """
    names = tuple(scores) if scores else tuple(SCORES)
    if protocol == "episodic":
        if open_classes:
            raise ValueError(
                "open_classes (--open-classes) holds classes out of the split protocol's training; "
                "episodic runs take open_ways (--open-ways U)"
            )
        if pool is None:
            raise ValueError("the episodic protocol needs the images to draw episodes from")
        cfg = OpenEpisodicConfig(
            **asdict(episodic), open_ways=open_ways, open_queries=open_queries, scores=names
        )
        return run_open_episodic(backbone, pool, methods, cfg, output, cache, progress, method_options)
    if protocol == "split":
        if open_ways or open_queries is not None:
            raise ValueError(
                "open_ways (--open-ways) draws unknown classes per episode; the split protocol takes "
                "open_classes (--open-classes A,B)"
            )
        if not isinstance(source, dict):
            raise ValueError("the split protocol needs data with train and test splits")
        return run_open_split(
            backbone, source, methods, split, open_classes, output, cache, progress, method_options, names
        )
    raise ValueError(f"unknown protocol {protocol!r}; valid: episodic, split")
