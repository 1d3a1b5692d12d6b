"""finish_run: the figures, tables, data checks and page at the end of a run, and evaluate calls it once."""

from __future__ import annotations

import json

from PIL import Image

import focusshot
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.protocols import EpisodicConfig, SplitConfig, run_episodic, run_split
from focusshot.report.finish import finish_run

WORLD = "world:clutter?per_class=4&image_size=32"
FIGURES = (
    "reliability.png",
    "reliability.md",
    "reliability.csv",
    "attention_maps.png",
    "attention_methods.png",
    "explain_maps.png",
)


def _open(spec: str, tmp_path, monkeypatch):
    """A FocusWorld suite, materialised under this test's own cache folder."""
    from focusshot.data.sources import open_source

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    return open_source(spec)


def test_finish_run_writes_figures_tables_checks_and_page(tmp_path, monkeypatch) -> None:
    world = _open(WORLD, tmp_path, monkeypatch)
    clip = focusshot.create_backbone("tiny-clip-vit")
    methods = ["protonet", "lora"]
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=2, seed=0)
    cache = FeatureCache(tmp_path / "cache")
    out = run_episodic(
        clip, world, methods, cfg, tmp_path / "run", cache, method_options={"lora": {"epochs": 1}}
    )
    assert out.attention["available"] and "lora" in out.examples["fitted"]
    assert not any((out.directory / f).exists() for f in (*FIGURES, "report.html"))
    checks = {"duplicates": 0}
    assert finish_run(out, clip, world, methods, checks=checks) is out
    assert all((out.directory / f).is_file() for f in (*FIGURES, "report.html"))
    assert json.loads((out.directory / "run.json").read_text())["data_checks"] == checks
    assert out.attention["figure"] == "attention_maps.png"
    assert out.attention["methods_figure"] == "attention_methods.png"
    assert out.attention["explain_figure"] == "explain_maps.png"
    kinds = {m: e["kind"] for m, e in out.attention["explain"]["methods"].items()}
    assert kinds == {"protonet": "gradient_rollout", "lora": "gradient_rollout"}
    width, _ = Image.open(out.directory / "explain_maps.png").size
    assert width == (1 + len(methods)) * (224 + 4)  # input, then one column per method
    page = (out.directory / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "(relevance maps)" in page
    assert "protonet" in (out.directory / "reliability.md").read_text()

    bare = run_episodic(
        clip, world, methods, cfg, tmp_path / "bare", cache, method_options={"lora": {"epochs": 1}}
    )
    finish_run(bare, clip, world, methods, checks=checks, figures=False, report=False)
    assert not any((bare.directory / f).exists() for f in (*FIGURES, "report.html"))
    assert json.loads((bare.directory / "run.json").read_text())["data_checks"] == checks


def test_finish_run_on_a_split_run_has_per_shot_reliability_and_no_attention(tmp_path, monkeypatch) -> None:
    splits = _open(WORLD + "&split=1", tmp_path, monkeypatch)
    clip = focusshot.create_backbone("tiny-clip-vit")
    out = run_split(
        clip, splits, ["protonet"], SplitConfig((1, 2), (1,)), tmp_path / "run", FeatureCache(tmp_path / "c")
    )
    finish_run(out, clip, None, ["protonet"], checks={})
    rows = (out.directory / "reliability.csv").read_text().splitlines()
    assert rows[0].startswith("shots,") and len(rows) == 3  # header, K = 1 and K = 2
    assert (out.directory / "reliability.png").is_file() and (out.directory / "report.html").is_file()
    assert not (out.directory / "attention_maps.png").exists()


def test_evaluate_finishes_every_run_through_finish_run(tmp_path, monkeypatch) -> None:
    import focusshot.report.finish as finish

    seen = []

    def spy(outcome, backbone, pool, methods, **kwargs):
        seen.append((pool, list(methods), kwargs))
        return finish_run(outcome, backbone, pool, methods, **kwargs)

    monkeypatch.setattr(finish, "finish_run", spy)
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    common = {"pretrained": False, "cache_dir": tmp_path / "cache", "report": False}
    focusshot.evaluate(
        "tiny-clip-vit",
        WORLD,
        ["protonet"],
        "episodic",
        tmp_path / "ep",
        ways=3,
        queries=2,
        episodes=2,
        **common,
    )
    focusshot.evaluate(
        "tiny-clip-vit",
        WORLD + "&split=1",
        ["protonet"],
        "split",
        tmp_path / "sp",
        shots=[1],
        seeds=[1],
        **common,
    )
    assert len(seen) == 2
    (pool, methods, kw), (split_pool, _, split_kw) = seen
    assert pool is not None and split_pool is None and methods == ["protonet"]
    assert kw["figures"] and not kw["report"] and split_kw["figures"]
    assert json.loads((tmp_path / "ep" / "run.json").read_text())["data_checks"] == kw["checks"]
    assert (tmp_path / "ep" / "attention_maps.png").is_file() and (
        tmp_path / "sp" / "reliability.png"
    ).is_file()
