"""The two evaluation protocols.

* **Episodic** N-way K-shot Q-query (Vinyals et al., 2016; Snell et al., 2017): E episodes drawn
  from their own seeds; every method sees the same episodes; mean accuracy with a 95% confidence
  interval ``1.96 * std / sqrt(E)``, and paired differences between methods.
* **Split** (CoOp, Zhou et al., IJCV 2022): K images per class from train for K in {1, 2, 4, 8, 16}
  and seeds 1-3, ``min(K, 4)`` per class from validation for hyper-parameters, the whole test set
  once; accuracy, ECE (15 bins) and NLL, mean +- std over seeds.

Features come from the shared cache, computed once per image and reused across episodes, methods
and runs. Results are appended to ``results.jsonl`` as they finish; a restarted run resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.data.episodes import Episode, EpisodeSampler
from focusshot.data.fewshot import few_shot_indices, validation_shots
from focusshot.data.sources import LabelledImages
from focusshot.distributed import Context, current
from focusshot.evaluation.attention_metrics import attention_report, target_masks
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.calibration import COVERAGES, pooled_calibration
from focusshot.evaluation.method_attention import QueryAttention
from focusshot.evaluation.metrics import (
    accuracy,
    brier,
    ece,
    fit_temperature,
    nll,
    reliability_bins,
    selective_accuracy,
)
from focusshot.evaluation.prepare import PreparedImages, prepare_fit, prepare_images
from focusshot.evaluation.results import ResultLog, paired, paired_split, summarise, write_tables
from focusshot.methods.base import FitContext, Fitted, Method
from focusshot.methods.request import Resolved, resolve, settings_for
from focusshot.versions import versions


@dataclass
class EpisodicConfig:
    """Settings of an episodic evaluation."""

    ways: int = field(default=5, metadata={"help": "N, classes per episode"})
    shots: int = field(default=1, metadata={"help": "K, support images per class"})
    queries: int = field(default=15, metadata={"help": "Q, query images per class"})
    episodes: int = field(default=600, metadata={"help": "E, number of episodes"})
    seed: int = field(default=0, metadata={"help": "seed of the episode sampler"})


@dataclass
class SplitConfig:
    """Settings of a fixed-split (CoOp-style) evaluation."""

    shots: tuple[int, ...] = field(default=(1, 2, 4, 8, 16), metadata={"help": "K values"})
    seeds: tuple[int, ...] = field(default=(1, 2, 3), metadata={"help": "few-shot sampling seeds"})


@dataclass
class RunOutcome:
    """What a protocol run produced. On ranks other than 0 of a multi-process run only
    ``directory`` is filled in; rank 0 writes the files and holds the results.

    Attributes:
        directory: the run's output folder: ``run.json`` (its configuration), ``results.jsonl``
            (the rows), ``summary.csv``/``.md``, ``paired.csv``/``.md`` (with two or more
            methods) and ``timing.json``.
        rows: every result row of the run, read back from ``results.jsonl`` (so a resumed run's
            earlier rows are included): one dict per finished unit (episodic: a method on an
            episode; split: a method at a shot count, seed and test set), with its metrics.
        summary: one row per method (split runs: per method and shot count, and test set when
            there are shifted ones; open-set runs: also per score) with each metric's mean and its
            95% interval half-width (``<metric>_ci95``, episodic) or standard deviation over the
            seeds (``<metric>_std``, split); what ``summary.csv`` holds.
        paired: every method against the first one listed, paired over the shared episodes (split
            runs: over test images x seeds; open-set runs: per score and metric):
            the ``mean_difference`` of accuracy (open-set: of each metric) with its 95% interval
            half-width ``ci95`` and whether it is ``significant``; what ``paired.csv`` holds,
            empty with one method.
        attention: episodic runs: the frozen backbone's last-layer [CLS] attention on the target
            masks (``attention.json``; ``{"available": False, "reason": ...}`` when the backbone or
            the data do not allow it), and each training method's own under ``"methods"`` where
            measured; empty for split and open-set runs and when attention is not measured.
    """

    directory: Path
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    paired: list[dict[str, Any]]
    attention: dict[str, Any] = field(default_factory=dict)
    #: episodic runs, for the end-of-run figures: the first episode this run worked on
    #: (``episode``), its query indices into the pool (``query``) and classes in label order
    #: (``classes``), every method fitted on it (``methods``: name -> :class:`ExampleFit`) and the
    #: training methods among them with an adapted model (``fitted``: name -> fit); empty when
    #: resumed past every episode
    examples: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExampleFit:
    """A method fitted on an episodic run's first episode, kept for the end-of-run figures
    (:mod:`focusshot.report.explain_maps`).

    Attributes:
        fitted: the fit.
        prefix: the resolved prefix it reads (its request's, :class:`~focusshot.methods.request.Resolved`).
        regions: the episode's query regions ``(M, 4)`` as the protocol hands them to
            ``fitted.logits`` (``None`` for a method that reads no regions).
        reads_boxes: the method takes its regions from the data's boxes.
    """

    fitted: Fitted
    prefix: Prefix
    regions: Tensor | None
    reads_boxes: bool


def attention_section(backbone: Backbone, data: LabelledImages, directory: Path) -> dict[str, Any]:
    """Where the frozen backbone's [CLS] looks on ``data`` (when it carries target masks and the
    backbone has a [CLS] row): writes ``attention.json`` into ``directory`` and returns the figures,
    or ``{"available": False, "reason": ...}``. The attention figure is drawn by
    :mod:`focusshot.report` (``focusshot evaluate`` and :func:`focusshot.evaluate` do it).
    """
    import json

    ctx = current()
    path = directory / "attention.json"
    if ctx.broadcast(path.is_file()):  # every rank takes rank 0's branch (the measurement is shared out)
        return json.loads(path.read_text()) if ctx.main else {}
    if not (backbone.capabilities.attention and backbone.capabilities.global_cls):
        out: dict[str, Any] = {"available": False, "reason": "the backbone has no global [CLS] attention row"}
    else:
        masks = target_masks(data)
        if masks is None:
            out = {"available": False, "reason": "the data carry no target masks or boxes"}
        else:
            out = {"available": True, "layer": "last", **attention_report(backbone, data, masks)}
    if ctx.main:
        path.write_text(json.dumps(out, indent=2) + "\n")
    return out


Progress = Callable[[str, int, int], None] | None


@contextmanager
def head_threads(threads: int = 1) -> Iterator[None]:
    """Fit heads with ``threads`` CPU threads (restored afterwards).

    Head problems are tiny (tens of samples); on a busy CPU, thread synchronisation costs more than
    the work: a 10-way 5-shot logistic probe on 1280-d features took 0.7 s with one thread and 9.4 s
    with two while another process was running.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def method_threads(method: Method) -> AbstractContextManager[None]:
    """The CPU threads ``method`` fits and scores with: one for a head (:func:`head_threads`: tiny
    problems), torch's setting for a method that trains."""
    return nullcontext() if method.trains else head_threads()


