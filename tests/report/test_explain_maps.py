"""explain_maps.png: each method's relevance map of its predicted class on the first episode's
queries, for every backbone (Grad-CAM on Swin, which has no global [CLS] row), in report.html;
a method that cannot be explained loses its column only."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from PIL import Image

import focusshot
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.protocols import EpisodicConfig, RunOutcome, run_episodic
from focusshot.report import explain_maps
from focusshot.report.attention_maps import pick_queries
from focusshot.report.finish import finish_run

WORLD = "world:clutter?per_class=4&image_size=32"
METHODS = ["protonet", "ridge"]
CELL = 224


@pytest.fixture(scope="module")
def swin_run(tmp_path_factory):
    """A one-episode run of two frozen-feature methods on tiny-swin, not finished yet."""
    from focusshot.data.sources import open_source

    tmp = tmp_path_factory.mktemp("explain")
    old = os.environ.get("FOCUSSHOT_CACHE")
    os.environ["FOCUSSHOT_CACHE"] = str(tmp / "fs")
    try:
        pool = open_source(WORLD)
        swin = focusshot.create_backbone("tiny-swin")
        cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=1, seed=0)
        out = run_episodic(swin, pool, METHODS, cfg, tmp / "run", FeatureCache(tmp / "cache"))
    finally:
        if old is None:
            os.environ.pop("FOCUSSHOT_CACHE", None)
        else:
            os.environ["FOCUSSHOT_CACHE"] = old
    return out, swin, pool


def _size(columns: int, notes: int, queries: int) -> tuple[int, int]:
    """The figure's size with ``columns`` images a row, ``notes`` left-out lines and ``queries`` rows."""
    return columns * (CELL + 4), explain_maps.LINE * (notes + 2) + 2 + queries * (CELL + 4)


def test_swin_run_gets_grad_cam_maps_in_report(swin_run) -> None:
    out, swin, pool = swin_run
    assert set(out.examples["methods"]) == set(METHODS)
    finish_run(out, swin, pool, METHODS, checks={})
    fig = out.directory / "explain_maps.png"
    assert out.attention["explain_figure"] == fig.name and fig.is_file()
    assert not (out.directory / "attention_methods.png").exists()  # no [CLS] row: that figure is skipped
    queries = len(out.examples["query"])  # 3 ways x 2 queries, all shown
    assert Image.open(fig).size == _size(1 + len(METHODS), 0, queries)
    att = json.loads((out.directory / "attention.json").read_text())
    assert not att["available"] and att["explain"] == out.attention["explain"]
    record = att["explain"]
    assert record["left_out"] == {} and {m["kind"] for m in record["methods"].values()} == {"grad_cam"}
    # the maps explain the protocol's own predictions: the same right and wrong queries
    shown = pick_queries(pool, out.examples["query"], 6)
    assert record["queries"] == [out.examples["query"][p] for p in shown]
    for r in out.rows:
        assert record["methods"][r["method"]]["correct"] == [r["correct"][p] == "1" for p in shown]
    page = (out.directory / "report.html").read_text()
    assert "<h2>Where the model looks</h2>" in page
    assert 'alt="what each method&#x27;s prediction rests on (relevance maps)"' in page


def test_a_method_that_cannot_be_explained_loses_only_its_column(swin_run, tmp_path, monkeypatch) -> None:
    out, swin, pool = swin_run
    fits = dict(out.examples["methods"])
    fits["boxes"] = dataclasses.replace(fits["protonet"], reads_boxes=True, regions=None)
    real, broken = explain_maps.relevance_maps, fits["ridge"].fitted

    def fails_for_ridge(backbone, fitted, *args, **kwargs):
        if fitted is broken:
            raise ValueError("the classifier's logits do not depend\ndifferentiably on the image")
        return real(backbone, fitted, *args, **kwargs)

    monkeypatch.setattr(explain_maps, "relevance_maps", fails_for_ridge)
    fig = tmp_path / "explain_maps.png"
    record = explain_maps.save_explain_figure(swin, fits, pool, out.examples["query"], fig, count=2)
    assert list(record["methods"]) == ["protonet"] and "predicted" in record["methods"]["protonet"]
    assert "not at hand" in record["left_out"]["boxes"]
    assert "differentiably" in record["left_out"]["ridge"]
    width, height = Image.open(fig).size
    assert width >= 2 * (CELL + 4) and height == _size(2, 2, 2)[1]  # input + protonet; two notes

    run = RunOutcome(tmp_path, [], [], [], {"available": False}, {})
    (tmp_path / "run.json").write_text(json.dumps({"config": {}}))
    (tmp_path / "attention.json").write_text(json.dumps({"available": False, "explain": record}))
    finish_run(run, swin, pool, METHODS, figures=False)
    page = (tmp_path / "report.html").read_text()
    assert "Relevance maps left out: ridge (the classifier" in page and "; boxes (it reads" in page
