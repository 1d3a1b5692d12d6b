"""VPT (Jia et al., ECCV 2022): shapes, gradients, shallow vs deep, bias padding, prompt placement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from focusshot.adapters import (
    AdapterError,
    LoRAConfig,
    PromptedBlock,
    VPTConfig,
    freeze,
    inject_lora,
    inject_vpt,
    pad_bias,
    unfreeze,
    vpt_prompts,
)
from focusshot.attention.record import record
from focusshot.backbones.vit import Block
from tests.adapters.conftest import images, max_diff, tiny


@pytest.mark.parametrize(
    "kwargs",
    [{"num_tokens": 0}, {"num_tokens": 2.0}, {"dropout": 1.0}, {"init": "xavier"}],
)
def test_bad_config_values_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="VPTConfig"):
        VPTConfig(**kwargs)


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-dinov2", "tiny-clip-vit"])
def test_output_shapes_are_unchanged(name: str, deep: bool) -> None:
    x = images()
    model = tiny(name)
    with torch.no_grad():
        tokens, feats = model.forward_tokens(x), model.forward_features(x)
        names = inject_vpt(model, VPTConfig(num_tokens=3, deep=deep))
        new_tokens, new_feats = model.forward_tokens(x), model.forward_features(x)
    prefix = "visual." if name == "tiny-clip-vit" else ""
    assert names == [f"{prefix}blocks.0", f"{prefix}blocks.1"]
    assert new_tokens.shape == tokens.shape and new_feats.shape == feats.shape
    assert max_diff(new_feats, feats) > 1e-4  # prompts are attended to: VPT is no identity at init
    assert len(vpt_prompts(model)) == (2 if deep else 1)


def test_gradients_reach_only_the_prompts() -> None:
    model = tiny("tiny-dinov2")
    freeze(model)
    inject_vpt(model, VPTConfig(num_tokens=4, deep=True))
    model.train()
    model.forward_features(images()).pow(2).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"blocks.0.prompts", "blocks.1.prompts"}
    assert all(float(p.grad.abs().sum()) > 0 for p in vpt_prompts(model))


def test_shallow_and_deep_differ_and_deep_replaces_prompts() -> None:
    x = images()
    shallow, deep = tiny("tiny-vit"), tiny("tiny-vit")
    inject_vpt(shallow, VPTConfig(num_tokens=2), generator=torch.Generator().manual_seed(0))
    inject_vpt(deep, VPTConfig(num_tokens=2, deep=True), generator=torch.Generator().manual_seed(0))
    assert torch.equal(vpt_prompts(shallow)[0], vpt_prompts(deep)[0])  # same first prompts
    b0, b1 = shallow.blocks
    assert (b0.insert, b0.carried, b0.strip, b1.insert, b1.carried, b1.strip) == (
        True, False, False, False, True, True,
    )  # fmt: skip
    with torch.no_grad():
        assert max_diff(shallow.forward_features(x), deep.forward_features(x)) > 1e-4
        # deep: block 1 ignores the prompt outputs of block 0, so they may be anything
        tokens = deep.embed(x)
        mid = deep.blocks[0](tokens)
        assert mid.shape[1] == tokens.shape[1] + 2
        noisy = torch.cat([mid[:, :-2], torch.randn_like(mid[:, -2:])], dim=1)
        assert torch.equal(deep.blocks[1](noisy), deep.blocks[1](mid))


def _reference_after_cls(blocks: list[Block], tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """The paper's layout: ``[CLS, prompts, rest]`` through the plain blocks, prompts removed at the end."""
    p = prompts.shape[0]
    x = torch.cat([tokens[:, :1], prompts.expand(tokens.shape[0], -1, -1), tokens[:, 1:]], dim=1)
    for blk in blocks:
        x = blk(x)
    return torch.cat([x[:, :1], x[:, 1 + p :]], dim=1)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-dinov2"])
def test_prompts_at_the_end_equal_prompts_after_cls(name: str) -> None:
    x = images()
    model = tiny(name)
    plain_blocks = list(model.blocks)
    inject_vpt(model, VPTConfig(num_tokens=3))
    (prompts,) = vpt_prompts(model)
    with torch.no_grad():
        ref_tokens = _reference_after_cls(plain_blocks, model.embed(x), prompts)
        assert max_diff(model.forward_tokens(x), ref_tokens) <= 1e-5
        # one block, prompt outputs kept: the same tokens, only permuted
        block = PromptedBlock(plain_blocks[0], 3, prompts)
        tokens = model.embed(x)
        ours = block(tokens)
        ref = plain_blocks[0](torch.cat([tokens[:, :1], prompts.expand(2, -1, -1), tokens[:, 1:]], dim=1))
        assert max_diff(ours, torch.cat([ref[:, :1], ref[:, 4:], ref[:, 1:4]], dim=1)) <= 1e-5


