"""Tuning methods end to end: episodic runs that resume, options from the command line and from
files, fit -> save -> predict, and the `methods` listing."""

import json

import pytest
import torch
from PIL import Image

import focusshot
from focusshot.cli import main
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.protocols import EpisodicConfig, run_episodic
from tests.methods.helpers import class_folders

WORLD = "world:clutter?per_class=4&image_size=32"


@pytest.fixture()
def world(tmp_path, monkeypatch):
    from focusshot.data.sources import open_source

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    return open_source(WORLD)


def test_killed_tuning_run_resumes_to_the_same_results(tmp_path, world) -> None:
    clip = focusshot.create_backbone("tiny-clip-vit")
    cache = FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=3, seed=0)
    methods, opts = ["protonet", "lora"], {"lora": {"epochs": 2}}
    full = run_episodic(clip, world, methods, cfg, tmp_path / "full", cache, method_options=opts)
    part = run_episodic(
        clip, world, methods, cfg, tmp_path / "resumed", cache, stop_after=1, method_options=opts
    )
    assert len(part.rows) == 2
    resumed = run_episodic(clip, world, methods, cfg, tmp_path / "resumed", cache, method_options=opts)
    strip = ("seconds",)
    rows = lambda out: [{k: v for k, v in r.items() if k not in strip} for r in out.rows]  # noqa: E731
    assert rows(resumed) == rows(full) and resumed.summary == full.summary
    lora = [r for r in full.rows if r["method"] == "lora"]
    assert all(r["train_steps"] == 2 and r["diverged"] is False for r in lora)
    assert all(r["selected_on"].startswith("last step") for r in lora)
    assert all(0 <= r["cls_target_mass"] <= 1 for r in lora)  # its own attention after adapting
    assert "lora" in full.attention["methods"]
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["config"]["method_options"]["lora"]["epochs"] == 2
    assert json.loads((tmp_path / "full" / "timing.json").read_text())["lora"]["episodes"] == 3
    # a rerun with other options is refused rather than mixed into the same results
    with pytest.raises(ValueError):
        run_episodic(
            clip, world, methods, cfg, tmp_path / "full", cache, method_options={"lora": {"epochs": 3}}
        )


def test_queries_whose_cls_ignores_every_patch_are_counted_not_fatal(tmp_path, world, monkeypatch) -> None:
    # LoRA at lr 5e-2 on world-dino once drove a query's last [CLS] row entirely onto [CLS]; the run
    # must finish, leave that query out of the mean and say how many there were
    import focusshot.evaluation.method_attention as ma

    real, seen = ma.cls_attention_metrics, []

    def first_query_collapsed(probs, *args, **kwargs):
        seen.append(real(probs, *args, **kwargs)["cls_target_mass"])
        probs = probs.clone()
        probs[0, :, 0, :] = 0.0
        probs[0, :, 0, 0] = 1.0
        return real(probs, *args, **kwargs)

    monkeypatch.setattr(ma, "cls_attention_metrics", first_query_collapsed)
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=2, seed=0)
    out = run_episodic(
        focusshot.create_backbone("tiny-clip-vit"), world, ["lora"], cfg, tmp_path / "run",
        FeatureCache(tmp_path / "cache"), method_options={"lora": {"epochs": 1}},
    )  # fmt: skip
    assert len(out.rows) == 2 and len(seen) == 2
    for row, mass in zip(out.rows, seen, strict=True):
        assert row["cls_no_patch_queries"] == 1
        assert row["cls_target_mass"] == pytest.approx(float(mass[1:].double().mean()))
    assert out.summary[0]["cls_target_mass"] == pytest.approx(sum(r["cls_target_mass"] for r in out.rows) / 2)


