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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.data.episodes import EpisodeSampler
from focusshot.data.fewshot import few_shot_indices, validation_shots
from focusshot.data.sources import LabelledImages
from focusshot.evaluation.cache import FeatureCache, Prefix
from focusshot.evaluation.metrics import accuracy, ece, nll
from focusshot.evaluation.results import ResultLog, paired, summarise, versions, write_tables
from focusshot.methods.feature_heads import FeatureHeadMethod, create_feature_method


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
    """What a protocol run produced."""

    directory: Path
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    paired: list[dict[str, Any]]
    attention: dict[str, Any] = field(default_factory=dict)


def attention_section(backbone: Backbone, data: LabelledImages, directory: Path) -> dict[str, Any]:
    """Where [CLS] looks on ``data`` (when it carries target masks and the backbone has a [CLS] row).

    Writes ``attention.json`` and ``attention_maps.png`` into ``directory`` and returns the
    figures, or ``{"available": False, "reason": ...}``.
    """
    import json

    from focusshot.report.attention_maps import attention_report, save_attention_figure, target_masks

    path = directory / "attention.json"
    if path.is_file():
        return json.loads(path.read_text())
    if not (backbone.capabilities.attention and backbone.capabilities.global_cls):
        out: dict[str, Any] = {"available": False, "reason": "the backbone has no global [CLS] attention row"}
    else:
        masks = target_masks(data)
        if masks is None:
            out = {"available": False, "reason": "the data carry no target masks or boxes"}
        else:
            out = {"available": True, "layer": "last", **attention_report(backbone, data, masks)}
            save_attention_figure(backbone, data, masks, directory / "attention_maps.png")
            out["figure"] = "attention_maps.png"
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


def _methods(names: Sequence[str]) -> list[FeatureHeadMethod]:
    if not names:
        raise ValueError("give at least one method")
    return [create_feature_method(n) for n in names]


def _text(backbone: Backbone, methods: list[FeatureHeadMethod], class_names: list[str]) -> Tensor | None:
    if not any(m.needs_text for m in methods):
        return None
    if not backbone.capabilities.text:
        bad = [m.name for m in methods if m.needs_text]
        raise ValueError(
            f"method(s) {bad} need class text embeddings, but backbone "
            f"{backbone.identity.name!r} has no text tower"
        )
    from focusshot.methods.text import class_text_embeddings

    return class_text_embeddings(backbone, class_names)


def _features(cache: FeatureCache, backbone: Backbone, data: LabelledImages, progress: bool) -> Tensor:
    return cache.get(backbone, data.paths, Prefix.pooled(), progress=progress)


def _base_info(backbone: Backbone, protocol: str, config: dict[str, Any], methods: Sequence[str]) -> dict:
    return {
        "protocol": protocol,
        "config": {**config, "methods": list(methods), "backbone_sha256": backbone.identity.weights_sha256},
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
) -> RunOutcome:
    """Evaluate ``methods`` on ``config.episodes`` episodes of ``data``; results go to ``output``.

    Args:
        backbone: a frozen backbone; its pooled features are cached.
        data: the labelled pool episodes are drawn from (usually the test split / novel classes).
        methods: names from :func:`focusshot.methods.feature_heads.list_feature_methods`.
        config: N, K, Q, E and the sampler seed.
        output: the run folder (``results.jsonl``, ``run.json``, ``summary.csv``, ``summary.md``).
        cache: the shared feature cache.
        progress: progress bars on stderr.
        stop_after: stop after this many new episodes (to test resumption); ``None`` runs all.
        attention: measure last-layer [CLS] attention against target masks when the data have
            them (:func:`attention_section`).
    """
    ms = _methods(methods)
    sampler = EpisodeSampler(
        data.labels,
        config.ways,
        config.shots,
        config.queries,
        config.episodes,
        config.seed,
        class_names=data.class_names,
    )
    info = _base_info(backbone, "episodic", {**asdict(config), "data": sampler.fingerprint()}, methods)
    info["data_classes"] = data.class_names
    log = ResultLog(output, info, ("method", "episode"))
    feats = _features(cache, backbone, data, progress)
    text = _text(backbone, ms, data.class_names)
    bar = _bar(progress, len(sampler), "episodes")
    new = 0
    for ep in sampler:
        todo = [m for m in ms if not log.has(method=m.name, episode=ep.index)]
        if todo and stop_after is not None and new >= stop_after:
            break
        sup, qry = torch.tensor(ep.support), torch.tensor(ep.query)
        ys, yq = torch.tensor(ep.support_labels), torch.tensor(ep.query_labels)
        for m in todo:
            with head_threads():
                fitted = m.fit(
                    feats[sup], ys, ep.ways, text_embeddings=None if text is None else text[list(ep.classes)]
                )
                logits = fitted.logits(feats[qry])
            log.append(
                {
                    "method": m.name,
                    "episode": ep.index,
                    "seed": ep.seed,
                    "run_seed": config.seed,
                    "ways": ep.ways,
                    "shots": ep.shots,
                    "queries": ep.queries,
                    "accuracy": accuracy(logits, yq),
                    "nll": nll(logits, yq, from_logits=True),
                }
            )
        new += bool(todo)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    summary = summarise(log.rows, ("method",), ("accuracy", "nll"), ci=True)
    pairs = paired(log.rows, list(methods), "episode")
    write_tables(log.directory, summary)
    if pairs:
        write_tables(log.directory, pairs, "paired")
    att = attention_section(backbone, data, log.directory) if attention else {}
    return RunOutcome(log.directory, log.rows, summary, pairs, att)


