"""FALIP (foveal [CLS] attention bias) and the drawn visual prompts, as methods and in runs."""

import dataclasses
import re

import pytest
import torch

import focusshot
from focusshot.attention.foveal import foveal_bias
from focusshot.attention.record import record
from focusshot.backbones.prefix import compute_prefix
from focusshot.data.prompts import blur_outside, red_ellipse
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.protocols import EpisodicConfig, SplitConfig, run_episodic, run_split
from focusshot.methods.base import FitContext, create_method, fitted_from_state
from focusshot.methods.falip import biased_layers
from focusshot.methods.text import class_text_embeddings

WORLD = "world:clutter?per_class=4&image_size=32"
NAMES = ["red circle", "blue square", "green star"]
NAN = float("nan")


@pytest.fixture(scope="module")
def clip():
    return focusshot.create_backbone("tiny-clip-vit").eval()


@pytest.fixture(scope="module")
def text(clip):
    return class_text_embeddings(clip, NAMES)


@pytest.fixture()
def world(tmp_path, monkeypatch):
    from focusshot.data.sources import open_source

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    return open_source(WORLD)


def _images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


BOXES = torch.tensor(
    [[0.25, 0.25, 0.75, 0.75], [0, 0, 0.5, 0.5], [0.5, 0.25, 1, 1], [0.1, 0.6, 0.4, 0.9], [0, 0, 1, 1]]
)


def _fit(clip, text, name: str = "falip", **options):
    m = create_method(name, options)
    prefix = m.prefix(clip).resolve(clip)
    images = _images()
    with torch.inference_mode():
        x = compute_prefix(clip, prefix, images)
    fitted = m.fit(x[:3], torch.arange(3), FitContext(clip, 3, NAMES, text, regions=BOXES[:3]))
    return m, fitted, x, images


def _plain(clip, tokens: torch.Tensor, start: int) -> torch.Tensor:
    with torch.inference_mode():
        return clip.forward_head(clip.forward_blocks(tokens, start)).float()


@pytest.mark.parametrize("layers", [1, 4])
def test_alpha_zero_and_whole_image_are_plain_clip_exactly(clip, text, layers) -> None:
    m, fitted, tokens, images = _fit(clip, text, alpha=0.0, layers=layers)
    start = clip.token_blocks() - min(layers, clip.token_blocks())
    assert m.prefix(clip).layer == start  # the tokens entering the first biased block
    plain = _plain(clip, tokens, start)
    assert torch.equal(fitted.features(tokens, BOXES), plain)
    zeroshot = create_method("zeroshot").fit(plain[:3], torch.arange(3), FitContext(clip, 3, NAMES, text))
    assert torch.equal(fitted.logits(tokens, regions=BOXES), zeroshot.logits(plain))
    with torch.inference_mode():
        from_images = zeroshot.logits(clip.forward_features(images).float())
    assert torch.allclose(fitted.logits(tokens, regions=BOXES), from_images, atol=1e-4)
    # region="whole" is no bias at all (whatever alpha); NaN regions too
    _, whole, _, _ = _fit(clip, text, alpha=0.2, layers=layers, region="whole")
    assert torch.equal(whole.features(tokens, BOXES), plain)
    _, boxed, _, _ = _fit(clip, text, alpha=0.2, layers=layers)
    assert torch.equal(boxed.features(tokens, torch.full((5, 4), NAN)), plain)
    assert not torch.allclose(boxed.features(tokens, BOXES), plain)  # a real region changes CLIP


def test_the_bias_reaches_only_the_cls_row_of_the_biased_blocks(clip, text) -> None:
    _, fitted, tokens, _ = _fit(clip, text, alpha=0.5, layers=1)
    start = clip.token_blocks() - 1
    with record(clip, "logits", layers=[start]) as rec:
        fitted.features(tokens, BOXES)
    with record(clip, "logits", layers=[start]) as base:
        _plain(clip, tokens, start)
    diff = rec.get("logits", start) - base.get("logits", start)  # (B, H, N, N)
    rows, cols = clip.grid_size()
    bias = foveal_bias(BOXES, (rows, cols), 1, tokens.shape[1], alpha=0.5, sigma=100.0)
    assert torch.allclose(diff, bias.expand_as(diff), atol=1e-5)  # every head, only row 0
    assert not diff[:, :, 1:].abs().gt(1e-5).any() and not diff[:, :, 0, 0].abs().gt(1e-5).any()
    # with 1 of the 2 blocks biased, the cached prefix is the tokens entering the last block
    assert fitted.config()["start"] == start and fitted.info()["biased_blocks"] == 1


