"""Swin Transformer backbone and its converters, proven against a tiny random ``transformers`` Swin.

The reference is saved with ``save_pretrained`` (config.json + model.safetensors), read back from
disk and converted; pooled features, last-stage tokens, per-stage token maps and window attention
probabilities must agree. The sizes exercise shifted windows, window padding, odd patch merging
and pixel padding.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from focusshot.attention import record
from focusshot.backbones.convert.hf_swin import (
    convert_hf_swin,
    convert_original_swin,
    convert_original_swin_inferred,
    infer_original_swin_config,
    swin_config_from_hf,
)
from focusshot.backbones.registry import create_backbone
from focusshot.backbones.swin import SwinConfig, SwinTransformer

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-5
DEPTHS = (2, 2, 2)
# Attention layers (forward order) ending each stage: HF returns one map per stage, its last block's.
STAGE_LAST = [1, 3, 5]
# (64, 64): the training size; maps 16/8/4, stages 0-1 shifted, stage 2 one window, no shift.
# (52, 52): map 13 -> padded to 16, odd merge 13 -> 7, map 7 -> padded to 8 (shifted).
# (50, 50): pixel padding to 52 first. (56, 64): non-square maps 14x16, 7x8, 4x4.
SIZES = [(64, 64), (52, 52), (50, 50), (56, 64)]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny HF Swin saved in its real on-disk format."""
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=32,
        depths=list(DEPTHS),
        num_heads=[2, 4, 8],
        window_size=4,
        attn_implementation="eager",
    )
    model = transformers.SwinModel(cfg).eval()
    with torch.no_grad():  # HF zero-initialises the bias tables and LayerNorms: make every weight matter
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if "relative_position" in name else 0.05))
    out = tmp_path_factory.mktemp("hf_swin")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path):
    return transformers.SwinModel.from_pretrained(hf_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf_files(hf_dir: Path) -> tuple[dict, dict[str, Tensor]]:
    config = json.loads((hf_dir / "config.json").read_text())
    return config, safetensors_torch.load_file(str(hf_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def ours(hf_files: tuple[dict, dict[str, Tensor]]) -> SwinTransformer:
    config, sd = hf_files
    return convert_hf_swin(config, sd)


def images(size: tuple[int, int], seed: int = 1, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def to_original(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our key layout -> Microsoft/iBOT layout, q/k/v fused into qkv, with the buffers they keep."""
    out: dict[str, Tensor] = {}
    rules = [
        (r"^patch_embed\.", "patch_embed.proj."),
        (r"^patch_norm\.", "patch_embed.norm."),
        (r"^pos_embed$", "absolute_pos_embed"),
        (r"^stages\.(\d+)\.", r"layers.\1."),
        (r"\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
    ]
    for key, value in sd.items():
        m = re.match(r"^(.*)\.attn\.([qkv])\.(weight|bias)$", key)
        if m and m.group(2) != "q":
            continue
        if m:
            value = torch.cat([sd[f"{m.group(1)}.attn.{n}.{m.group(3)}"] for n in "qkv"], dim=0)
            key = f"{m.group(1)}.attn.qkv.{m.group(3)}"
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for key in list(out):  # buffers the reference saves and we recompute
        if key.endswith("attn.relative_position_bias_table"):
            block = key[: -len("attn.relative_position_bias_table")]
            out[block + "attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
            out[block + "attn_mask"] = torch.zeros(1, 4, 4)
    return out


def reference_outputs(hf_model, x: Tensor):
    with torch.no_grad():
        return hf_model(
            x,
            output_attentions=True,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
        )


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_transformers(hf_model, ours: SwinTransformer, size: tuple[int, int]) -> None:
    x = images(size)
    ref = reference_outputs(hf_model, x)
    with torch.no_grad():
        pooled = ours.forward_features(x)
        tokens = ours.forward_tokens(x)
        stages = ours.forward_intermediates(x, [0, 1, 2])
        with record(ours, "probs", layers=[-1]) as last:
            ours.forward_features(x)
        with record(ours, "probs", layers=STAGE_LAST) as per_stage:
            ours.forward_features(x)

    diffs = {
        "pooled": max_diff(pooled, ref.pooler_output),
        "tokens": max_diff(ours.norm(tokens), ref.last_hidden_state),
        "probs[-1]": max_diff(last.get("probs", -1), ref.attentions[-1]),
    }
    for i, layer in enumerate(STAGE_LAST):
        diffs[f"probs[{layer}]"] = max_diff(per_stage.get("probs", layer), ref.attentions[i])
    for i, (got, want) in enumerate(zip(stages, ref.reshaped_hidden_states[1:], strict=True)):
        diffs[f"stage{i}"] = max_diff(got, want.flatten(2).transpose(1, 2))
    assert max(diffs.values()) <= TOL, diffs
    assert last.layout == "windowed"


def test_test_sizes_exercise_shift_and_padding(ours: SwinTransformer) -> None:
    """The sizes above run shifted windows, padded windows, and the single-window stage."""
    blocks = [stage.blocks[1] for stage in ours.stages]
    assert blocks[0].window_and_shift(16, 16) == (4, 2)  # shifted at the training size
    assert blocks[1].window_and_shift(7, 7) == (4, 2)  # 52 px: a shifted, padded 7x7 map
    assert blocks[2].window_and_shift(4, 4) == (4, 0)  # map == window: one unshifted window
    assert 13 % 4 and 7 % 4  # 52 px pads in stages 0 and 1


def test_transformers_in_memory_layout(hf_model, ours: SwinTransformer) -> None:
    """The renamed layout of recent ``transformers`` (q_proj, o_proj, mlp.fc1) converts the same."""
    config = json.loads(hf_model.config.to_json_string())
    from_memory = convert_hf_swin(config, hf_model.state_dict())
    x = images((52, 52))
    with torch.no_grad():
        assert torch.equal(from_memory.forward_features(x), ours.forward_features(x))


def test_classification_checkpoint_prefix(hf_files, ours: SwinTransformer) -> None:
    """``SwinForImageClassification`` keys (``swin.`` prefix, ``classifier``) load too."""
    config, sd = hf_files
    wrapped = {f"swin.{k}": v for k, v in sd.items()}
    wrapped["classifier.weight"] = torch.zeros(10, ours.num_features)
    wrapped["classifier.bias"] = torch.zeros(10)
    model = convert_hf_swin(config, wrapped)
    x = images((64, 64))
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), ours.forward_features(x))


# --------------------------------------------------------------------------- original / iBOT layout


def test_original_layout_ibot_checkpoint(hf_files, ours: SwinTransformer) -> None:
    """The same weights in Microsoft/iBOT layout (fused qkv, teacher wrapper) give equal outputs."""
    config, _ = hf_files
    cfg = swin_config_from_hf(config)
    backbone = to_original(ours.state_dict())
    checkpoint = {
        "teacher": {
            **{f"module.backbone.{k}": v for k, v in backbone.items()},
            "module.head.mlp.0.weight": torch.zeros(8, ours.num_features),
            "module.head.last_layer.weight_g": torch.ones(16, 1),
        },
        "epoch": 100,
    }
    assert "layers.0.blocks.1.attn.qkv.weight" in backbone
    model = convert_original_swin(checkpoint, cfg)
    inferred = infer_original_swin_config(checkpoint)
    assert inferred.eps == 1e-6  # a teacher-wrapped backbone is taken for iBOT's
    inferred_model = convert_original_swin_inferred(checkpoint, eps=cfg.eps)
    for field in ("image_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio"):
        assert getattr(inferred, field) == getattr(cfg, field), field
    x = images((52, 52))
    with torch.no_grad():
        want = ours.forward_features(x)
        assert torch.equal(model.forward_features(x), want)
        assert torch.equal(inferred_model.forward_features(x), want)


def test_original_layout_infers_shrunken_window() -> None:
    """A stage smaller than the window has a smaller table (as Microsoft builds it); inference reads it."""
    torch.manual_seed(3)
    cfg = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4
    )
    model = SwinTransformer(cfg).eval()
    assert model.stages[2].blocks[0].relative_position_bias_table.shape == (3 * 3, 4)  # map 2x2 -> window 2
    assert model.stages[1].blocks[1].shift == 0  # map 4x4 == window: no shift
    sd = to_original(model.state_dict())
    inferred = infer_original_swin_config(sd)
    assert (inferred.image_size, inferred.window_size, inferred.eps) == (32, 4, 1e-5)
    loaded = convert_original_swin_inferred(sd)
    x = images((32, 32))
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), model.forward_features(x))


# --------------------------------------------------------------------------- errors


def test_mismatch_lists_keys(hf_files) -> None:
    config, sd = hf_files
    broken = dict(sd)
    del broken["layernorm.weight"]
    broken["encoder.layers.0.blocks.0.bogus.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        convert_hf_swin(config, broken)
    msg = str(err.value)
    assert "missing keys" in msg and "'norm.weight'" in msg
    assert "unexpected keys" in msg and "stages.0.blocks.0.bogus.weight" in msg


def test_original_mismatch_lists_keys(hf_files, ours: SwinTransformer) -> None:
    config, _ = hf_files
    sd = to_original(ours.state_dict())
    del sd["layers.1.blocks.0.attn.qkv.weight"]
    with pytest.raises(ValueError, match=r"missing keys.*stages\.1\.blocks\.0\.attn\.q\.weight"):
        convert_original_swin(sd, swin_config_from_hf(config))
    wrong_window = SwinConfig(**{**swin_config_from_hf(config).__dict__, "window_size": 2})
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_original_swin(to_original(ours.state_dict()), wrong_window)


def test_rejects_other_configs() -> None:
    with pytest.raises(ValueError, match="swin"):
        swin_config_from_hf({"model_type": "swinv2"})
    with pytest.raises(ValueError, match="hidden_act"):
        swin_config_from_hf({"model_type": "swin", "hidden_act": "mish"})


# --------------------------------------------------------------------------- fast path, contract


@pytest.mark.parametrize("size", [(64, 64), (52, 52)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_fast_path_equals_recording_path(ours: SwinTransformer, size: tuple[int, int]) -> None:
    x = images(size, seed=5)
    with torch.no_grad():
        fast = ours.forward_tokens(x)
        with record(ours, "probs", "logits", "head_out", "block_in") as rec:
            slow = ours.forward_tokens(x)
    assert max_diff(fast, slow) <= TOL
    n_windows = 2 * 4 * 4  # batch 2, 16x16 map in 4x4 windows
    assert rec.get("probs", 0).shape == (n_windows, 2, 16, 16)
    assert rec.get("block_in", 0).shape == (2, (size[0] // 4) * (size[1] // 4), 32)


def test_contract(ours: SwinTransformer) -> None:
    assert ours.capabilities.attention and ours.capabilities.tokens and not ours.capabilities.global_cls
    assert ours.num_prefix_tokens == 0
    assert ours.num_features == 128
    assert ours.patch_size == 16
    assert ours.grid_size(64) == (4, 4)
    assert ours.grid_size((50, 64)) == (4, 4)  # 13 -> 7 -> 4 rows after padding
    attns = ours.attention_modules()
    assert len(attns) == sum(DEPTHS)
    assert all(a.tap.layout == "windowed" for a in attns)
    assert attns == [blk.attn for stage in ours.stages for blk in stage.blocks]

    x = images((50, 64), batch=3)
    with torch.no_grad():
        tokens = ours.forward_tokens(x)
        assert tokens.shape == (3, 16, 128)
        assert ours.forward_head(tokens).shape == (3, 128)
        assert ours(x).shape == (3, 128)
        maps = ours.forward_intermediates(x, [0, -1, 1])
    assert [tuple(m.shape) for m in maps] == [(3, 13 * 16, 32), (3, 16, 128), (3, 7 * 8, 64)]
    assert torch.equal(maps[1], tokens)
    with pytest.raises(ValueError, match="out of range"):
        ours.forward_intermediates(x, [3])
    with pytest.raises(ValueError, match="windowed"):
        ours.forward_tokens(x, attn_bias=torch.zeros(1, 1, 16, 16))
    assert ours.forward_tokens(x[:1], attn_bias=[None] * 6).shape == (1, 16, 128)


def test_gradients_reach_bias_tables_and_projections(ours: SwinTransformer) -> None:
    model = SwinTransformer(ours.cfg).eval()  # eval: the HF config carries drop_path_rate=0.1
    model.load_state_dict(ours.state_dict())
    model.forward_features(images((52, 52))).square().sum().backward()
    for stage in model.stages:
        for blk in stage.blocks:
            assert blk.relative_position_bias_table.grad is not None
            assert blk.relative_position_bias_table.grad.abs().sum() > 0
            assert blk.attn.q.weight.grad is not None and blk.attn.v.weight.grad is not None


@pytest.mark.parametrize(
    ("image", "window", "depths"),
    [
        (36, 3, (2, 2, 2)),
        (40, 3, (1, 2, 2)),
        (56, 3, (2, 2, 2)),
        (56, 4, (1, 2, 2)),
        (48, 3, (2, 2, 2)),
        (32, 4, (2, 2, 2)),
        (36, 7, (1, 2, 2)),
        (48, 4, (2, 2, 2)),
    ],
)
def test_hf_swin_table_of_sizes_windows_and_depths(tmp_path, image, window, depths) -> None:
    """Every configuration loads (tables keep the configured window, as Hugging Face's); where
    transformers itself runs, the features are its features. 56 px / window 3 differed by 0.19
    before: stage 2's 7x7 map pads to 4x4 after merging, larger than the window, so it shifts."""
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(
        image_size=image,
        patch_size=4,
        embed_dim=16,
        depths=list(depths),
        num_heads=[2, 2, 4],
        window_size=window,
        attn_implementation="eager",
    )
    ref = transformers.SwinModel(cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if "relative_position" in name else 0.05))
    ref.save_pretrained(tmp_path / "swin")
    ours = create_backbone(str(tmp_path / "swin"))
    x = torch.randn(2, 3, image, image)
    with torch.no_grad():
        got = ours.forward_features(x)
        assert got.shape == (2, 64) and bool(torch.isfinite(got).all())
        try:
            want = ref(pixel_values=x).pooler_output
        except RuntimeError:  # transformers' own bias does not shrink with the window here
            return
    assert float((got - want).abs().max()) < 1e-5