def test_pad_bias_float_and_bool() -> None:
    bias = torch.randn(2, 1, 5, 5)
    padded = pad_bias(bias, 5, 3)
    assert padded.shape == (2, 1, 8, 8)
    assert torch.equal(padded[..., :5, :5], bias) and float(padded[..., 5:].abs().sum()) == 0.0
    assert float(padded[..., 5:, :].abs().sum()) == 0.0
    mask = torch.rand(2, 1, 1, 5) > 0.5
    padded_mask = pad_bias(mask, 5, 3)
    assert padded_mask.shape == (2, 1, 1, 8) and bool(padded_mask[..., 5:].all())
    assert pad_bias(bias, 6, 3) is bias  # made for another length: left alone
    assert pad_bias(None, 5, 3) is None


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_a_bias_for_the_plain_tokens_is_padded(deep: bool) -> None:
    x = images()
    model = tiny("tiny-vit")
    inject_vpt(model, VPTConfig(num_tokens=2, deep=deep))
    n = 17
    with torch.no_grad():
        plain = model.forward_features(x)
        zeros = model.forward_features(x, attn_bias=torch.zeros(1, 1, n, n))
        all_true = model.forward_features(x, attn_bias=torch.ones(1, 1, 1, n, dtype=torch.bool))
        assert max_diff(zeros, plain) <= 1e-6 and max_diff(all_true, plain) <= 1e-6
        # forbid [CLS] from looking at patch 3: a bias of N columns must reach the right column
        bias = torch.zeros(1, 1, n, n)
        bias[..., 0, 4] = float("-inf")
        with record(model, "probs", layers=[-1]) as rec:
            biased = model.forward_features(x, attn_bias=bias)
    probs = rec.get("probs")
    assert probs.shape == (2, 4, n + 2, n + 2)  # prompts are the last two columns
    assert float(probs[:, :, 0, 4].abs().max()) == 0.0
    assert float(probs[:, :, 0, n:].min()) > 0.0
    assert max_diff(biased, plain) > 1e-5


def test_start_later_block_reads_a_cached_prefix() -> None:
    x = images()
    model = tiny("tiny-vit")
    with torch.no_grad():
        prefix = model.forward_blocks(model.embed(x), stop=1)  # tokens entering block 1
        names = inject_vpt(model, VPTConfig(num_tokens=2), start=-1)
        assert names == ["blocks.1"] and model.blocks[1].insert and model.blocks[1].strip
        assert isinstance(model.blocks[0], Block)
        full = model.forward_tokens(x)
        assert max_diff(model.forward_blocks(prefix, start=1), full) <= 1e-6
    with pytest.raises(ValueError, match="start=2 out of range"):
        inject_vpt(tiny("tiny-vit"), start=2)


def test_init_uniform_bound_zeros_and_determinism() -> None:
    model = tiny("tiny-vit")
    inject_vpt(model, VPTConfig(num_tokens=50, deep=True), generator=torch.Generator().manual_seed(3))
    bound = math.sqrt(6 / (3 * 8 * 8 + 32))
    values = torch.cat([p.detach() for p in vpt_prompts(model)])
    assert values.shape == (100, 32)
    assert float(values.abs().max()) <= bound and float(values.abs().max()) > 0.9 * bound
    again = tiny("tiny-vit")
    torch.manual_seed(99)
    inject_vpt(again, VPTConfig(num_tokens=50, deep=True), generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(vpt_prompts(model), vpt_prompts(again), strict=True))
    zeros = tiny("tiny-vit")
    inject_vpt(zeros, VPTConfig(num_tokens=2, init="zeros"))
    assert float(vpt_prompts(zeros)[0].detach().abs().sum()) == 0.0


def test_clip_prompts_go_to_the_image_tower_only() -> None:
    clip = tiny("tiny-clip-vit")
    with torch.no_grad():
        text = clip.encode_text(["a red circle"])
        inject_vpt(clip, VPTConfig(num_tokens=2))
        assert torch.equal(clip.encode_text(["a red circle"]), text)
    assert all(isinstance(b, PromptedBlock) for b in clip.visual.blocks)
    assert all(isinstance(b, Block) for b in clip.text.blocks)
    assert len(clip.attention_modules()) == 2  # the recorder still finds the attention


@pytest.mark.parametrize("name", ["tiny-efficientnet", "tiny-swin"])
def test_vpt_needs_a_vit(name: str) -> None:
    model = tiny(name)
    with pytest.raises(AdapterError, match="VPT needs a ViT") as err:
        inject_vpt(model)
    assert f"({name})" in str(err.value)


def test_injecting_twice_is_refused() -> None:
    model = tiny("tiny-vit")
    inject_vpt(model)
    with pytest.raises(AdapterError, match="already has VPT"):
        inject_vpt(model)


def test_prompt_dropout_only_in_training() -> None:
    model = tiny("tiny-vit")
    inject_vpt(model, VPTConfig(num_tokens=4, dropout=0.5))
    x = images()
    with torch.no_grad():
        eval_a, eval_b = model.forward_features(x), model.forward_features(x)
        model.train()
        train = model.forward_features(x)
    assert torch.equal(eval_a, eval_b) and max_diff(train, eval_a) > 1e-5
    with pytest.raises(ValueError, match="shape"):
        PromptedBlock(model.blocks[0].block, 3, nn.Parameter(torch.zeros(2, 32)))


def test_vpt_composes_with_lora_and_last_block_unfreezing() -> None:
    model = tiny("tiny-vit")
    freeze(model)
    inject_vpt(model, VPTConfig(num_tokens=2))
    lora = inject_lora(model, LoRAConfig(rank=2))
    assert lora == [f"blocks.{i}.block.attn.{p}" for i in range(2) for p in ("q", "v")]
    unfreeze(model, ["norm"])
    model.forward_features(images()).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == {"blocks.0.prompts", "norm.weight", "norm.bias"} | {
        f"{n}.lora_{m}" for n in lora for m in "AB"
    }
