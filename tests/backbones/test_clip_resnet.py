"""CLIP's ModifiedResNet: the attention pool against torch's multi-head attention, and the contract."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from focusshot.attention import record
from focusshot.backbones.base import CLIP_PREPROCESS
from focusshot.backbones.clip import CLIP, TextConfig, TextTransformer
from focusshot.backbones.clip_resnet import ModifiedResNet, ResNetConfig

TINY = ResNetConfig(layers=(1, 1, 1, 1), width=8, output_dim=16, heads=2, image_size=64)


def randomise_batch_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 1.0 + 0.2 * torch.randn(n, generator=gen)
            m.bias.data = 0.1 * torch.randn(n, generator=gen)
            m.running_mean = 0.1 * torch.randn(n, generator=gen)
            m.running_var = 0.5 + torch.rand(n, generator=gen)


@pytest.fixture(scope="module")
def model() -> ModifiedResNet:
    torch.manual_seed(0)
    net = ModifiedResNet(TINY)
    randomise_batch_norms(net, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in net.attnpool.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def clip_pool_reference(net: ModifiedResNet, fmap: Tensor) -> Tensor:
    """CLIP's AttentionPool2d written independently: the mean token is the only query."""
    pool, attn = net.attnpool, net.attnpool.attn
    x = fmap.flatten(2).permute(2, 0, 1)  # (HW, B, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x = x + pool.pos_embed[0][:, None, :]
    out, _ = F.multi_head_attention_forward(
        query=x[:1],
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=attn.num_heads,
        in_proj_weight=None,
        in_proj_bias=torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=attn.proj.weight,
        out_proj_bias=attn.proj.bias,
        use_separate_proj_weight=True,
        q_proj_weight=attn.q.weight,
        k_proj_weight=attn.k.weight,
        v_proj_weight=attn.v.weight,
        training=False,
        need_weights=False,
    )
    return out[0]


def test_contract(model: ModifiedResNet, images: Tensor) -> None:
    assert model.num_features == 16
    assert model.num_prefix_tokens == 1
    assert model.patch_size == 32
    assert model.grid_size(64) == (2, 2)
    assert model.preprocess == dataclasses.replace(CLIP_PREPROCESS, resize=64, crop=64)
    default_size = dataclasses.replace(TINY, image_size=224)
    assert ModifiedResNet(default_size).preprocess == CLIP_PREPROCESS
    caps = model.capabilities
    assert caps.attention and caps.global_cls and caps.tokens and not caps.text
    assert model.attention_modules() == [model.attnpool.attn]
    with torch.no_grad():
        tokens = model.forward_tokens(images)
        assert tokens.shape == (3, 1 + 4, 8 * 32)
        feats = model.forward_features(images)
        assert feats.shape == (3, 16)
        torch.testing.assert_close(model.forward_head(tokens), feats, rtol=0, atol=0)
        torch.testing.assert_close(model(images), feats, rtol=0, atol=0)
        maps = model.forward_intermediates(images, [0, 1, -2, -1])
    assert [tuple(m.shape) for m in maps] == [(3, 32, 16, 16), (3, 64, 8, 8), (3, 128, 4, 4), (3, 256, 2, 2)]
    torch.testing.assert_close(maps[-1], model.forward_map(images))


def test_pool_matches_clip_query_only_attention(model: ModifiedResNet, images: Tensor) -> None:
    with torch.no_grad():
        ours = model.forward_features(images)
        ref = clip_pool_reference(model, model.forward_map(images))
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("bias_kind", ["none", "float", "bool"])
def test_fast_path_equals_recording_path(model: ModifiedResNet, images: Tensor, bias_kind: str) -> None:
    gen = torch.Generator().manual_seed(3)
    n = 1 + 4
    bias: Tensor | None = None
    if bias_kind == "float":
        bias = torch.randn(3, 2, n, n, generator=gen)
    elif bias_kind == "bool":
        bias = torch.rand(3, 1, n, n, generator=gen) > 0.3
        bias[..., 0] = True  # every row keeps one key
    with torch.no_grad():
        fast = model.forward_features(images, attn_bias=bias)
        with record(model, "probs", "logits", "head_out", "block_in", layers=[-1]) as rec:
            slow = model.forward_features(images, attn_bias=bias)
    assert (fast - slow).abs().max().item() <= 1e-5
    probs = rec.get("probs")
    assert probs.shape == (3, 2, n, n)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, n))
    assert rec.get("head_out").shape == (3, 2, n, 128)
    torch.testing.assert_close(rec.get("block_in"), model.forward_tokens(images))
    if bias is not None:
        unbiased = model.forward_features(images)
        assert (fast - unbiased).abs().max().item() > 1e-4


def test_only_the_mean_token_row_of_a_bias_matters(model: ModifiedResNet, images: Tensor) -> None:
    bias = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(4))
    bias[..., 0, :] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images, bias), model.forward_features(images))
        # A per-layer list has a single entry: the pool.
        row0 = torch.zeros(1, 2, 5, 5)
        row0[..., 0, 1] = -1e4
        torch.testing.assert_close(
            model.forward_features(images, [row0]), model.forward_features(images, row0)
        )


def test_bias_to_forward_tokens_is_refused(model: ModifiedResNet, images: Tensor) -> None:
    with pytest.raises(ValueError, match="forward_features"):
        model.forward_tokens(images, attn_bias=torch.zeros(1, 2, 5, 5))


def test_grid_interpolation(model: ModifiedResNet) -> None:
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        feats = model.forward_features(x)
        fmap = model.forward_map(x)
    assert tokens.shape == (2, 1 + 3 * 2, 256)
    assert feats.shape == (2, 16) and torch.isfinite(feats).all()
    # The resized table carries the trained mean-token position and a bicubic resize of the rest.
    pos = model.attnpool.pos_embed
    grid = pos[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(grid, size=(3, 2), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    expected = fmap.flatten(2).transpose(1, 2)
    expected = torch.cat([expected.mean(1, keepdim=True), expected], 1) + torch.cat([pos[:, :1], spatial], 1)
    torch.testing.assert_close(tokens, expected)


def test_record_through_clip_wrapper(model: ModifiedResNet, images: Tensor) -> None:
    text = TextTransformer(
        TextConfig(vocab_size=50, context_length=8, width=32, depth=1, num_heads=2, mlp_dim=64)
    )
    clip = CLIP(model, text).eval()
    assert clip.capabilities.text and clip.capabilities.global_cls
    with torch.no_grad(), record(clip, "probs", layers=[-1]) as rec:
        feats = clip.encode_image(images)
    assert rec.get("probs").shape == (3, 2, 5, 5)
    torch.testing.assert_close(feats, model.forward_features(images))


def test_grad_flows_to_the_pool_only_when_asked(model: ModifiedResNet, images: Tensor) -> None:
    net = ModifiedResNet(TINY)
    net.load_state_dict(model.state_dict())
    net.eval()
    with torch.no_grad():
        tokens = net.forward_tokens(images)
    net.pool(tokens).sum().backward()
    assert net.attnpool.attn.q.weight.grad is not None
    assert net.conv1.weight.grad is None
