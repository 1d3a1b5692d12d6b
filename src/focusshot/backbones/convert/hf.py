"""Converters from Hugging Face ``transformers`` checkpoints (CLIP, ViT/DINO/DeiT, DINOv2).

Each converter takes the parsed ``config.json`` and the checkpoint's tensors, builds our module
with the hyper-parameters the config states, renames keys and loads strictly. Both the key
layout written by ``save_pretrained`` (``encoder.layer.i.attention.attention.query``) and the
renamed layout of recent ``transformers`` in memory (``layers.i.attention.q_proj``) are read.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from focusshot.backbones.base import CLIP_PREPROCESS, IMAGENET_PREPROCESS, Preprocess
from focusshot.backbones.clip import CLIP, TextConfig, TextTransformer
from focusshot.backbones.convert.common import Rules, load_checked, rename, strip_prefixes
from focusshot.backbones.vit import VisionTransformer, ViTConfig

# HF ViT / DeiT / DINO / DINOv2 block layout -> ours.
_VIT_BLOCK: Rules = [
    (r"^encoder\.layers?\.(\d+)\.", r"blocks.\1."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.attention\.query\.", ".attn.q."),
    (r"\.attention\.attention\.key\.", ".attn.k."),
    (r"\.attention\.attention\.value\.", ".attn.v."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.layer_scale1\.lambda1$", ".ls1.gamma"),
    (r"\.layer_scale2\.lambda1$", ".ls2.gamma"),
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed."),
    (r"^layernorm\.", "norm."),
]

# HF CLIP encoder layout -> ours (both towers).
_CLIP_BLOCK: Rules = [
    (r"^encoder\.layers\.(\d+)\.", r"blocks.\1."),
    (r"\.self_attn\.q_proj\.", ".attn.q."),
    (r"\.self_attn\.k_proj\.", ".attn.k."),
    (r"\.self_attn\.v_proj\.", ".attn.v."),
    (r"\.self_attn\.out_proj\.", ".attn.proj."),
    (r"\.layer_norm1\.", ".norm1."),
    (r"\.layer_norm2\.", ".norm2."),
]

_CLIP_VISION: Rules = [
    *_CLIP_BLOCK,
    (r"^embeddings\.patch_embedding\.", "patch_embed."),
    (r"^pre_layrnorm\.", "norm_pre."),
    (r"^post_layernorm\.", "norm."),
]

_CLIP_TEXT: Rules = [
    *_CLIP_BLOCK,
    (r"^embeddings\.token_embedding\.", "token_embedding."),
    (r"^final_layer_norm\.", "norm."),
]

_DROP = re.compile(r"(^|\.)(pooler\.|position_ids$|mask_token$|classifier\.)")


def _need(config: dict[str, Any], key: str, what: str) -> Any:
    if key not in config:
        raise ValueError(f"{what}: config.json has no {key!r}")
    return config[key]


def _vit_from_hf(
    config: dict[str, Any], layer_scale: bool, pre_norm: bool, proj_dim: int | None
) -> ViTConfig:
    width = int(_need(config, "hidden_size", "vit"))
    mlp = config.get("intermediate_size") or int(width * float(config.get("mlp_ratio", 4)))
    act = config.get("hidden_act", "gelu")
    act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}.get(
        act, act
    )
    return ViTConfig(
        image_size=int(_need(config, "image_size", "vit")),
        patch_size=int(_need(config, "patch_size", "vit")),
        width=width,
        depth=int(_need(config, "num_hidden_layers", "vit")),
        num_heads=int(_need(config, "num_attention_heads", "vit")),
        mlp_dim=int(mlp),
        qkv_bias=bool(config.get("qkv_bias", True)),
        patch_bias=not pre_norm,
        pre_norm=pre_norm,
        act=act,
        eps=float(config.get("layer_norm_eps", 1e-12 if not layer_scale else 1e-6)),
        layer_scale=float(config.get("layerscale_value", 1.0)) if layer_scale else None,
        num_registers=int(config.get("num_register_tokens", 0)),
        proj_dim=proj_dim,
        in_chans=int(config.get("num_channels", 3)),
        # DINOv2 with registers resizes position embeddings with antialiasing (Darcet et al., 2024)
        pos_antialias=config.get("model_type") == "dinov2_with_registers",
    )


def convert_hf_vit(config: dict[str, Any], state_dict: dict[str, Tensor]) -> VisionTransformer:
    """HF ``vit`` / ``deit`` (DINO, DeiT, ViT) or ``dinov2`` / ``dinov2_with_registers`` -> ViT."""
    model_type = config.get("model_type", "vit")
    if config.get("use_swiglu_ffn"):
        raise ValueError("DINOv2 with a SwiGLU MLP (ViT-g) is not supported yet")
    is_v2 = model_type.startswith("dinov2")
    cfg = _vit_from_hf(config, layer_scale=is_v2, pre_norm=False, proj_dim=None)
    sd = strip_prefixes(state_dict, ("vit.", "dinov2.", "deit.", "model."))
    sd = {k: v for k, v in rename(sd, _VIT_BLOCK).items() if not _DROP.search(k)}
    if "cls_token" not in sd:
        raise ValueError(f"{model_type} checkpoint has no [CLS] token; only class-token ViTs are supported")
    if "pos_embed" in sd and sd["pos_embed"].shape[1] != (cfg.image_size // cfg.patch_size) ** 2 + 1:
        side = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
        cfg.image_size = side * cfg.patch_size
    model = VisionTransformer(cfg, preprocess=IMAGENET_PREPROCESS)
    load_checked(model, sd, f"Hugging Face {model_type} checkpoint")
    return model


def _text_from_hf(tc: dict[str, Any], proj_dim: int) -> TextConfig:
    eos = int(tc.get("eos_token_id", 49407))
    vocab = int(_need(tc, "vocab_size", "clip text"))
    act = tc.get("hidden_act", "quick_gelu")
    return TextConfig(
        vocab_size=vocab,
        context_length=int(tc.get("max_position_embeddings", 77)),
        width=int(_need(tc, "hidden_size", "clip text")),
        depth=int(_need(tc, "num_hidden_layers", "clip text")),
        num_heads=int(_need(tc, "num_attention_heads", "clip text")),
        mlp_dim=int(_need(tc, "intermediate_size", "clip text")),
        proj_dim=proj_dim,
        act="gelu" if act == "gelu" else "quick_gelu",
        eps=float(tc.get("layer_norm_eps", 1e-5)),
        # Legacy configs say eos 2 and pool at the largest id, which is the end-of-text token.
        eot_token_id=vocab - 1 if eos == 2 else eos,
    )


def _clip_vision(vc: dict[str, Any], sd: dict[str, Tensor], proj_dim: int | None) -> VisionTransformer:
    cfg = _vit_from_hf(vc, layer_scale=False, pre_norm=True, proj_dim=proj_dim)
    cfg.eps = float(vc.get("layer_norm_eps", 1e-5))
    ours = rename(sd, _CLIP_VISION)
    if "embeddings.class_embedding" in ours:
        ours["cls_token"] = ours.pop("embeddings.class_embedding").reshape(1, 1, -1)
    if "embeddings.position_embedding.weight" in ours:
        ours["pos_embed"] = ours.pop("embeddings.position_embedding.weight").unsqueeze(0)
    model = VisionTransformer(cfg, preprocess=_clip_preprocess(cfg.image_size))
    load_checked(
        model, {k: v for k, v in ours.items() if not _DROP.search(k)}, "Hugging Face CLIP vision tower"
    )
    return model


def _clip_preprocess(size: int) -> Preprocess:
    return Preprocess(size, size, CLIP_PREPROCESS.mean, CLIP_PREPROCESS.std, "bicubic")


def _split(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def convert_hf_clip(
    config: dict[str, Any], state_dict: dict[str, Tensor], tokenizer=None
) -> CLIP | VisionTransformer:
    """HF ``clip`` (both towers) -> :class:`CLIP`; ``clip_vision_model`` -> a CLIP-style ViT."""
    model_type = config.get("model_type", "clip")
    sd = strip_prefixes(state_dict, ("model.",))
    if model_type == "clip_vision_model":
        proj = sd.pop("visual_projection.weight", None)
        vsd = _split(sd, "vision_model.") or sd
        if proj is not None:
            vsd["proj.weight"] = proj
        return _clip_vision(config, vsd, proj.shape[0] if proj is not None else None)
    if model_type != "clip":
        raise ValueError(f"convert_hf_clip cannot read model_type {model_type!r}")
    proj_dim = int(config.get("projection_dim", 512))
    vc, tc = _need(config, "vision_config", "clip"), _need(config, "text_config", "clip")
    vsd = _split(sd, "vision_model.")
    if "visual_projection.weight" in sd:
        vsd["proj.weight"] = sd["visual_projection.weight"]
    vision = _clip_vision(vc, vsd, proj_dim)
    text = TextTransformer(_text_from_hf(tc, proj_dim))
    tsd = rename(_split(sd, "text_model."), _CLIP_TEXT)
    if "text_projection.weight" in sd:
        tsd["proj.weight"] = sd["text_projection.weight"]
    if "embeddings.position_embedding.weight" in tsd:
        tsd["pos_embed"] = tsd.pop("embeddings.position_embedding.weight")
    load_checked(text, {k: v for k, v in tsd.items() if not _DROP.search(k)}, "Hugging Face CLIP text tower")
    scale = (
        float(sd["logit_scale"])
        if "logit_scale" in sd
        else float(config.get("logit_scale_init_value", 2.6592))
    )
    return CLIP(vision, text, tokenizer=tokenizer, logit_scale=scale)
