"""The OpenAI CLIP converter: a tiny transformers CLIP in OpenAI's key layout, and ResNet round trips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from focusshot.attention import record
from focusshot.backbones.clip import CLIP, TextConfig, TextTransformer
from focusshot.backbones.clip_resnet import ModifiedResNet, ResNetConfig
from focusshot.backbones.convert.openai_clip import convert_openai_clip, infer_config
from focusshot.backbones.vit import VisionTransformer

transformers = pytest.importorskip("transformers")

VOCAB, CONTEXT, EOT = 99, 16, 98  # OpenAI's end-of-text token is the last vocabulary entry


def openai_blocks(
    get: Callable[[str], Tensor], src: str, dst: str, depth: int, names: dict[str, str]
) -> dict[str, Tensor]:
    """Residual blocks in OpenAI's layout (fused in_proj) out of a model with separate q/k/v.

    ``names`` gives the source module names of q, k, v, out, ln_1, ln_2, c_fc and c_proj.
    """
    out: dict[str, Tensor] = {}
    for i in range(depth):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for kind in ("weight", "bias"):
            out[f"{d}attn.in_proj_{kind}"] = torch.cat([get(f"{s}{names[n]}.{kind}") for n in "qkv"])
            for theirs, openai in (
                ("out", "attn.out_proj"),
                ("ln_1", "ln_1"),
                ("ln_2", "ln_2"),
                ("c_fc", "mlp.c_fc"),
                ("c_proj", "mlp.c_proj"),
            ):
                out[f"{d}{openai}.{kind}"] = get(f"{s}{names[theirs]}.{kind}")
    return out


HF_BLOCK = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "out": "self_attn.out_proj",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "c_fc": "mlp.fc1",
    "c_proj": "mlp.fc2",
}
OUR_BLOCK = {
    "q": "attn.q",
    "k": "attn.k",
    "v": "attn.v",
    "out": "attn.proj",
    "ln_1": "norm1",
    "ln_2": "norm2",
    "c_fc": "mlp.fc1",
    "c_proj": "mlp.fc2",
}


def hf_to_openai(hf: torch.nn.Module) -> dict[str, Tensor]:
    """A transformers CLIPModel's weights in the key layout of OpenAI's ``clip`` package."""
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    vdepth = hf.config.vision_config.num_hidden_layers
    tdepth = hf.config.text_config.num_hidden_layers
    v, t = "vision_model.", "text_model."
    out = {
        "visual.conv1.weight": sd[f"{v}embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd[f"{v}embeddings.class_embedding"],
        "visual.positional_embedding": sd[f"{v}embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd[f"{v}pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd[f"{v}pre_layrnorm.bias"],
        "visual.ln_post.weight": sd[f"{v}post_layernorm.weight"],
        "visual.ln_post.bias": sd[f"{v}post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
        "token_embedding.weight": sd[f"{t}embeddings.token_embedding.weight"],
        "positional_embedding": sd[f"{t}embeddings.position_embedding.weight"],
        "ln_final.weight": sd[f"{t}final_layer_norm.weight"],
        "ln_final.bias": sd[f"{t}final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"],
    }
    out |= openai_blocks(
        sd.__getitem__, f"{v}encoder.layers.", "visual.transformer.resblocks.", vdepth, HF_BLOCK
    )
    out |= openai_blocks(sd.__getitem__, f"{t}encoder.layers.", "transformer.resblocks.", tdepth, HF_BLOCK)
    return out


@pytest.fixture(scope="module")
def hf_clip() -> torch.nn.Module:
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": VOCAB,
            "max_position_embeddings": CONTEXT,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_act": "quick_gelu",
            "pad_token_id": 0,
            "bos_token_id": EOT - 1,
            "eos_token_id": EOT,  # not 2: HF then pools at the first EOT, as OpenAI's argmax does
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_act": "quick_gelu",
        },
        projection_dim=16,
    )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # HF initialises biases to 0 and norms to 1: make every tensor count
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def converted(hf_clip: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> CLIP:
    path: Path = tmp_path_factory.mktemp("openai") / "clip.safetensors"
    save_file(hf_to_openai(hf_clip), str(path))
    return convert_openai_clip(load_file(str(path)), vision_heads=4, text_heads=4)


def _features(out: object) -> Tensor:
    return out if isinstance(out, Tensor) else out.pooler_output  # transformers 5 returns a ModelOutput


def test_inferred_vit_config(hf_clip: torch.nn.Module) -> None:
    vision, text = infer_config(hf_to_openai(hf_clip), vision_heads=4, text_heads=4)
    assert (vision.image_size, vision.patch_size, vision.width, vision.depth) == (32, 8, 32, 2)
    assert (vision.num_heads, vision.mlp_dim, vision.proj_dim, vision.act, vision.eps) == (
        4,
        64,
        16,
        "quick_gelu",
        1e-5,
    )
    assert vision.pre_norm and not vision.patch_bias
    assert (text.vocab_size, text.context_length, text.width, text.depth) == (VOCAB, CONTEXT, 32, 2)
    assert (text.num_heads, text.mlp_dim, text.proj_dim, text.eot_token_id) == (4, 64, 16, EOT)


def test_openai_head_rule_needs_override_for_narrow_models(hf_clip: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="vision_heads"):
        convert_openai_clip(hf_to_openai(hf_clip))


def test_vit_image_embeddings_match_transformers(hf_clip: torch.nn.Module, converted: CLIP) -> None:
    assert isinstance(converted.visual, VisionTransformer)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = _features(hf_clip.get_image_features(pixel_values=images))
        ours = converted.encode_image(images)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4, diff


def test_text_embeddings_match_transformers(hf_clip: torch.nn.Module, converted: CLIP) -> None:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, EOT - 1, (4, CONTEXT), generator=gen)
    for row, end in enumerate((3, 7, CONTEXT - 1, 10)):
        ids[row, end] = EOT
        ids[row, end + 1 :] = 0  # OpenAI pads with zeros after the end-of-text token
    with torch.no_grad():
        ref = _features(hf_clip.get_text_features(input_ids=ids))
        ours = converted.encode_text(ids)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4, diff
    torch.testing.assert_close(converted.logit_scale.detach(), hf_clip.logit_scale.detach())


def test_last_layer_attention_matches_transformers(hf_clip: torch.nn.Module, converted: CLIP) -> None:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf_clip.vision_model(pixel_values=images, output_attentions=True).attentions[-1]
        with record(converted, "probs", layers=[-1]) as rec:
            converted.encode_image(images)
    probs = rec.get("probs")
    assert probs.shape == ref.shape == (2, 4, 17, 17)
    diff = (probs - ref).abs().max().item()
    assert diff <= 1e-4, diff


# --- ModifiedResNet round trip -------------------------------------------------------------------

RN = ResNetConfig(layers=(1, 2, 1, 1), width=8, output_dim=16, heads=4, image_size=64)  # heads = 32*8 // 64
RN_TEXT = TextConfig(
    vocab_size=VOCAB,
    context_length=CONTEXT,
    width=128,
    depth=1,
    num_heads=2,
    mlp_dim=512,
    proj_dim=16,
    eot_token_id=EOT,
)


def ours_to_openai_rn(model: CLIP) -> dict[str, Tensor]:
    """A focusshot RN CLIP written out in OpenAI's key layout (by hand, independently of the converter)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    pool_names = {"attn.q.": "q_proj.", "attn.k.": "k_proj.", "attn.v.": "v_proj.", "attn.proj.": "c_proj."}
    for key, value in sd.items():
        if key.startswith("visual.attnpool."):
            rest = key.removeprefix("visual.attnpool.")
            if rest == "pos_embed":
                out["visual.attnpool.positional_embedding"] = value[0]
            else:
                prefix = next(p for p in pool_names if rest.startswith(p))
                out["visual.attnpool." + pool_names[prefix] + rest.removeprefix(prefix)] = value
        elif key.startswith("visual."):
            out[
                key.replace(".downsample.conv.", ".downsample.0.").replace(
                    ".downsample.bn.", ".downsample.1."
                )
            ] = value
    out |= openai_blocks(
        sd.__getitem__, "text.blocks.", "transformer.resblocks.", model.text.cfg.depth, OUR_BLOCK
    )
    out |= {
        "token_embedding.weight": sd["text.token_embedding.weight"],
        "positional_embedding": sd["text.pos_embed"],
        "ln_final.weight": sd["text.norm.weight"],
        "ln_final.bias": sd["text.norm.bias"],
        "text_projection": sd["text.proj.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"],
        # Scalars that OpenAI checkpoints carry and build_model drops.
        "input_resolution": torch.tensor(RN.image_size),
        "context_length": torch.tensor(CONTEXT),
        "vocab_size": torch.tensor(VOCAB),
    }
    return out