MethodOptions = dict[str, Any] | None


def _requests(names: Sequence[str], options: MethodOptions, backbone: Backbone) -> list[Resolved]:
    """Each method of a run resolved once on ``backbone`` (:func:`~focusshot.methods.request.resolve`:
    options checked, the backbone checked, the prefix derived), before any image is read."""
    if not names:
        raise ValueError("give at least one method")
    return [resolve(n, opts, backbone) for n, opts in settings_for(names, options).items()]


def _missing(m: Method, *parts: Tensor | None) -> dict[str, int]:
    """``{"regions_missing": k}``: images of a fit that had no box (methods reading boxes only)."""
    if not (m.needs_regions and m.uses_boxes()):
        return {}
    return {"regions_missing": sum(int(torch.isnan(p).any(dim=1).sum()) for p in parts if p is not None)}


def _watched(m: Method) -> bool:
    """Whether a method's own [CLS] attention is measured on the queries: it adapted a model, or it
    changes the attention with the data's boxes (FALIP's bias, drawn prompts; the automatic region
    records attention itself and is left out)."""
    return m.trains or (m.needs_regions and m.uses_boxes())


def _fit(m: Method, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
    """Fit one method with :func:`method_threads`."""
    with method_threads(m):
        return m.fit(support, labels, ctx)


def _logits(m: Method, fitted: Fitted, query: Tensor, regions: Tensor | None = None) -> Tensor:
    kw = {"regions": regions} if m.needs_regions else {}
    with method_threads(m):
        return fitted.logits(query, **kw)


def _method_config(methods: list[Method]) -> dict[str, Any]:
    return {m.name: m.options_dict() for m in methods}


def _record_precision(info: dict[str, Any], cache: FeatureCache) -> None:
    """Features computed under autocast are other numbers: part of the config (resumes must match)."""
    if cache.autocast != "none":
        info["config"]["autocast"] = cache.autocast


def _base_info(backbone: Backbone, protocol: str, config: dict[str, Any], methods: list[Method]) -> dict:
    return {
        "protocol": protocol,
        "config": {
            **config,
            "methods": [m.name for m in methods],
            "method_options": _method_config(methods),
            "backbone_sha256": backbone.identity.weights_sha256,
        },
        "backbone": backbone.identity.to_dict(),
        "versions": versions(),
    }


def run_episodic(
    backbone: Backbone,
    data: LabelledImages,
    methods: Sequence[str],
    config: EpisodicConfig,
    output: str | Path,
    cache: FeatureCache,
    progress: bool = False,
    stop_after: int | None = None,
    attention: bool = True,
    method_options: MethodOptions = None,
) -> RunOutcome:
    """Evaluate ``methods`` on ``config.episodes`` episodes of ``data``; results go to ``output``.

    Args:
        backbone: a frozen backbone; the prefix each method declares is cached.
        data: the labelled pool episodes are drawn from (usually the test split / novel classes).
        methods: registered method names (:func:`focusshot.methods.base.list_methods`).
        config: N, K, Q, E and the sampler seed.
        output: the run folder (``results.jsonl``, ``run.json``, ``summary.csv``, ``summary.md``).
        cache: the shared feature cache.
        progress: progress bars on stderr.
        stop_after: stop after this many new episodes (to test resumption); ``None`` runs all.
        attention: measure last-layer [CLS] attention against target masks when the data have
            them (:func:`attention_section`), and each training method's own attention on the
            query images after it adapted (``cls_target_mass`` in its result lines).
        method_options: per-method options (``{"lora": {"rank": 8}}``), recorded in ``run.json``.

    Every fit is prepared by :func:`~focusshot.evaluation.prepare.prepare_fit` from the pool made
    ready once (:func:`~focusshot.evaluation.prepare.prepare_images`). Methods that read regions
    (FALIP, drawn prompts, FORT with box prompts; ``method.needs_regions``) get the data's boxes
    mapped into the evaluation crop (:func:`~focusshot.evaluation.prepare.region_tensor`), the
    support's in ``FitContext.regions`` and the queries' in ``logits(query, regions=...)``; an image
    without a box stops the run, naming it, unless the method's ``missing_box`` is ``"whole"``, and
    each line of such a method records ``regions_missing``, the episode's images that had none.

    Episodic runs have no validation split: methods that select hyper-parameters on validation
    use their defaults, and methods that train run their fixed number of steps (the last step is
    kept); every line says so in ``selected_on``.
    """
    requests = _requests(methods, method_options, backbone)
    ms = [r.method for r in requests]
    sampler = EpisodeSampler(
        data.labels,
        config.ways,
        config.shots,
        config.queries,
        config.episodes,
        config.seed,
        class_names=data.class_names,
    )
    info = _base_info(backbone, "episodic", {**asdict(config), "data": sampler.fingerprint()}, ms)
    info["data_classes"] = data.class_names
    _record_precision(info, cache)
    ctx = current()
    log = ResultLog(output, info, ("method", "episode"), shard=ctx.rank if ctx.active else None)
    pool = prepare_images(backbone, cache, data, requests, progress=progress)
    watched = any(_watched(m) for m in ms)
    looker = QueryAttention.create(backbone, data) if attention and watched else None
    bar = _bar(progress and ctx.main, len(sampler), "episodes")
    new = 0
    examples: dict[str, Any] = {}
    for ep in sampler:
        if not ctx.owns(ep.index):
            continue
        todo = [m for m in ms if not log.has(method=m.name, episode=ep.index)]
        if todo and stop_after is not None and new >= stop_after:
            break
        sup, qry = torch.tensor(ep.support), torch.tensor(ep.query)
        yq = torch.tensor(ep.query_labels)
        for m in todo:
            t0 = time.perf_counter()
            support, ys, fit_ctx = prepare_fit(
                m, pool, sup, classes=ep.classes, seed=ep.seed, view_seed=config.seed, device=str(ctx.device)
            )
            fitted = _fit(m, support, ys, fit_ctx)
            q_feats, q_regions = pool.rows(m, qry)
            _keep_example(examples, pool.prefixes[m.name], m, fitted, ep, q_regions)
            logits = _logits(m, fitted, q_feats, q_regions)
            row = {
                "method": m.name,
                "episode": ep.index,
                "seed": ep.seed,
                "run_seed": config.seed,
                "ways": ep.ways,
                "shots": ep.shots,
                "queries": ep.queries,
                "accuracy": accuracy(logits, yq),
                "nll": nll(logits, yq, from_logits=True),
                **_query_record(logits, yq),
                "seconds": round(time.perf_counter() - t0, 4),
            }
            row.update(_fit_facts(m, fitted, episodic=True))
            row.update(_missing(m, fit_ctx.regions, q_regions))
            if looker is not None and _watched(m):
                row.update(looker.measure(fitted, q_feats, ep.query, q_regions))
                row.update(looker.measure_prompts(fitted, ep.support))
            log.append(row)
        new += bool(todo)
        _tick(bar, log, ctx, len(ms))
    done = _gather(log, ctx, [(m.name, i) for i in range(len(sampler)) for m in ms], bar, len(ms))
    att = attention_section(backbone, data, log.directory) if attention else {}  # every rank takes part
    if not done:
        return RunOutcome(log.directory, [], [], [])
    summary = summarise(log.rows, ("method",), _METRICS, ci=True)
    for row in summary:
        row.update(pooled_calibration([r for r in log.rows if r["method"] == row["method"]]))
    pairs = paired(log.rows, list(methods), "episode")
    write_tables(log.directory, summary)
    _write_timing(log.directory, log.rows, "episode")
    if pairs:
        write_tables(log.directory, pairs, "paired")
    if att.get("available") and _method_attention(summary):
        att = {**att, "methods": _method_attention(summary)}
        (log.directory / "attention.json").write_text(json.dumps(att, indent=2) + "\n")
    return RunOutcome(log.directory, log.rows, summary, pairs, att, examples)


def _keep_example(
    examples: dict[str, Any],
    prefix: Prefix,
    m: Method,
    fitted: Fitted,
    ep: Episode,
    regions: Tensor | None,
) -> None:
    """Keep ``fitted`` (of the resolved ``prefix``) in ``examples`` (:attr:`RunOutcome.examples`)
    when ``ep`` is the first episode this run works on."""
    if examples.setdefault("episode", ep.index) != ep.index:
        return
    examples.setdefault("query", list(ep.query))
    examples.setdefault("classes", list(ep.classes))
    reads_boxes = m.needs_regions and m.uses_boxes()
    examples.setdefault("methods", {})[m.name] = ExampleFit(fitted, prefix, regions, reads_boxes)
    if m.trains and fitted.attention_model() is not None:
        examples.setdefault("fitted", {})[m.name] = fitted


#: what the summaries average (missing values, e.g. attention of frozen methods, are skipped);
#: seconds are not among them (a resumed run must end with the same summary): see ``timing.json``
_METRICS = ("accuracy", "nll", "brier", "cls_target_mass", "prompt_target_mass", "prompt_chance")
#: the split protocol's metrics (``_ts``: after temperature scaling fitted on the validation images)
_SPLIT_METRICS = (
    "accuracy",
    "ece",
    "nll",
    "brier",
    "sel50",
    "sel80",
    "sel90",
    "ece_ts",
    "nll_ts",
    "brier_ts",
)


def _query_record(logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Per-query confidence (max probability, 4 decimals) and correctness, and the Brier score."""
    probs = logits.double().softmax(-1)
    conf, pred = probs.max(-1)
    return {
        "brier": brier(probs, labels),
        "confidence": [round(float(c), 4) for c in conf],
        "correct": "".join("1" if c else "0" for c in (pred == labels).tolist()),
    }


def _split_record(logits: Tensor, labels: Tensor, temperature: float | None) -> dict[str, Any]:
    """Accuracy, ECE, NLL, Brier, selective accuracies, and the same after temperature scaling."""
    probs = logits.double().softmax(-1)
    rec = _query_record(logits, labels)
    conf = torch.tensor(rec.pop("confidence"))
    ok = torch.tensor([c == "1" for c in rec["correct"]])
    rb = reliability_bins(probs, labels)
    out = {
        "accuracy": accuracy(logits, labels),
        "ece": rb.ece,
        "nll": nll(probs, labels),
        "bins": rb.sums(),  # per-bin sums, so bins of several runs pool exactly (reliability.md)
        **rec,
        **{f"sel{round(c * 100)}": selective_accuracy(conf, ok, c) for c in COVERAGES},
    }
    if temperature is not None:
        scaled = (logits.double() / temperature).softmax(-1)
        out.update(
            temperature=temperature,
            ece_ts=ece(scaled, labels),
            nll_ts=nll(scaled, labels),
            brier_ts=brier(scaled, labels),
        )
    return out


def _write_timing(directory: Path, rows: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    """Mean seconds per fit + prediction of every method (``timing.json``); timings are not reproducible."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r.get("seconds") is not None:
            per.setdefault(r["method"], []).append(float(r["seconds"]))
    out = {m: {f"seconds_per_{unit}": sum(v) / len(v), unit + "s": len(v)} for m, v in per.items()}
    (directory / "timing.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _fit_facts(m: Method, fitted: Fitted, episodic: bool) -> dict[str, Any]:
    """What a result line records about the fit: selections, training steps, divergence."""
    info = fitted.info()
    out: dict[str, Any] = {}
    if m.trains:
        train = info.get("train", {})
        out["train_steps"] = train.get("steps")
        out["diverged"] = bool(info.get("diverged", False))
        if out["diverged"]:
            out["diverged_at"] = train.get("diverged_at")
        out["selected_on"] = info.get("selected_on")
        out["trained_params"] = info.get("trained_params")
    elif episodic:
        out["selected_on"] = "defaults (no validation split in episodic runs)"
    return out


def _method_attention(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method [CLS] target mass after adaptation, from the summary rows."""
    return {
        r["method"]: {"cls_target_mass": r["cls_target_mass"], "ci95": r.get("cls_target_mass_ci95")}
        for r in summary
        if "cls_target_mass" in r
    }


def run_split(
    backbone: Backbone,
    splits: dict[str, LabelledImages],
    methods: Sequence[str],
    config: SplitConfig,
    output: str | Path,
    cache: FeatureCache,
    progress: bool = False,
    method_options: MethodOptions = None,
    shifts: dict[str, LabelledImages] | None = None,
) -> RunOutcome:
    """Fixed K-shot splits: train K per class, validate on ``min(K, 4)`` per class, test once.

    ``splits`` needs ``"train"`` and ``"test"``; ``"val"`` is used for hyper-parameter search
    (logistic C, Tip-Adapter alpha/beta) and to pick the best training step of methods that train,
    when present, and each line records what was selected.

    ``shifts`` (name -> images) are distribution-shift test sets (CoOp's ImageNet -> -V2, -Sketch,
    -A, -R): every fit is also scored on each, matching classes by name (a shift may hold a subset
    of the training classes). Each result line names its test set in ``test`` (``"test"``: the
    own test split).
    """
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"the split protocol needs a {need!r} split; found {sorted(splits)}")
    requests = _requests(methods, method_options, backbone)
    ms = [r.method for r in requests]
    train, test, val = splits["train"], splits["test"], splits.get("val")
    info = _base_info(
        backbone,
        "split",
        {**asdict(config), "shots": list(config.shots), "seeds": list(config.seeds)},
        ms,
    )
    info["data_classes"] = train.class_names
    _record_precision(info, cache)
    shifts = dict(shifts or {})
    if shifts:
        info["config"]["shift_tests"] = sorted(shifts)
    ctx = current()
    keys = ("method", "shots", "split_seed", "test")
    log = ResultLog(output, info, keys, {"test": "test"}, shard=ctx.rank if ctx.active else None)
    p_train = prepare_images(backbone, cache, train, requests, progress=progress)
    p_test = prepare_images(backbone, cache, test, requests, text=False, progress=progress)
    p_val = (
        None if val is None else prepare_images(backbone, cache, val, requests, text=False, progress=progress)
    )
    tests: dict[str, tuple[PreparedImages, Tensor]] = {"test": (p_test, p_test.labels)}
    for name, data in shifts.items():
        tests[name] = (
            prepare_images(backbone, cache, data, requests, text=False, progress=progress),
            shift_labels(data, train.class_names, name),
        )
    pair = -1  # (K, seed) pairs; run (pair, method i) goes to rank (pair + i) mod W, so every
    # method visits every rank (a plain index would give one rank all of a method when W divides M)
    for k in config.shots:
        for s in config.seeds:
            pair += 1
            idx, vidx = split_indices(train, val, k, s)
            for i, m in enumerate(ms):
                if not ctx.owns(pair + i):
                    continue
                todo = [t for t in tests if not log.has(method=m.name, shots=k, split_seed=s, test=t)]
                if not todo:
                    continue
                t0 = time.perf_counter()
                support, labels, fit_ctx = prepare_fit(
                    m, p_train, idx, val=p_val, val_index=vidx, seed=s, device=str(ctx.device)
                )
                fitted = _fit(m, support, labels, fit_ctx)
                fit_seconds = time.perf_counter() - t0
                vals, temperature = fit_ctx.val, None
                if vals is not None:  # temperature scaling on the validation images (Guo et al., 2017)
                    v_logits = _logits(m, fitted, vals[0], fit_ctx.val_regions)
                    temperature = fit_temperature(v_logits, vals[1])
                for t in todo:
                    prepared, labels = tests[t]
                    t1 = time.perf_counter()
                    feats, t_regions = prepared.rows(m)
                    logits = _logits(m, fitted, feats, t_regions)
                    row = {
                        "method": m.name,
                        "shots": k,
                        "split_seed": s,
                        "seed": s,
                        "test": t,
                        **_split_record(logits, labels, temperature),
                        "selected": _selected(fitted),
                        "selected_on": "val" if vals is not None else "defaults",
                        "test_images": len(prepared.data.paths),
                        "seconds": round(fit_seconds + time.perf_counter() - t1, 4),
                    }
                    row.update(_fit_facts(m, fitted, episodic=False))
                    row.update(_missing(m, fit_ctx.regions, t_regions))
                    log.append(row)
    order = [(m.name, k, s, t) for k in config.shots for s in config.seeds for m in ms for t in tests]
    if not _gather(log, ctx, order):
        return RunOutcome(log.directory, [], [], [])
    group = ("method", "shots", "test") if shifts else ("method", "shots")
    summary = summarise(log.rows, group, _SPLIT_METRICS, ci=False)
    write_tables(log.directory, summary)
    _write_timing(log.directory, [r for r in log.rows if r.get("test", "test") == "test"], "run")
    pairs = paired_split(log.rows, [m.name for m in ms])
    if pairs:
        write_tables(log.directory, pairs, "paired")
    return RunOutcome(log.directory, log.rows, summary, pairs)


def split_indices(
    train: LabelledImages, val: LabelledImages | None, shots: int, seed: int
) -> tuple[Tensor, Tensor | None]:
    """The split protocol's K-shot training images of seed ``seed`` (indices into ``train``) and its
    validation images (``min(K, 4)`` per class, into ``val``; ``None`` without one)."""
    classes = len(train.class_names)
    idx = torch.tensor(
        few_shot_indices(train.labels, shots, seed, num_classes=classes, class_names=train.class_names)
    )
    if val is None:
        return idx, None
    vidx = few_shot_indices(
        val.labels,
        validation_shots(shots),
        seed,
        num_classes=classes,
        class_names=val.class_names,
        allow_fewer=True,
    )
    return idx, torch.tensor(vidx)


def shift_labels(data: LabelledImages, class_names: list[str], name: str) -> Tensor:
    """Labels ``(N,)`` of a shift test set in the training classes' indices, matched by name."""
    index = {c: i for i, c in enumerate(class_names)}
    missing = [c for c in data.class_names if c not in index]
    if missing:
        raise ValueError(
            f"test set {name!r} has classes the training data lack: {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    remap = torch.tensor([index[c] for c in data.class_names])
    return remap[torch.tensor(data.labels, dtype=torch.long)]


def _selected(fitted: Fitted) -> dict[str, Any]:
    """Hyper-parameters a fitted method recorded (C, alpha, beta...): its JSON-able scalars."""
    keep = (int, float, str, bool)
    return {k: v for k, v in fitted.info().items() if isinstance(v, keep)}


def _tick(bar, log: ResultLog, ctx: Context, per_unit: int) -> None:
    """Advance rank 0's bar: by one in a one-process run, to every rank's finished units otherwise."""
    if bar is None:
        return
    if ctx.active:
        bar.n = min(bar.total, log.count_all() // per_unit)
        bar.refresh()
    else:
        bar.update(1)


def _gather(log: ResultLog, ctx: Context, order: list[tuple], bar=None, per_unit: int = 1) -> bool:
    """End of the units: wait for every rank (rank 0's bar counting theirs), merge the shards into
    ``results.jsonl`` in ``order`` on rank 0; whether this process goes on to write the summaries."""
    ctx.wait_all(None if bar is None else lambda: _tick(bar, log, ctx, per_unit))
    if bar is not None:
        bar.close()
    if not ctx.main:
        return False
    log.merge(order)
    return True


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep")
