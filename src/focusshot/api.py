"""The Python API a practitioner uses: ``evaluate``, ``fit``, ``Classifier.predict``.

Example::

    import focusshot
    clf = focusshot.fit("my_support_images/", backbone="efficientnet-lite0", method="logistic")
    clf.save("shoes.safetensors")
    for p in focusshot.Classifier.load("shoes.safetensors").predict(["new.jpg"]):
        print(p.path, p.label, p.confidence)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.backbones.registry import create_backbone
from focusshot.classifier import Classifier, Prediction, SupportSet, keeps_support
from focusshot.data.sources import LabelledImages, open_source
from focusshot.evaluation.cache import COMPILE_CHOICES, FeatureCache
from focusshot.evaluation.prepare import drop_unreadable, prepare_fit, prepare_images
from focusshot.evaluation.protocols import EpisodicConfig, RunOutcome, SplitConfig, run_episodic, run_split
from focusshot.methods.request import AUTO, fit_options, resolve

__all__ = [
    "Classifier",
    "Prediction",
    "check_duplicates",
    "default_cache_dir",
    "evaluate",
    "export_adapter",
    "fit",
    "resolve_methods",
]


#: the protocols' defaults, which ``evaluate``'s keywords take (one source: the config dataclasses)
_EPISODIC, _SPLIT = EpisodicConfig(), SplitConfig()


def default_cache_dir() -> Path:
    """``$FOCUSSHOT_CACHE/features``, else ``~/.cache/focusshot/features``."""
    env = os.environ.get("FOCUSSHOT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "focusshot") / "features"


def _backbone(backbone: str | Backbone, pretrained: bool, seed: int) -> tuple[Backbone, dict[str, Any]]:
    if isinstance(backbone, Backbone):
        return backbone, {"source": backbone.identity.source, "pretrained": None, "seed": None}
    return create_backbone(backbone, pretrained=pretrained, seed=seed), {
        "source": backbone,
        "pretrained": pretrained,
        "seed": seed,
    }


def _pick_split(
    data: LabelledImages | dict[str, LabelledImages], split: str | None, default: str
) -> LabelledImages:
    if isinstance(data, LabelledImages):
        if split not in (None, data.split):
            raise ValueError(f"the data has no splits; cannot select split {split!r}")
        return data
    name = split or (default if default in data else next(iter(data)))
    if name not in data:
        raise ValueError(f"no split {name!r} in the data; found {sorted(data)}")
    return data[name]


def resolve_methods(methods: Sequence[str], backbone: Backbone) -> list[str]:
    """Expand method groups (:func:`~focusshot.methods.base.method_groups`: ``all``, the
    training-free methods ``backbone`` runs without boxes, and the groups methods declare, such as
    ``tuning`` and ``fort``) into method names, each once, in the order given.

    Args:
        methods: method names, aliases (``name@x``) and group names.
        backbone: the backbone the methods will run on (a group keeps the methods it supports).

    Returns:
        The method names, without duplicates.

    Raises:
        ValueError: a name that is neither a registered method nor a group (the error lists
            the valid names).
    """
    from focusshot.methods.base import method_class, method_groups, methods_in_group

    groups = method_groups()
    out: list[str] = []
    for name in methods:
        if name in groups:
            names = methods_in_group(name, backbone)
        else:
            method_class(name)  # fails early, listing the valid names
            names = [name]
        out.extend(n for n in names if n not in out)
    return out


def _one_writer(run: Callable[..., RunOutcome]) -> Callable[..., RunOutcome]:
    """``run`` holding its output folder's lock (:mod:`focusshot.locking`) from start to end; in a
    multi-process job rank 0 holds it for every rank, and no rank starts before it does."""

    @functools.wraps(run)
    def held(*args: Any, **kwargs: Any) -> RunOutcome:
        from focusshot.distributed import ensure
        from focusshot.locking import LOCK_NAME, hold

        bound = inspect.signature(run).bind(*args, **kwargs)
        bound.apply_defaults()
        ctx = ensure(bound.arguments["device"])
        output = Path(bound.arguments["output"])
        with contextlib.ExitStack() as stack:
            if ctx.main:
                stack.enter_context(hold(output / LOCK_NAME, f"run folder {output}"))
            ctx.barrier()
            return run(*args, **kwargs)

    return held


@_one_writer
def evaluate(
    backbone: str | Backbone,
    data: str | os.PathLike[str] | LabelledImages | dict[str, LabelledImages],
    methods: Sequence[str] = ("protonet",),
    protocol: str = "episodic",
    output: str | os.PathLike[str] = "runs/evaluate",
    *,
    ways: int = _EPISODIC.ways,
    shots: int | Sequence[int] = 1,
    queries: int = _EPISODIC.queries,
    episodes: int = _EPISODIC.episodes,
    seed: int = 0,
    split: str | None = None,
    seeds: Sequence[int] = _SPLIT.seeds,
    cache_dir: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    progress: bool = False,
    method_options: dict[str, dict[str, Any]] | None = None,
    figures: bool = True,
    test_data: Sequence[str | os.PathLike[str]] = (),
    strict: bool = False,
    report: bool = True,
    device: str = "cpu",
    compile: str = COMPILE_CHOICES[0],
    autocast: str = "none",
    open_ways: int = 0,
    open_queries: int | None = None,
    open_classes: Sequence[str] = (),
    open_scores: Sequence[str] | None = None,
) -> RunOutcome:
    """Evaluate ``methods`` with ``backbone`` on ``data`` under ``protocol`` (``episodic`` or ``split``).

    ``methods`` may contain ``"all"`` (every training-free method the backbone supports) and
    ``"tuning"`` (the fine-tuning baselines). ``method_options`` maps a method to its options
    (``{"lora": {"rank": 8}}``); they are recorded in ``run.json``.

    Episodic runs draw from ``split`` (default: ``test`` when the data has splits). The split
    protocol needs train and test (validation optional) and takes ``shots`` as a list; each of
    ``test_data`` (sources with the same class names, or a subset of them) is a distribution-shift
    test set every fit is also scored on (its ``test`` split when it has splits, else all of it).

    Identical image bytes under two labels, in two splits (or a split and a ``test_data`` set),
    or twice in one class are reported with the files named (a warning; an error with
    ``strict``) and counted in ``run.json`` (``data_checks``).

    The run ends with :func:`focusshot.report.finish.finish_run`: with ``figures`` the reliability
    diagram and tables, and the attention map figures when the data carry target masks; with
    ``report``, ``report.html`` (:func:`focusshot.report.html.write_report`).

    Started by ``torchrun`` (or with ``--workers``), every rank calls this: extraction and the
    episodes (split runs) are shared out, and rank 0 merges the results and writes the summaries,
    figures and report; the other ranks return an outcome with no rows
    (:mod:`focusshot.distributed`). The run holds ``output``'s lock throughout: a second run into
    the same folder raises :class:`~focusshot.locking.OutputBusy` naming this one
    (:mod:`focusshot.locking`). ``device``: ``cpu``, ``auto`` (each rank's local GPU where
    there is one) or a torch device. ``compile`` (``auto``, ``always``, ``never``) and
    ``autocast`` (``none``, ``bf16``, ``fp16``) set how features are extracted
    (:class:`~focusshot.evaluation.cache.FeatureCache`).

    Args:
        backbone: a registry name (``focusshot backbones`` lists them), ``hf:<repo id>``, a local
            checkpoint file, or a :class:`~focusshot.backbones.base.Backbone`.
        data: class folders (optionally under ``train/``, ``val/``, ``test/``), a manifest, a
            JSONL file, a CoOp split file, a ``world:`` spec, a
            :class:`~focusshot.data.labelled.LabelledImages`, or a dict of them by split name.
        methods: method names, aliases (``name@x``) and groups (``all``, ``tuning``, ``fort``);
            :func:`resolve_methods` expands them.
        protocol: ``episodic`` (N-way K-shot episodes from one split) or ``split`` (a fixed
            K-shot training set per seed, scored on the whole test split).
        output: the run folder; a rerun with the same configuration resumes it, one with another
            configuration is refused.
        ways: N, classes per episode (episodic).
        shots: K, labelled images per class; the split protocol takes a list (``[1, 2, 4]``).
        queries: Q, query images per class and episode (episodic).
        episodes: E, the number of episodes (episodic).
        seed: the episode sampler's seed; also seeds the backbone's random weights when
            ``pretrained`` is false.
        split: episodic: the split to draw episodes from (default ``test`` when the data has
            splits).
        seeds: split protocol: the few-shot sampling seeds, one training set each.
        cache_dir: the feature cache (default ``$FOCUSSHOT_CACHE/features``).
        pretrained: load the backbone's pretrained weights; false: random weights from ``seed``.
        progress: show progress bars.
        method_options: ``{method: {option: value}}``; ``focusshot methods`` lists the options.
        figures: write the reliability diagram and, with target masks, the attention figures.
        test_data: split protocol: distribution-shift test sets every fit is also scored on.
        strict: duplicate images are an error instead of a warning.
        report: write ``report.html`` in ``output``.
        device: ``cpu``, ``auto`` (each rank's local GPU where there is one) or a torch device.
        compile: ``auto``, ``always`` or ``never``: when to ``torch.compile`` the frozen forward
            for extraction.
        autocast: ``none`` (float32), ``bf16`` or ``fp16``: the precision features are
            extracted in (cached apart from float32 ones).
        open_ways: episodic: U > 0 runs the open-set protocol
            (:mod:`focusshot.evaluation.open_protocol`): U more classes per episode whose images
            join the queries as unknown ones.
        open_queries: with ``open_ways``: unknown queries per episode (default: as many as known).
        open_classes: split protocol: classes held out of training whose test images are the
            unknown queries (the open-set protocol).
        open_scores: the open-set scores to measure (default: every one each method gives).

    Returns:
        The run: its folder, result rows, summary, paired differences and attention metrics
        (on ranks other than 0 of a multi-process run, no rows).

    Raises:
        ValueError: an unknown method, protocol or split, data the protocol cannot use, or a
            run folder that holds a run of another configuration.
        focusshot.locking.OutputBusy: another process is writing to ``output``.
    """
    from focusshot.distributed import ensure

    ctx = ensure(device)
    model, _ = _backbone(backbone, pretrained, seed)
    if ctx.device.type != "cpu":
        model = model.to(ctx.device)
    methods = resolve_methods(methods, model)
    source = data if isinstance(data, (LabelledImages, dict)) else open_source(data)
    parts = dict(source) if isinstance(source, dict) else {"data": source}
    shifts: dict[str, LabelledImages] = {}
    if protocol == "split":
        for spec in test_data:
            opened = open_source(spec)
            if isinstance(opened, dict) and "test" not in opened:
                raise ValueError(f"test data {spec}: its splits {sorted(opened)} hold no 'test' split")
            shifts[str(spec)] = opened["test"] if isinstance(opened, dict) else opened
    checks = check_duplicates({**parts, **shifts}, strict)
    cache = FeatureCache(cache_dir or default_cache_dir(), compile=compile, autocast=autocast)
    pool: LabelledImages | None = None  # the episodes' images (for the attention figures)
    if open_ways or open_classes:
        from focusshot.evaluation.open_protocol import run_open

        if test_data:
            raise ValueError("test_data (distribution-shift test sets) is not part of the open-set protocol")
        if protocol == "episodic":
            if not isinstance(shots, int):
                raise ValueError("the episodic protocol takes one shots value")
            pool = _pick_split(source, split, "test")
        out = run_open(
            model,
            source,
            list(methods),
            protocol,
            Path(output),
            cache,
            episodic=EpisodicConfig(ways, shots if isinstance(shots, int) else 1, queries, episodes, seed),
            split=SplitConfig((shots,) if isinstance(shots, int) else tuple(shots), tuple(seeds)),
            pool=pool,
            open_ways=open_ways,
            open_queries=open_queries,
            open_classes=open_classes,
            scores=open_scores,
            progress=progress,
            method_options=method_options,
        )
    elif protocol == "episodic":
        if test_data:
            raise ValueError("test_data (distribution-shift test sets) needs the split protocol")
        if not isinstance(shots, int):
            raise ValueError("the episodic protocol takes one shots value")
        pool = _pick_split(source, split, "test")
        cfg = EpisodicConfig(ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed)
        out = run_episodic(
            model,
            pool,
            list(methods),
            cfg,
            Path(output),
            cache,
            progress=progress,
            method_options=method_options,
        )
    elif protocol == "split":
        if not isinstance(source, dict):
            hint = ""
            if isinstance(data, str) and data.startswith("world:"):
                sep = "&" if "?" in data else "?"
                hint = f"; a FocusWorld suite has them with split=1: --data '{data}{sep}split=1'"
            raise ValueError(
                f"the split protocol needs data with train and test splits (validation optional){hint}"
            )
        ks = (shots,) if isinstance(shots, int) else tuple(shots)
        out = run_split(
            model,
            source,
            list(methods),
            SplitConfig(ks, tuple(seeds)),
            Path(output),
            cache,
            progress,
            method_options=method_options,
            shifts=shifts,
        )
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid: episodic, split")
    if not ctx.main:
        return out
    from focusshot.report.finish import finish_run

    return finish_run(out, model, pool, list(methods), checks=checks, figures=figures, report=report)


def check_duplicates(parts: dict[str, LabelledImages], strict: bool = False) -> dict[str, Any]:
    """Leakage guard over ``parts`` (split name -> images): warn naming the files, or raise with
    ``strict``; returns the counts (and a few examples) for ``run.json``."""
    import logging

    from focusshot.data.integrity import find_duplicates

    report = find_duplicates(parts)
    if report.any:
        if strict:
            raise ValueError(f"duplicate images (strict): {report.message()}")
        logging.getLogger("focusshot").warning("duplicate images: %s", report.message())
    return report.to_dict()


def fit(
    support: str | os.PathLike[str] | LabelledImages,
    backbone: str | Backbone = "efficientnet-lite0",
    method: str = "protonet",
    *,
    options: dict[str, Any] | None = None,
    pretrained: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    calibrate: bool = False,
    skip_bad: bool = False,
    strict: bool = False,
    budget_s: float = 60.0,
    reject: float | str | None = None,
    reject_tpr: float | None = None,
    open_score: str | None = None,
) -> Classifier:
    """Fit ``method`` (with ``options``) on a support set (a folder with one sub-folder per class,
    or a manifest). ``calibrate`` fits a temperature on the validation images (temperature
    scaling, Guo et al., 2017: the arg-max never changes) that ``predict`` applies; it needs a
    validation split.

    When the data has train/validation splits, the method fits on train and selects its
    hyper-parameters (or its best training step) on validation. The support images' prefix goes
    through the shared feature cache (``cache_dir``; default ``$FOCUSSHOT_CACHE/features``).

    Images that cannot be read fail the fit with every one of them listed
    (:class:`~focusshot.data.images.ImageErrors`; what was readable is cached, so nothing is
    recomputed); with ``skip_bad`` they are left out and counted in ``info["fitted_on"]``.
    Identical image bytes under two labels or in train and validation are reported as
    :func:`evaluate` does (``strict``: an error), and counted in ``info["fitted_on"]``.

    ``method="auto"`` chooses the method by cross-validation on the support (train) images only
    (:func:`focusshot.auto.choose_method`) within ``budget_s`` seconds, every candidate and the
    final fit of the winner included; the report is ``info["auto"]``.

    Args:
        support: a folder with one sub-folder per class (optionally under ``train/`` and
            ``val/``), a manifest, or a :class:`~focusshot.data.labelled.LabelledImages`.
        backbone: a registry name, ``hf:<repo id>``, a local checkpoint file, or a
            :class:`~focusshot.backbones.base.Backbone`.
        method: a method name or alias (``focusshot methods`` lists them), or ``auto``.
        options: the method's options, ``{option: value}``.
        pretrained: load the backbone's pretrained weights; false: random weights from ``seed``.
        seed: the seed of everything random in the fit.
        batch_size: images per forward pass when extracting features.
        progress: show progress bars.
        cache_dir: the feature cache (default ``$FOCUSSHOT_CACHE/features``).
        calibrate: fit a temperature on the validation split that ``predict`` applies.
        skip_bad: leave out unreadable images (counted) instead of failing.
        strict: duplicate images are an error instead of a warning.
        budget_s: ``method="auto"``: the seconds the whole choice may take.
        reject: store a rejection threshold that ``predict`` labels ``unknown`` below:
            ``"auto"`` chooses it by leave-one-class-out on the support set
            (:func:`~focusshot.evaluation.open_set.choose_threshold`; methods that do not train,
            3 classes or more; with one image per class, seeded augmented views of the support
            images play the known ones, each with its image's box mapped into it for the methods
            that read boxes), a number sets it.
        reject_tpr: with ``reject="auto"``: the threshold that keeps this fraction of known
            images (e.g. 0.95) instead of the one that balances the two error rates.
        open_score: the open-set score to reject by (:data:`focusshot.methods.open_set.SCORES`;
            default: the method's own, :attr:`~focusshot.methods.base.Method.open_score`).

    Returns:
        The fitted classifier: :meth:`~focusshot.classifier.Classifier.predict` classifies new
        images, :meth:`~focusshot.classifier.Classifier.save` writes it to one file.

    Raises:
        ValueError: an unknown method or option, ``calibrate`` without a validation split,
            options given with ``method="auto"``, duplicate images with ``strict``, or a
            rejection that cannot be had (an unknown score, listing the valid ones; a score or
            ``reject="auto"`` the method cannot give, with the reason).
        focusshot.data.images.ImageErrors: unreadable images (without ``skip_bad``).
    """
    model, spec = _backbone(backbone, pretrained, seed)
    data = support if isinstance(support, LabelledImages) else open_source(support)
    val = data.get("val") if isinstance(data, dict) else None
    train = _pick_split(data, None, "train")
    if calibrate and val is None:
        raise ValueError(f"calibrate needs a validation split in {support} (a val/ or validation/ folder)")
    checks = check_duplicates({"train": train, **({"val": val} if val is not None else {})}, strict)
    cache = FeatureCache(cache_dir or default_cache_dir())
    auto: dict[str, Any] | None = None
    skipped: list[str] = []
    if method == AUTO:
        fit_options(AUTO, {AUTO: options} if options else None)  # auto takes no options
        from focusshot.auto import choose_method

        train, val, skipped = drop_unreadable(model, cache, train, val, Prefix.pooled(), skip_bad, batch_size)
        auto = choose_method(model, train, cache, budget_s=budget_s, seed=seed, progress=progress)
        method = auto["method"]
    request = resolve(method, options, model)  # the method and its prefix: derived once, checked first
    m = request.method
    if reject is not None or reject_tpr is not None or open_score is not None:
        from focusshot.evaluation.open_set import check_reject, fit_rejection

        check_reject(m, reject, train.labels, tpr=reject_tpr, open_score=open_score)
    train, val, dropped = drop_unreadable(model, cache, train, val, request.prefix, skip_bad, batch_size)
    skipped = sorted({*dropped, *skipped})
    prepared = prepare_images(model, cache, train, [request], progress=progress, batch_size=batch_size)
    prepared_val = None
    if val is not None:
        prepared_val = prepare_images(
            model, cache, val, [request], text=False, progress=progress, batch_size=batch_size
        )
    feats, labels, ctx = prepare_fit(m, prepared, val=prepared_val, seed=seed, progress=progress)
    fitted = m.fit(feats, labels, ctx)
    info: dict[str, Any] = {
        "fitted_on": {
            "support": str(support) if not isinstance(support, LabelledImages) else "memory",
            "images": len(train.paths),
            "validation_images": 0 if val is None else len(val.paths),
            "skipped_images": skipped,
            "data_checks": checks,
            "options": m.options_dict(),
            "seed": seed,
        }
    }
    if auto is not None:
        info["auto"] = auto
    if calibrate:
        from focusshot.evaluation.metrics import fit_temperature, nll

        assert ctx.val is not None  # checked above: calibrate needs a validation split
        v_feats, v_labels = ctx.val
        with torch.inference_mode():
            kw = {"regions": ctx.val_regions} if m.needs_regions else {}
            v_logits = fitted.logits(v_feats, **kw).double()
        t = fit_temperature(v_logits, v_labels)
        info["calibration"] = {
            "temperature": t,
            "fitted_on": "validation",
            "validation_nll_before": nll(v_logits, v_labels, from_logits=True),
            "validation_nll_after": nll(v_logits / t, v_labels, from_logits=True),
        }
    if reject is not None:
        temperature = float(info.get("calibration", {}).get("temperature", 1.0))
        info["reject"] = fit_rejection(
            m,
            fitted,
            prepared,
            reject,
            tpr=reject_tpr,
            open_score=open_score,
            temperature=temperature,
            seed=seed,
        )
    kept = None
    if keeps_support(m, request.prefix):  # what focusshot update refits from
        val_f, val_l = ctx.val if ctx.val is not None else (None, None)
        kept = SupportSet(feats, labels, val_f, val_l)
    return Classifier(model, fitted, train.class_names, request, spec, info, kept)


def export_adapter(classifier: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write the LoRA adapter of a classifier file as a Hugging Face ``peft`` adapter directory
    (:func:`~focusshot.adapters.export_peft.export_peft`, with the rank, alpha and dropout of the
    fit's own layers), for the ``transformers`` model the backbone's source names.

    Args:
        classifier: a file written by :meth:`Classifier.save` whose method adds LoRA layers
            (``lora``, ``lora+fort``).
        output: the adapter directory to write.

    Returns:
        ``output`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the classifier holds no LoRA layers (naming its method), or they have no
            ``transformers`` counterpart (:class:`~focusshot.adapters.base.AdapterError`).
    """
    from focusshot.adapters.export_peft import export_peft, hf_base_model_name
    from focusshot.adapters.lora import lora_layers

    clf = Classifier.load(classifier)
    model = clf.fitted.attention_model()
    if model is None or not lora_layers(model):
        raise ValueError(
            f"{classifier} (method {clf.method!r}) holds no LoRA layers to export; fit with a method "
            "that adds them (lora, lora+fort)"
        )
    return export_peft(
        model, output, base_model_name_or_path=hf_base_model_name(str(clf.backbone_spec["source"]))
    )