def test_unleash_adds_each_heads_change_once_more_on_cls(clip, text) -> None:
    _, fitted, tokens, _ = _fit(clip, text, alpha=0.5, layers=1, unleash=True)
    _, masked, _, _ = _fit(clip, text, alpha=0.5, layers=1)
    start = clip.token_blocks() - 1
    with record(clip, "head_out", layers=[start]) as rec:
        got = fitted.features(tokens, BOXES)
    g_masked, g_plain = rec.calls("head_out", start)  # the masked pass, then the unmasked one
    blk = clip.visual.blocks[start]
    g = g_masked.clone()
    g[:, :, 0] = g_masked[:, :, 0] + (g_masked[:, :, 0] - g_plain[:, :, 0])  # G' + (G' - G), per head
    b, h, n, d = g.shape
    with torch.inference_mode():
        y = tokens + blk.attn.proj(g.transpose(1, 2).reshape(b, n, h * d))
        y = y + blk.mlp(blk.norm2(y))
        want = clip.forward_head(y).float()
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, masked.features(tokens, BOXES), atol=1e-4)
    assert torch.allclose(fitted.features(tokens, torch.full((5, 4), NAN)), _plain(clip, tokens, start))


def test_auto_region_and_layer_mapping(clip, text) -> None:
    _, fitted, tokens, _ = _fit(clip, text, alpha=0.5, region="auto", keep=0.3)
    f = fitted.features(tokens)  # no regions needed: rollout finds them
    assert f.shape == (5, clip.num_features) and torch.isfinite(f).all()
    assert biased_layers(12, 4) == 4 and biased_layers(2, 4) == 2 and biased_layers(24, 16) == 16
    assert biased_layers(12, 4, 1 / 3) == 4 and biased_layers(6, 4, 1 / 3) == 2
    assert biased_layers(2, 4, 0.1) == 1
    _, boxed, _, _ = _fit(clip, text)
    with pytest.raises(ValueError, match=r"needs a region per image"):
        boxed.logits(tokens)
    _, lenient, _, _ = _fit(clip, text, missing_box="whole")
    assert torch.equal(lenient.features(tokens), _plain(clip, tokens, 0))


def test_fits_save_and_load(clip, text) -> None:
    for name, opts in (("falip", {"alpha": 0.3}), ("falip_tip", {"unleash": True}), ("red_circle", {})):
        _, fitted, x, _ = _fit(clip, text, name, **opts)
        again = fitted_from_state(fitted.state_dict(), fitted.config(), clip)
        assert torch.equal(again.logits(x, regions=BOXES), fitted.logits(x, regions=BOXES))
        assert again.config() == fitted.config()
    _, tip, x, _ = _fit(clip, text, "falip_tip")
    assert tip.info()["tip_alpha"] == 1.0 and tip.info()["searched"] is False


def test_backbones_without_a_global_cls_row_are_refused(clip, text) -> None:
    for source in ("tiny-swin", "tiny-clip-rn"):
        backbone = focusshot.create_backbone(source)
        for name in ("falip", "falip_tip"):
            with pytest.raises(ValueError, match=r"biases the \[CLS\] row of global self-attention"):
                create_method(name).prefix(backbone)
    with pytest.raises(ValueError, match="needs class text embeddings"):
        create_method("falip").fit(torch.zeros(1), torch.zeros(1), FitContext(clip, 3))
    with pytest.raises(ValueError, match="region must be one of"):
        create_method("falip", region="distractor")


def test_drawn_prompts() -> None:
    rgb = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.75], [NAN] * 4, [0.0, 0.0, 1.0, 1.0]])
    circled = red_ellipse(rgb, boxes, width=2.0)
    changed = (circled != rgb).any(dim=1)
    assert changed[0].any() and not changed[1].any()
    assert torch.all(circled[0][:, changed[0]] == torch.tensor([1.0, 0.0, 0.0])[:, None])
    assert not changed[0][:8].any() and not changed[0][16, 16]  # outside the box, and the centre
    blurred = blur_outside(rgb, boxes, sigma=2.0)
    assert torch.equal(blurred[0][:, 8:24, 8:24], rgb[0][:, 8:24, 8:24])
    assert not torch.allclose(blurred[0][:, :8], rgb[0][:, :8])
    assert torch.equal(blurred[1], rgb[1]) and torch.equal(blurred[2], rgb[2])


