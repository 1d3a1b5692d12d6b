"""The end of an evaluation run: its figures, tables and page, written from what the protocol returned.

:func:`finish_run` is what :func:`focusshot.evaluate` (and so ``focusshot evaluate``) does once a
protocol (:mod:`focusshot.evaluation.protocols`) has written ``results.jsonl``, the summaries and
``run.json``; it runs on rank 0 only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from focusshot.backbones.base import Backbone
from focusshot.data.sources import LabelledImages
from focusshot.evaluation.protocols import RunOutcome

__all__ = ["finish_run", "record_checks", "write_reliability"]


def finish_run(
    outcome: RunOutcome,
    backbone: Backbone,
    pool: LabelledImages | None,
    methods: Sequence[str],
    *,
    checks: dict[str, Any] | None = None,
    figures: bool = True,
    report: bool = True,
) -> RunOutcome:
    """Finish the run in ``outcome.directory``; returns ``outcome`` (its ``attention`` completed).

    In order:

    * with ``figures``, ``reliability.png`` and ``reliability.md`` / ``.csv``
      (:func:`write_reliability`);
    * the data checks (``checks``, :func:`focusshot.api.check_duplicates`) into ``run.json``
      (:func:`record_checks`);
    * with ``figures``, when the run measured attention against target masks (an episodic run on
      ``pool``, the images its episodes were drawn from): ``attention_maps.png`` (the frozen
      backbone; kept when already there) and, when the run kept methods fitted on its first
      episode, ``attention_methods.png`` (where each adapted model looks on those queries); their
      names go into ``outcome.attention`` (``figure``, ``methods_figure``);
    * with ``figures``, when the run kept the methods fitted on its first episode (an episodic run
      on ``pool``), whatever the backbone: ``explain_maps.png``, the relevance map of each
      method's predicted class on a few of those queries
      (:func:`focusshot.report.explain_maps.save_explain_figure`); its name goes into
      ``outcome.attention`` (``explain_figure``) and its record (the maps' kinds, the
      predictions, and why a method was left out) under ``explain``, also into
      ``attention.json`` when the run wrote one;
    * with ``report``, ``report.html`` (:func:`focusshot.report.html.write_report`).
    """
    if figures:
        write_reliability(outcome, list(methods))
    if checks is not None:
        record_checks(outcome, checks)
    if figures and pool is not None and outcome.attention.get("available"):
        _attention_figures(outcome, backbone, pool)
    if figures and pool is not None and outcome.examples.get("methods"):
        _explain_figure(outcome, backbone, pool)
    if report:
        from focusshot.report.html import write_report

        write_report(outcome.directory)
    return outcome


def record_checks(outcome: RunOutcome, checks: dict[str, Any]) -> None:
    """Add the data checks to the run's ``run.json`` (outside its config: a rerun still resumes)."""
    path = outcome.directory / "run.json"
    info = json.loads(path.read_text())
    info["data_checks"] = checks
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")


def write_reliability(outcome: RunOutcome, methods: list[str]) -> None:
    """``reliability.png`` (one panel per method; split runs: the largest K, own test split) and
    ``reliability.md`` / ``.csv`` (pooled ECE per method, and per K for split runs); nothing when
    no result line has confidences."""
    from focusshot.evaluation.results import write_tables
    from focusshot.report.reliability import pooled_bins, reliability_table, save_reliability_figure

    rows = [r for r in outcome.rows if r.get("test", "test") == "test"]
    if not rows:
        return
    table = []
    if "shots" in rows[0] and "episode" not in rows[0]:
        top = max(r["shots"] for r in rows)
        for k in sorted({r["shots"] for r in rows}):
            table += [
                {"shots": k, **t} for t in reliability_table(pooled_bins(r for r in rows if r["shots"] == k))
            ]
        pooled = pooled_bins(r for r in rows if r["shots"] == top)
    else:
        pooled = pooled_bins(rows)
        table = reliability_table(pooled)
    if not pooled:
        return
    save_reliability_figure(pooled, outcome.directory / "reliability.png", methods)
    write_tables(outcome.directory, table, "reliability")


def _attention_figures(outcome: RunOutcome, backbone: Backbone, pool: LabelledImages) -> None:
    """``attention_maps.png`` and, with methods fitted on the first episode, ``attention_methods.png``."""
    from focusshot.report.attention_maps import (
        save_attention_figure,
        save_method_attention_figure,
        target_masks,
    )

    fig = outcome.directory / "attention_maps.png"
    if not fig.is_file():
        save_attention_figure(backbone, pool, target_masks(pool), fig)
    outcome.attention["figure"] = fig.name
    fitted = outcome.examples.get("fitted") or {}
    if fitted:
        models = {name: f.attention_model() for name, f in fitted.items()}
        fig2 = outcome.directory / "attention_methods.png"
        save_method_attention_figure(
            backbone, models, pool, outcome.examples["query"], target_masks(pool), fig2
        )
        outcome.attention["methods_figure"] = fig2.name


def _explain_figure(outcome: RunOutcome, backbone: Backbone, pool: LabelledImages) -> None:
    """``explain_maps.png``: each method's relevance maps on the first episode's queries."""
    from focusshot.report.attention_maps import target_masks
    from focusshot.report.explain_maps import save_explain_figure

    ex = outcome.examples
    fig = outcome.directory / "explain_maps.png"
    masks = target_masks(pool)
    record = save_explain_figure(
        backbone, ex["methods"], pool, ex["query"], fig, classes=ex.get("classes"), masks=masks
    )
    outcome.attention["explain_figure"] = fig.name
    outcome.attention["explain"] = record
    path = outcome.directory / "attention.json"
    if path.is_file():
        info = json.loads(path.read_text())
        info["explain"] = record
        path.write_text(json.dumps(info, indent=2) + "\n")