def run_split(
    backbone: Backbone,
    splits: dict[str, LabelledImages],
    methods: Sequence[str],
    config: SplitConfig,
    output: str | Path,
    cache: FeatureCache,
    progress: bool = False,
) -> RunOutcome:
    """Fixed K-shot splits: train K per class, validate on ``min(K, 4)`` per class, test once.

    ``splits`` needs ``"train"`` and ``"test"``; ``"val"`` is used for hyper-parameter search
    (logistic C, Tip-Adapter alpha/beta) when present, and each line records what was selected.
    """
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"the split protocol needs a {need!r} split; found {sorted(splits)}")
    ms = _methods(methods)
    train, test, val = splits["train"], splits["test"], splits.get("val")
    info = _base_info(
        backbone,
        "split",
        {**asdict(config), "shots": list(config.shots), "seeds": list(config.seeds)},
        methods,
    )
    info["data_classes"] = train.class_names
    log = ResultLog(output, info, ("method", "shots", "split_seed"))
    f_train = _features(cache, backbone, train, progress)
    f_test = _features(cache, backbone, test, progress)
    f_val = _features(cache, backbone, val, progress) if val is not None else None
    text = _text(backbone, ms, train.class_names)
    y_train, y_test = torch.tensor(train.labels), torch.tensor(test.labels)
    classes = len(train.class_names)
    for k in config.shots:
        for s in config.seeds:
            idx = torch.tensor(
                few_shot_indices(train.labels, k, s, num_classes=classes, class_names=train.class_names)
            )
            vf = vl = None
            if val is not None and f_val is not None:
                vidx = torch.tensor(
                    few_shot_indices(
                        val.labels,
                        validation_shots(k),
                        s,
                        num_classes=classes,
                        class_names=val.class_names,
                        allow_fewer=True,
                    )
                )
                vf, vl = f_val[vidx], torch.tensor(val.labels)[vidx]
            for m in ms:
                if log.has(method=m.name, shots=k, split_seed=s):
                    continue
                with head_threads():
                    fitted = m.fit(
                        f_train[idx],
                        y_train[idx],
                        classes,
                        text_embeddings=text,
                        val_features=vf,
                        val_labels=vl,
                    )
                    logits = fitted.logits(f_test)
                probs = logits.double().softmax(-1)
                log.append(
                    {
                        "method": m.name,
                        "shots": k,
                        "split_seed": s,
                        "seed": s,
                        "accuracy": accuracy(logits, y_test),
                        "ece": ece(probs, y_test),
                        "nll": nll(probs, y_test),
                        "selected": _selected(fitted),
                        "selected_on": "val" if vf is not None else "defaults",
                        "test_images": len(test.paths),
                    }
                )
    summary = summarise(log.rows, ("method", "shots"), ("accuracy", "ece", "nll"), ci=False)
    write_tables(log.directory, summary)
    return RunOutcome(log.directory, log.rows, summary, [])


def _selected(fitted) -> dict[str, Any]:
    """Hyper-parameters a fitted head recorded (C, alpha, beta...): its JSON-able scalars."""
    cfg = fitted.config() if hasattr(fitted, "config") else {}
    flat = {**cfg, **(cfg.get("info") or {})}
    keep = (int, float, str, bool)
    return {k: v for k, v in flat.items() if isinstance(v, keep) and k not in ("type", "head")}


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep")