def test_cli_fit_predict_with_options_from_set_and_a_toml_file(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    support = class_folders(tmp_path / "support")
    clf = tmp_path / "clf.safetensors"
    cfg = tmp_path / "opts.toml"
    cfg.write_text("[lora]\nrank = 2\nepochs = 1\n")
    args = ["fit", str(support), "--backbone", "tiny-clip-vit", "--method", "lora", "--quiet"]
    assert main([*args, "--config", str(cfg), "--set", "lora.alpha=2", "--output", str(clf)]) == 0
    loaded = focusshot.Classifier.load(clf)
    opts = loaded.fitted.config()["options"]
    assert (opts["rank"], opts["alpha"], opts["epochs"]) == (2, 2.0, 1)
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(clf), str(support), "--output", str(preds), "--quiet"]) == 0
    lines = preds.read_text().splitlines()
    assert len(lines) == 1 + 6 and lines[1].split(",")[1] in ("class_0", "class_1")
    # the loaded classifier predicts what the fitted one does
    fitted = focusshot.fit(
        support, backbone="tiny-clip-vit", method="lora", options={"rank": 2, "alpha": 2.0, "epochs": 1}
    )
    paths = sorted(str(p) for p in support.rglob("*.png"))
    assert torch.allclose(fitted.predict_proba(paths)[0], loaded.predict_proba(paths)[0], atol=1e-6)
    # a bad option is refused, listing the valid ones
    assert main([*args, "--set", "lora.rnak=2", "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "valid options" in capsys.readouterr().err
    assert main([*args, "--set", "protonet.temperature=2", "--output", str(tmp_path / "y.safetensors")]) == 2


def test_methods_listing_shows_prefix_training_and_options(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "lora" in out and "prefix=images" in out and "trains" in out
    assert "lora.rank = 4" in out and "last_block" in out and "tokens entering block L-1" in out
    assert "protonet" in out and "training-free" in out


def test_cli_evaluate_with_tuning_group(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    code = main(
        [
            "evaluate", "--backbone", "tiny-clip-vit", "--data", WORLD, "--method", "protonet,last_block",
            "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "2", "--output",
            str(tmp_path / "run"), "--quiet", "--set", "last_block.epochs=1",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "last_block" in out and "after adapting, last_block" in out
    fig = tmp_path / "run" / "attention_methods.png"
    assert fig.stat().st_size > 0 and "attention_methods.png" in out

    with Image.open(fig) as im:  # input + frozen + last_block columns
        assert im.width == 3 * (32 * 2 + 4)


def test_augmented_views_are_cached_and_train_the_method(tmp_path, world) -> None:
    from focusshot.backbones.prefix import Prefix

    clip = focusshot.create_backbone("tiny-clip-vit")
    cache = FeatureCache(tmp_path / "cache")
    paths = world.paths[:3]
    a = cache.get(clip, paths, Prefix.images().with_view(1, 0), progress=False)
    b = cache.get(clip, paths, Prefix.images().with_view(2, 0), progress=False)
    plain = cache.get(clip, paths, Prefix.images(), progress=False)
    assert a.shape == plain.shape and not torch.equal(a, b) and not torch.equal(a, plain)
    written = cache.stats.written
    again = FeatureCache(tmp_path / "cache").get(clip, paths, Prefix.images().with_view(1, 0), progress=False)
    assert torch.equal(again, a) and cache.stats.written == written  # same view, from disk
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=1, seed=0)
    out = run_episodic(
        clip,
        world,
        ["lora"],
        cfg,
        tmp_path / "views",
        cache,
        method_options={"lora": {"epochs": 1, "views": 2}},
    )
    (row,) = out.rows
    assert row["train_steps"] == 3  # 3 support images x (1 + 2 views) / batch 3


def test_split_protocol_selects_the_training_step_on_validation(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    out = focusshot.evaluate(
        "tiny-clip-vit", "world:clutter?per_class=6&image_size=32&split=1", ["protonet", "vpt"],
        protocol="split", shots=[1], seeds=[1], output=tmp_path / "split", cache_dir=tmp_path / "c",
        method_options={"vpt": {"epochs": 2, "num_tokens": 2}},
    )  # fmt: skip
    (row,) = [r for r in out.rows if r["method"] == "vpt"]
    assert row["selected_on"] == "val" and row["train_steps"] >= 1 and not row["diverged"]
    assert 0.0 <= row["accuracy"] <= 1.0 and row["selected"]["fit_seconds"] >= 0