@pytest.fixture(scope="module")
def rn_clip() -> CLIP:
    torch.manual_seed(4)
    model = CLIP(ModifiedResNet(RN), TextTransformer(RN_TEXT), logit_scale=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def test_rn_shape_inference_recovers_config(rn_clip: CLIP) -> None:
    vision, text = infer_config(ours_to_openai_rn(rn_clip))
    assert vision == RN
    assert text == RN_TEXT


def test_rn_round_trip(rn_clip: CLIP, tmp_path: Path) -> None:
    path = tmp_path / "rn.safetensors"
    save_file(ours_to_openai_rn(rn_clip), str(path))
    model = convert_openai_clip(load_file(str(path)), tokenizer="tok")
    assert isinstance(model.visual, ModifiedResNet) and model.tokenizer == "tok"
    assert model.preprocess.crop == 64
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ids = torch.randint(1, EOT - 1, (2, CONTEXT), generator=torch.Generator().manual_seed(6))
    ids[:, 5] = EOT
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(images), rn_clip.encode_image(images), rtol=0, atol=1e-6
        )
        torch.testing.assert_close(model.encode_text(ids), rn_clip.encode_text(ids), rtol=0, atol=1e-6)
        with record(model, "probs") as rec:
            model.encode_image(images)
    assert rec.get("probs").shape == (2, 4, 5, 5)
    assert model.logit_scale.item() == pytest.approx(rn_clip.logit_scale.item())


