"""The fine-tuning baselines on a tiny CLIP: frozen weights untouched, prefix training equals full
training, adapters start as the identity, fits save and load, errors name what is missing."""

import pytest
import torch

import focusshot
from focusshot.adapters.base import AdapterError
from focusshot.backbones.prefix import Prefix, compute_prefix
from focusshot.methods.base import FitContext, create_method, fitted_from_state
from focusshot.methods.finetune import Tail
from tests.methods.helpers import random_support

TUNERS = ("ft", "last_block", "lora", "ssf", "vpt")
FAST = {"epochs": 2}


@pytest.fixture(scope="module")
def clip():
    return focusshot.create_backbone("tiny-clip-vit", seed=0).eval()


_support = random_support


def _prefix(clip, method, images):
    p = method.prefix(clip).resolve(clip)
    with torch.no_grad():
        return compute_prefix(clip, p, images)


@pytest.mark.parametrize("name", TUNERS)
def test_frozen_backbone_is_bit_identical_after_training(clip, name) -> None:
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    flags = {k: p.requires_grad for k, p in clip.named_parameters()}
    m = create_method(name, FAST)
    x, y = _support(clip)
    fitted = m.fit(_prefix(clip, m, x), y, FitContext(clip, 3, seed=0))
    after = clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {k: p.requires_grad for k, p in clip.named_parameters()}
    info = fitted.info()
    assert info["train"]["steps"] == 2 * 2 and not info["diverged"]  # 2 epochs x (6 images / batch 3)
    assert info["trained_params"] > 0
    # the tuned parameters moved away from their start
    state = fitted.state_dict()
    assert any(k.startswith("tail.") for k in state)


@pytest.mark.parametrize("name", TUNERS)
def test_fit_save_load_gives_the_same_logits(clip, name) -> None:
    m = create_method(name, FAST)
    x, y = _support(clip)
    q = _prefix(clip, m, _support(clip, 1, 3, seed=5)[0])
    fitted = m.fit(_prefix(clip, m, x), y, FitContext(clip, 3, seed=3))
    again = fitted_from_state(fitted.state_dict(), fitted.config(), clip)
    assert torch.allclose(again.logits(q), fitted.logits(q), atol=1e-6)
    # same seed, same numbers
    twice = m.fit(_prefix(clip, m, x), y, FitContext(clip, 3, seed=3))
    assert torch.equal(twice.logits(q), fitted.logits(q))


@pytest.mark.parametrize("name,opts", [("lora", {}), ("ssf", {"init_std": 0.0})])
def test_untrained_adapters_leave_features_unchanged(clip, name, opts) -> None:
    m = create_method(name, opts)
    tail, params = m.build(clip, torch.Generator().manual_seed(0))
    assert params and all(p.requires_grad for p in params)
    x, _ = _support(clip)
    with torch.enable_grad():  # both sides on the separate q/k/v path
        ref = clip.forward_features(x)
        got = tail(x)
    assert torch.equal(got, ref)


def test_training_from_the_cached_prefix_gives_the_gradients_of_the_full_model(clip) -> None:
    m = create_method("last_block")
    tail, params = m.build(clip, torch.Generator().manual_seed(0))
    assert tail.start == clip.token_blocks() - 1
    x, y = _support(clip)
    tokens = _prefix(clip, m, x)  # entering the last block, computed once without gradients
    w = torch.randn(3, clip.num_features, generator=torch.Generator().manual_seed(1))

    def grads(inp, t):
        loss = torch.nn.functional.cross_entropy(t(inp) @ w.T, y)
        return torch.autograd.grad(loss, params)

    from_prefix = grads(tokens, tail)
    full = grads(x, Tail(tail.backbone, None))  # the whole tower, the same trainable parameters
    assert len(from_prefix) == len(full) > 0
    for a, b in zip(from_prefix, full, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert any(float(a.abs().max()) > 0 for a in from_prefix)


def test_prefixes_declared_per_depth(clip) -> None:
    depth = clip.token_blocks()
    assert create_method("lora").prefix(clip) == Prefix.images()
    assert create_method("lora", blocks=1).prefix(clip) == Prefix.tokens(depth - 1)
    assert create_method("last_block").prefix(clip) == Prefix.tokens(depth - 1)
    assert create_method("ft", blocks=depth + 3).prefix(clip) == Prefix.images()


def test_adapters_on_a_cnn_fail_naming_the_backbone() -> None:
    cnn = focusshot.create_backbone("tiny-efficientnet")
    with pytest.raises(AdapterError, match="tiny-efficientnet|EfficientNet"):
        create_method("lora").build(cnn, torch.Generator())
    with pytest.raises(ValueError, match="no ViT token path|does not have"):
        create_method("last_block").prefix(cnn)
    # full fine-tuning of a CNN from its images works
    x = torch.randn(4, 3, cnn.preprocess.crop, cnn.preprocess.crop)
    fitted = create_method("ft", {"epochs": 1}).fit(x, torch.tensor([0, 1, 0, 1]), FitContext(cnn, 2))
    assert fitted.logits(x).shape == (4, 2)


def test_targets_matching_nothing_name_the_layer_kinds(clip) -> None:
    # SSF wraps two kinds of layer: the message names both (it once raised AttributeError)
    with pytest.raises(AdapterError, match=r"no Linear/LayerNorm modules matching \['nothing\.\*'\]"):
        create_method("ssf", targets=("nothing.*",)).build(clip, torch.Generator())
    with pytest.raises(AdapterError, match=r"no Linear modules matching"):
        create_method("lora", targets=("nothing.*",)).build(clip, torch.Generator())


def test_divergence_is_reported_not_dropped(clip) -> None:
    m = create_method("lora", {"epochs": 2, "lr": 1e30, "optimizer": "sgd"})
    x, y = _support(clip)
    fitted = m.fit(_prefix(clip, m, x), y, FitContext(clip, 3))
    info = fitted.info()
    assert info["diverged"] and info["train"]["diverged_at"] is not None
    assert info["train"]["steps"] == info["train"]["diverged_at"] - 1


def test_validation_selects_the_step(clip) -> None:
    m = create_method("lora", {"epochs": 3})
    x, y = _support(clip)
    xv, yv = _support(clip, 1, 3, seed=9)
    fitted = m.fit(_prefix(clip, m, x), y, FitContext(clip, 3, val=(_prefix(clip, m, xv), yv)))
    info = fitted.info()
    assert info["selected_on"] == "val" and info["train"]["best_step"] is not None


def test_batch_norm_statistics_stay_frozen_so_cnn_fits_reload() -> None:
    rn = focusshot.create_backbone("tiny-clip-rn", seed=0).eval()
    x, y = _support(rn)
    m = create_method("ft", {"epochs": 2, "lr": 1e-2})
    fitted = m.fit(x, y, FitContext(rn, 3, seed=0))
    buffers = dict(rn.named_buffers())
    tuned = dict(fitted.tail.backbone.named_buffers())
    assert all(torch.equal(buffers[k], v) for k, v in tuned.items() if "running" in k)
    again = fitted_from_state(fitted.state_dict(), fitted.config(), rn)
    assert torch.allclose(again.logits(x), fitted.logits(x), atol=1e-5)