def test_episodic_run_with_regions(tmp_path, world) -> None:
    out = focusshot.evaluate(
        "tiny-clip-vit", world, ["zeroshot", "falip", "falip_tip", "red_circle", "blur_box"],
        ways=3, shots=1, queries=2, episodes=2, output=tmp_path / "run", cache_dir=tmp_path / "cache",
        figures=False,
    )  # fmt: skip
    by = {(r["method"], r["episode"]): r for r in out.rows}
    assert len(by) == 10
    assert all(by[(m, e)]["regions_missing"] == 0 for m in ("falip", "falip_tip", "blur_box") for e in (0, 1))
    assert "regions_missing" not in by[("zeroshot", 0)]
    assert {r["method"] for r in out.summary} >= {"falip", "falip_tip", "red_circle"}


def test_missing_boxes_fail_naming_the_image_or_fall_back(tmp_path, world) -> None:
    clip = focusshot.create_backbone("tiny-clip-vit")
    cache = FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=2, seed=0)
    boxes = list(world.boxes)
    boxes[3] = None
    holed = dataclasses.replace(world, boxes=boxes)
    with pytest.raises(ValueError, match=re.escape(world.paths[3]) + ".*missing_box='whole'"):
        run_episodic(clip, holed, ["falip"], cfg, tmp_path / "a", cache)
    bare = dataclasses.replace(world, boxes=None)
    opts = {"falip": {"missing_box": "whole"}, "red_circle": {"missing_box": "whole"}}
    out = run_episodic(clip, bare, ["falip", "red_circle"], cfg, tmp_path / "b", cache, method_options=opts)
    assert all(r["regions_missing"] == 3 * (1 + 2) for r in out.rows)
    auto = run_episodic(
        clip, bare, ["falip"], cfg, tmp_path / "c", cache, method_options={"falip": {"region": "auto"}}
    )
    assert all("regions_missing" not in r for r in auto.rows)
    with pytest.raises(ValueError, match="outside the"):
        far = dataclasses.replace(world, boxes=[(500.0, 500.0, 600.0, 600.0), *world.boxes[1:]])
        run_episodic(clip, far, ["falip"], cfg, tmp_path / "d", cache)


def test_split_run_searches_tip_on_validation_regions(tmp_path, monkeypatch) -> None:
    from focusshot.data.sources import open_source

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    splits = open_source("world:clutter?per_class=6&image_size=32&split=1")
    clip = focusshot.create_backbone("tiny-clip-vit")
    out = run_split(
        clip, splits, ["falip_tip"], SplitConfig((1,), (1,)), tmp_path / "s", FeatureCache(tmp_path / "c")
    )
    (row,) = out.rows
    assert row["selected"]["searched"] is True and row["regions_missing"] == 0


def test_api_fit_predict_and_the_all_group(tmp_path, world) -> None:
    from focusshot.api import resolve_methods

    names = resolve_methods(["all"], focusshot.create_backbone("tiny-clip-vit"))
    assert "zeroshot" in names and not {"falip", "falip_tip", "red_circle", "blur_box"} & set(names)
    auto = focusshot.fit(
        world, "tiny-clip-vit", "falip_tip", options={"region": "auto"}, cache_dir=tmp_path / "c"
    )
    preds = auto.predict(world.paths[:3])
    assert len(preds) == 3 and all(p.label in world.class_names for p in preds)
    boxed = focusshot.fit(world, "tiny-clip-vit", "falip", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="reads a box per image: pass boxes"):
        boxed.predict(world.paths[:1])
    assert world.boxes is not None
    (pred,) = boxed.predict(world.paths[:1], boxes={world.paths[0]: world.boxes[0]})
    assert pred.label in world.class_names


def test_episodic_rows_measure_cls_attention_under_the_foveal_bias(tmp_path, world) -> None:
    clip = focusshot.create_backbone("tiny-clip-vit")
    cache = FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=2, seed=0)
    mass = {}
    for alpha in (0.0, 50.0):
        opts = {"falip": {"alpha": alpha, "layers": 2}}
        out = run_episodic(clip, world, ["falip"], cfg, tmp_path / f"a{alpha}", cache, method_options=opts)
        assert all(0.0 <= r["cls_target_mass"] <= 1.0 for r in out.rows)
        mass[alpha] = sum(r["cls_target_mass"] for r in out.rows) / len(out.rows)
    assert mass[50.0] > mass[0.0] + 0.05  # the bias pulls [CLS] onto the box, so onto the target