def test_half_precision_checkpoint_without_batch_counters_loads(rn_clip: CLIP) -> None:
    sd = {k: v.half() if v.is_floating_point() else v for k, v in ours_to_openai_rn(rn_clip).items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = convert_openai_clip(sd)
    assert model.visual.conv1.weight.dtype == torch.float32
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        diff = (model.encode_image(images) - rn_clip.encode_image(images)).abs().max().item()
    assert diff < 0.05


# --- mismatches ----------------------------------------------------------------------------------


def test_mismatched_state_dict_names_the_keys(hf_clip: torch.nn.Module) -> None:
    sd = hf_to_openai(hf_clip)
    del sd["visual.transformer.resblocks.1.ln_2.weight"]
    sd["visual.transformer.resblocks.0.attn.extra"] = torch.zeros(3)
    sd["visual.stray"] = torch.zeros(2)
    with pytest.raises(ValueError) as err:
        convert_openai_clip(sd, vision_heads=4, text_heads=4)
    msg = str(err.value)
    assert "missing" in msg and "visual.blocks.1.norm2.weight" in msg
    assert "unexpected" in msg and "visual.stray" in msg and "visual.blocks.0.attn.extra" in msg


def test_wrong_shape_is_named(rn_clip: CLIP) -> None:
    sd = ours_to_openai_rn(rn_clip)
    sd["visual.layer2.1.bn2.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"visual\.layer2\.1\.bn2\.bias"):
        convert_openai_clip(sd)


def test_not_a_clip_state_dict() -> None:
    with pytest.raises(ValueError, match="text_projection"):
        convert_openai_clip({"foo": torch.zeros(1)})


def test_tokenizer_files_beside_a_checkpoint_are_attached(rn_clip: CLIP, tmp_path: Path) -> None:
    import focusshot
    from focusshot.backbones.tokenizer import ClipTokenizer

    save_file(ours_to_openai_rn(rn_clip), str(tmp_path / "rn.safetensors"))
    assert focusshot.create_backbone(str(tmp_path / "rn.safetensors")).tokenizer is None
    tok = ClipTokenizer.train(["a red striped star and a blue circle"], vocab_size=530)
    tok.to_files(tmp_path)
    model = focusshot.create_backbone(str(tmp_path / "rn.safetensors"))
    assert isinstance(model.tokenizer, ClipTokenizer)
    assert model.tokenizer.encode("a red star") == tok.encode("a red star")
