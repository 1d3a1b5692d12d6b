"""SAFE and SAFE-A on tiny CLIPs (ViT and RN50): zero updates equal zero-shot, the frozen pool stays
frozen, only the pool / last block trains, fits save and load, bad backbones are refused."""

import pytest
import torch

import focusshot
from focusshot.backbones.prefix import compute_prefix
from focusshot.heads import create_head
from focusshot.methods.base import FitContext, create_method, fitted_from_state
from focusshot.methods.text import class_text_embeddings
from tests.methods.helpers import random_support

NAMES = ("cat", "dog", "bird")


@pytest.fixture(scope="module", params=["tiny-clip-vit", "tiny-clip-rn"])
def clip(request):
    return focusshot.create_backbone(request.param, seed=0).eval()


def _setup(clip, method, n=2, seed=0):
    x, y = random_support(clip, n, 3, seed=seed)
    p = method.prefix(clip).resolve(clip)
    with torch.no_grad():
        return compute_prefix(clip, p, x), y


def _ctx(clip, **kw):
    return FitContext(clip, 3, class_names=list(NAMES), text=class_text_embeddings(clip, NAMES), **kw)


def test_prefix_is_one_block_or_the_pool(clip) -> None:
    p = create_method("safe").prefix(clip).resolve(clip)
    if clip.token_blocks():
        assert (p.kind, p.layer) == ("tokens", clip.token_blocks() - 1)
    else:
        assert p.kind == "head_in"


def test_zero_updates_equal_zero_shot(clip) -> None:
    m = create_method("safe", {"steps": 0, "beta": 0.7})
    s, y = _setup(clip, m)
    q, _ = _setup(clip, m, 1, seed=4)
    ctx = _ctx(clip)
    fitted = m.fit(s, y, ctx)
    # the zero-shot head on the pooled features, at the same logit scale
    x, _ = random_support(clip, 1, 3, seed=4)
    with torch.no_grad():
        pooled = clip.forward_features(x)
    scale = float(clip.logit_scale.detach().exp().clamp(max=100))
    zs = create_head("zeroshot", text_embeddings=ctx.text, scale=scale).classifier()
    assert torch.allclose(fitted.logits(q), zs.logits(pooled), atol=1e-4)


def test_training_moves_only_the_tuned_part_and_leaves_the_backbone(clip) -> None:
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    m = create_method("safe", {"steps": 4, "lr": 1e-2})
    s, y = _setup(clip, m)
    fitted = m.fit(s, y, _ctx(clip))
    after = clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    tail = fitted.tail
    # the frozen original pool is bit-identical to the backbone's
    for k, v in tail.original.state_dict().items():
        assert torch.equal(v, before[k]), k
    state = fitted.state_dict()
    tuned = [k for k in state if k.startswith("tail.")]
    assert tuned and all(k.startswith("tail.backbone.visual.") for k in tuned)
    part = "attnpool." if not clip.token_blocks() else f"blocks.{clip.token_blocks() - 1}."
    assert all(k.startswith("tail.backbone.visual." + part) for k in tuned)
    moved = [k for k in tuned if not torch.equal(state[k], before[k.removeprefix("tail.backbone.")])]
    assert moved, "nothing trained"
    assert fitted.info()["steps"] == 4


def test_save_load_and_seed(clip) -> None:
    for name in ("safe", "safe_a"):
        m = create_method(name, {"steps": 3, "tip_epochs": 2} if name == "safe_a" else {"steps": 3})
        s, y = _setup(clip, m)
        q, _ = _setup(clip, m, 1, seed=9)
        fitted = m.fit(s, y, _ctx(clip, seed=2))
        again = fitted_from_state(fitted.state_dict(), fitted.config(), clip)
        assert torch.allclose(again.logits(q), fitted.logits(q), atol=1e-5)
        twice = m.fit(s, y, _ctx(clip, seed=2))
        assert torch.equal(twice.logits(q), fitted.logits(q))


def test_validation_searches_the_grid_and_keeps_the_best(clip) -> None:
    m = create_method("safe", {"steps": 4, "eval_every": 2, "lr_grid": [1e-4, 1e-2], "wd_grid": [0.01]})
    s, y = _setup(clip, m)
    v, vy = _setup(clip, m, 1, seed=7)
    info = m.fit(s, y, _ctx(clip, val=(v, vy))).info()
    assert [t["lr"] for t in info["search"]] == [1e-4, 1e-2]
    best = max(t["val_accuracy"] for t in info["search"])
    assert info["best_val_accuracy"] == best and info["selected_on"] == "val"
    first_best = next(t for t in info["search"] if t["val_accuracy"] == best)
    assert info["lr"] == first_best["lr"]


def test_safe_a_with_alpha_zero_predicts_as_safe(clip) -> None:
    safe = create_method("safe", {"steps": 3})
    safe_a = create_method("safe_a", {"steps": 3, "tip_alpha": 0.0, "tip_epochs": 1})
    s, y = _setup(clip, safe)
    q, _ = _setup(clip, safe, 2, seed=3)
    a = safe.fit(s, y, _ctx(clip, seed=1)).logits(q)
    b = safe_a.fit(s, y, _ctx(clip, seed=1)).logits(q)
    assert torch.allclose(a, b, atol=1e-4)


def test_blend_off_in_training_still_blends_at_inference(clip) -> None:
    m = create_method("safe", {"steps": 2, "blend_in_training": False, "beta": 0.5})
    s, y = _setup(clip, m)
    fitted = m.fit(s, y, _ctx(clip))
    tail = fitted.tail
    with torch.no_grad():
        expected = 0.5 * tail._pool(tail.original, s) + tail._pool(tail.backbone, s)
        assert torch.allclose(tail(s), expected, atol=1e-5)


def test_refuses_backbones_without_text_or_pool() -> None:
    vit = focusshot.create_backbone("tiny-vit", seed=0)
    with pytest.raises(ValueError, match="CLIP"):
        create_method("safe").prefix(vit)
    with pytest.raises(ValueError, match="beta"):
        create_method("safe", {"beta": -1})


def test_wise_zero_is_the_original_and_half_is_the_midpoint(clip) -> None:
    s, y = _setup(clip, create_method("safe"))
    base = {"steps": 3, "lr": 1e-2}
    full = create_method("safe", base).fit(s, y, _ctx(clip, seed=0))
    half = create_method("safe", {**base, "wise": 0.5}).fit(s, y, _ctx(clip, seed=0))
    zero = create_method("safe", {**base, "wise": 0.0}).fit(s, y, _ctx(clip, seed=0))
    untrained = create_method("safe", {"steps": 0}).fit(s, y, _ctx(clip))
    assert torch.allclose(zero.logits(s), untrained.logits(s), atol=1e-4)
    orig = dict(full.tail.original.named_parameters())
    for (name, p), (_, h) in zip(
        full.tail.backbone.named_parameters(), half.tail.backbone.named_parameters(), strict=True
    ):
        if p.requires_grad:
            assert torch.allclose(h, (p + orig[name]) / 2, atol=1e-6), name
