"""Both protocols end to end on written images with a tiny backbone; resumption gives the same summary."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import focusshot
from focusshot.data.sources import from_folder
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.protocols import EpisodicConfig, SplitConfig, run_episodic, run_split


def _write_dataset(root: Path, classes: int = 6, per_class: int = 12, splits: tuple[str, ...] = ()) -> Path:
    """Class folders of small images whose colour depends on the class (so classes are separable)."""
    g = torch.Generator().manual_seed(0)
    for split in splits or ("",):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            base = torch.tensor([(c * 53) % 256, (c * 97) % 256, (c * 151) % 256], dtype=torch.float32)
            for i in range(per_class):
                noise = torch.rand(24, 24, 3, generator=g) * 60
                arr = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return from_folder(_write_dataset(tmp_path_factory.mktemp("pool")))


@pytest.fixture(scope="module")
def backbone():
    return focusshot.create_backbone("tiny-vit")


def test_episodic_run_writes_lines_summary_and_versions(tmp_path, pool, backbone) -> None:
    cache = FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=2, queries=4, episodes=6, seed=3)
    out = run_episodic(backbone, pool, ["protonet", "ridge"], cfg, tmp_path / "run", cache)
    lines = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    assert {(r["method"], r["episode"]) for r in lines} == {
        (m, e) for m in ("protonet", "ridge") for e in range(6)
    }
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["run_seed"] == 3 for r in lines)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["ways"] == 3 and run["versions"]["torch"] == torch.__version__
    assert run["backbone"]["name"] == "tiny-vit"
    summary = {r["method"]: r for r in out.summary}
    mean = sum(r["accuracy"] for r in lines if r["method"] == "protonet") / 6
    assert summary["protonet"]["accuracy"] == pytest.approx(mean)
    assert summary["protonet"]["accuracy"] > 1 / 3  # colour classes are easy, even for random weights
    assert (tmp_path / "run" / "summary.csv").is_file() and (tmp_path / "run" / "paired.md").is_file()
    assert out.paired[0]["method"] == "ridge" and out.paired[0]["baseline"] == "protonet"


def test_killed_and_restarted_run_gives_the_same_summary(tmp_path, pool, backbone) -> None:
    cache = FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=1, queries=3, episodes=8, seed=1)
    methods = ["protonet", "metaoptnet"]
    full = run_episodic(backbone, pool, methods, cfg, tmp_path / "full", cache)
    # a run that stops after 3 episodes, then a line cut in half as a kill mid-write would leave
    part = run_episodic(backbone, pool, methods, cfg, tmp_path / "resumed", cache, stop_after=3)
    assert len(part.rows) == 6
    with open(tmp_path / "resumed" / "results.jsonl", "a") as f:
        f.write('{"method": "protonet", "episo')
    resumed = run_episodic(backbone, pool, methods, cfg, tmp_path / "resumed", cache)
    assert len(resumed.rows) == 16
    assert resumed.summary == full.summary
    assert resumed.paired == full.paired


def test_ctrl_c_mid_run_leaves_valid_results_and_resumes(tmp_path, pool, backbone, monkeypatch) -> None:
    import focusshot.evaluation.protocols as protocols

    cache = FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=1, queries=3, episodes=6, seed=2)
    full = run_episodic(backbone, pool, ["protonet", "ridge"], cfg, tmp_path / "full", cache)
    real, calls = protocols._fit, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # Ctrl-C in the middle of episode 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(protocols, "_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_episodic(backbone, pool, ["protonet", "ridge"], cfg, tmp_path / "run", cache)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["method"] for line in lines)
    monkeypatch.setattr(protocols, "_fit", real)
    resumed = run_episodic(backbone, pool, ["protonet", "ridge"], cfg, tmp_path / "run", cache)
    assert len(resumed.rows) == 12 and resumed.summary == full.summary


def test_restart_with_another_config_is_refused(tmp_path, pool, backbone) -> None:
    cache = FeatureCache(tmp_path / "cache")
    run_episodic(backbone, pool, ["protonet"], EpisodicConfig(3, 1, 3, 2, 0), tmp_path / "run", cache)
    with pytest.raises(ValueError, match=r"config differs in \[.*'shots'\]"):
        run_episodic(backbone, pool, ["protonet"], EpisodicConfig(3, 2, 3, 2, 0), tmp_path / "run", cache)


def test_same_seed_same_numbers(tmp_path, pool, backbone) -> None:
    cache = FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=1, queries=3, episodes=4, seed=7)
    a = run_episodic(backbone, pool, ["logistic"], cfg, tmp_path / "a", cache)
    b = run_episodic(backbone, pool, ["logistic"], cfg, tmp_path / "b", cache)
    assert [r["accuracy"] for r in a.rows] == [r["accuracy"] for r in b.rows]


def test_split_protocol_selects_on_validation(tmp_path, backbone) -> None:
    splits = from_folder(
        _write_dataset(tmp_path / "data", classes=4, per_class=6, splits=("train", "val", "test"))
    )
    cache = FeatureCache(tmp_path / "cache")
    out = run_split(
        backbone,
        splits,
        ["logistic", "protonet"],
        SplitConfig(shots=(1, 2), seeds=(1, 2)),
        tmp_path / "run",
        cache,
    )
    assert len(out.rows) == 8
    logistic = [r for r in out.rows if r["method"] == "logistic"]
    assert all(r["selected_on"] == "val" and "C" in r["selected"] for r in logistic)
    assert all(0 <= r["ece"] <= 1 and r["nll"] > 0 and r["test_images"] == 24 for r in out.rows)
    rows = {(r["method"], r["shots"]): r for r in out.summary}
    assert rows[("protonet", 2)]["n"] == 2 and "accuracy_std" in rows[("protonet", 2)]


def test_split_protocol_pairs_methods_over_test_images_and_runs_aliases(tmp_path, backbone) -> None:
    splits = from_folder(
        _write_dataset(tmp_path / "data", classes=4, per_class=6, splits=("train", "val", "test"))
    )
    out = run_split(
        backbone,
        splits,
        ["protonet", "nearest_neighbour", "protonet@cos"],
        SplitConfig(shots=(1, 2), seeds=(1, 2)),
        tmp_path / "run",
        FeatureCache(tmp_path / "cache"),
        method_options={"protonet@cos": {"distance": "cosine"}},
    )
    alias = [r for r in out.rows if r["method"] == "protonet@cos"]
    assert len(alias) == 4 and all(r["selected"]["distance"] == "cosine" for r in alias)
    assert all(r["selected"]["distance"] == "euclidean" for r in out.rows if r["method"] == "protonet")
    rows = {(r["method"], r["shots"], r["split_seed"]): r for r in out.rows}
    for r in out.rows:  # per-image correctness agrees with the accuracy
        assert len(r["correct"]) == 24 and r["correct"].count("1") / 24 == pytest.approx(r["accuracy"])
    pair = next(p for p in out.paired if p["method"] == "nearest_neighbour" and p["shots"] == 2)
    a = rows[("nearest_neighbour", 2, 1)]["correct"] + rows[("nearest_neighbour", 2, 2)]["correct"]
    b = rows[("protonet", 2, 1)]["correct"] + rows[("protonet", 2, 2)]["correct"]
    diff = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    assert pair["baseline"] == "protonet" and pair["images"] == 48 and pair["seeds"] == 2
    assert pair["mean_difference"] == pytest.approx(sum(diff) / 48)
    assert (tmp_path / "run" / "paired.md").exists()


def test_zero_shot_needs_a_clip_backbone(tmp_path, pool, backbone) -> None:
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="no text tower"):
        run_episodic(backbone, pool, ["zeroshot"], EpisodicConfig(3, 1, 3, 2, 0), tmp_path / "run", cache)
    clip = focusshot.create_backbone("tiny-clip-vit")
    out = run_episodic(
        clip, pool, ["zeroshot", "tip_adapter"], EpisodicConfig(3, 1, 3, 2, 0), tmp_path / "z", cache
    )
    assert {r["method"] for r in out.rows} == {"zeroshot", "tip_adapter"}


def test_head_threads_restores_the_thread_count() -> None:
    from focusshot.evaluation.protocols import head_threads

    before = torch.get_num_threads()
    with head_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_episodic_run_reports_attention_on_world_masks(tmp_path, monkeypatch) -> None:
    from focusshot.data.sources import open_source

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    pool = open_source("world:clutter?per_class=4&image_size=32")
    cache = FeatureCache(tmp_path / "features")
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=2, seed=0)
    out = run_episodic(
        focusshot.create_backbone("tiny-vit"), pool, ["protonet"], cfg, tmp_path / "vit", cache
    )
    att = out.attention
    assert att["available"] and att["images"] == len(pool.paths)
    assert 0 < att["target_area"] < 1 and 0 <= att["cls_target_mass"] <= 1 and 1 <= att["patches_95"] <= 16
    assert json.loads((tmp_path / "vit" / "attention.json").read_text()) == att
    assert not (tmp_path / "vit" / "attention_maps.png").exists()  # figures are the report layer's
    api = focusshot.evaluate(
        "tiny-vit", pool, ["protonet"], episodes=2, ways=3, queries=2, output=tmp_path / "api",
        cache_dir=cache.root,
    )  # fmt: skip
    assert api.attention["figure"] == "attention_maps.png"
    assert (tmp_path / "api" / "attention_maps.png").stat().st_size > 0
    swin = run_episodic(
        focusshot.create_backbone("tiny-swin"), pool, ["protonet"], cfg, tmp_path / "swin", cache
    )
    assert swin.attention == {"available": False, "reason": "the backbone has no global [CLS] attention row"}


def test_frozen_attention_report_leaves_out_images_without_patch_attention(tmp_path, monkeypatch) -> None:
    import focusshot.evaluation.attention_metrics as am
    from focusshot.data.sources import open_source

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    pool = open_source("world:clutter?per_class=4&image_size=32")
    backbone = focusshot.create_backbone("tiny-vit")
    real, kept = am.measure_attention, []

    def first_image_collapsed(*args, **kwargs):
        res = real(*args, **kwargs)
        res["cls_target_mass"][0] = float("nan")  # as cls_attention_metrics marks a row on [CLS] only
        kept.extend(res["cls_target_mass"][1:].tolist())
        return res

    monkeypatch.setattr(am, "measure_attention", first_image_collapsed)
    rep = am.attention_report(backbone, pool, am.target_masks(pool), batch_size=8)
    batches = -(-len(pool.paths) // 8)
    assert rep["images"] == len(pool.paths) and rep["images_without_patch_attention"] == batches
    assert rep["cls_target_mass"] == pytest.approx(sum(kept) / len(kept))


def test_split_protocol_scores_every_fit_on_shift_test_sets(tmp_path, backbone) -> None:
    splits = from_folder(
        _write_dataset(tmp_path / "data", classes=4, per_class=6, splits=("train", "val", "test"))
    )
    # the shift: two of the classes, under the same names, brighter images in another order
    shift = from_folder(_write_dataset(tmp_path / "shift", classes=4, per_class=3))
    keep = [i for i, y in enumerate(shift.labels) if shift.class_names[y] in ("class_1", "class_3")]
    from focusshot.data.sources import LabelledImages

    names = ["class_3", "class_1"]
    sub = LabelledImages(
        paths=[shift.paths[i] for i in keep],
        labels=[names.index(shift.class_names[shift.labels[i]]) for i in keep],
        class_names=names,
    )
    cfg = SplitConfig(shots=(1,), seeds=(1, 2))
    out = run_split(
        backbone,
        splits,
        ["protonet", "logistic"],
        cfg,
        tmp_path / "run",
        FeatureCache(tmp_path / "c"),
        shifts={"bright": sub},
    )
    assert sorted({r["test"] for r in out.rows}) == ["bright", "test"] and len(out.rows) == 8
    bright = [r for r in out.rows if r["test"] == "bright"]
    assert all(r["test_images"] == 6 and len(r["correct"]) == 6 for r in bright)
    # the shift labels are the training classes' indices, matched by name
    from focusshot.evaluation.protocols import shift_labels

    assert shift_labels(sub, splits["train"].class_names, "bright").tolist() == [
        splits["train"].class_names.index(names[y]) for y in sub.labels
    ]
    assert {(r["method"], r["test"]) for r in out.summary} >= {("logistic", "bright"), ("protonet", "test")}
    assert {p["test"] for p in out.paired} == {"test", "bright"}
    # resuming adds nothing; a shift with an unknown class is refused by name
    again = run_split(
        backbone,
        splits,
        ["protonet", "logistic"],
        cfg,
        tmp_path / "run",
        FeatureCache(tmp_path / "c"),
        shifts={"bright": sub},
    )
    assert len(again.rows) == 8
    bad = LabelledImages(paths=sub.paths[:1], labels=[0], class_names=["zebra"])
    with pytest.raises(ValueError, match="zebra"):
        shift_labels(bad, splits["train"].class_names, "bad")


def test_calibration_outputs_in_both_protocols(tmp_path, pool, backbone) -> None:
    cache = FeatureCache(tmp_path / "cache")
    ep = run_episodic(backbone, pool, ["protonet"], EpisodicConfig(3, 1, 3, 4, 0), tmp_path / "e", cache)
    row = ep.summary[0]
    assert row["queries_pooled"] == 4 * 9 and 0 <= row["ece_pooled"] <= 1
    conf = [c for r in ep.rows for c in r["confidence"]]
    ok = [int(c) for r in ep.rows for c in r["correct"]]
    top = sorted(range(len(conf)), key=lambda i: -conf[i])[:18]  # the 50% most confident of 36
    assert row["sel50"] == pytest.approx(sum(ok[i] for i in top) / 18)
    assert all(len(r["confidence"]) == 9 and 0 <= r["brier"] <= 2 for r in ep.rows)
    splits = from_folder(
        _write_dataset(tmp_path / "data", classes=4, per_class=6, splits=("train", "val", "test"))
    )
    out = run_split(backbone, splits, ["protonet"], SplitConfig((2,), (1,)), tmp_path / "s", cache)
    r = out.rows[0]
    assert r["temperature"] > 0 and {"ece_ts", "nll_ts", "brier_ts", "sel50", "sel80", "sel90"} <= set(r)
    assert r["nll_ts"] <= r["nll"] + 0.5  # fitted on other images: usually, not always, lower
    assert {"ece_ts", "brier"} <= set(out.summary[0])
