"""Converter for timm-layout ViT state dicts: timm, original DINO / iBOT and DINOv2 checkpoints.

The DINO (Caron et al., ICCV 2021), iBOT (Zhou et al., ICLR 2022) and DINOv2 (Oquab et al.,
2023) repositories save their ViTs in timm's key layout: ``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2}``,
``norm``. Hyper-parameters are read off the tensor shapes; the head count, which shapes do not
reveal, defaults to ``width // 64`` (true of ViT-Ti/S/B/L/g as released).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from focusshot.backbones.base import Preprocess
from focusshot.backbones.convert.common import load_checked, strip_prefixes
from focusshot.backbones.vit import VisionTransformer, ViTConfig

#: Prefixes found in training checkpoints (DDP, iBOT/DINO teacher-student wrappers).
PREFIXES = ("module.", "backbone.", "encoder.", "model.")
#: The prefix of the teacher's tensors in a flattened DINO training checkpoint.
TEACHER = "teacher."
_DROP = re.compile(r"^(head\.|head_drop|fc_norm|mask_token|dino_head|ibot_head)")


def unwrap_checkpoint(obj: dict) -> dict[str, Tensor]:
    """Return the tensor dict inside a training checkpoint (``teacher``, ``model``, ``state_dict``...).

    DINO's full checkpoints (``{"student": ..., "teacher": {"backbone.*", "head.*"}, "optimizer": ...,
    "epoch": ..., "dino_loss": {"center"}}``) give their teacher, as DINO's own evaluation does. The
    same layout flattened to one level (keys ``teacher.backbone.cls_token``..., as safetensors must
    store it) gives the tensors under ``teacher.`` with that prefix removed.
    """
    for key in ("teacher", "model", "state_dict", "module"):
        inner = obj.get(key)
        if isinstance(inner, dict) and any(isinstance(v, Tensor) for v in inner.values()):
            return unwrap_checkpoint(inner)
    flat = {k[len(TEACHER) :]: v for k, v in obj.items() if k.startswith(TEACHER) and isinstance(v, Tensor)}
    if flat:
        return flat
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def to_timm_state_dict(model: VisionTransformer) -> dict[str, Tensor]:
    """The inverse of :func:`convert_timm_vit`: ``model``'s tensors in timm's (and DINO's) key layout.

    ``q``, ``k``, ``v`` are fused into ``attn.qkv`` (rows in that order) and ``patch_embed`` becomes
    ``patch_embed.proj``; every other name is already timm's. A CLIP output projection has no place in
    that layout, so a model with one is refused.
    """
    if model.proj is not None:
        raise ValueError("a ViT with an output projection (a CLIP tower) has no timm/DINO layout")
    sd = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if re.search(r"\.attn\.[kv]\.(weight|bias)$", key):
            continue
        m = re.match(r"(.*\.attn)\.q\.(weight|bias)$", key)
        if m:
            base, kind = m.groups()
            parts = [sd[f"{base}.{n}.{kind}"] for n in "qkv"]
            out[f"{base}.qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        if key.startswith("patch_embed."):
            key = "patch_embed.proj." + key[len("patch_embed.") :]
        out[key] = value
    return out


def is_timm_vit(state_dict: dict[str, Tensor]) -> bool:
    """Whether ``state_dict`` looks like a timm-layout ViT."""
    sd = strip_prefixes(state_dict, PREFIXES)
    return "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd


def convert_timm_vit(
    state_dict: dict[str, Tensor],
    num_heads: int | None = None,
    preprocess: Preprocess | None = None,
    eps: float = 1e-6,
) -> VisionTransformer:
    """timm / DINO / iBOT / DINOv2 ViT tensors -> :class:`VisionTransformer`.

    Args:
        state_dict: the checkpoint's tensors (wrappers and prefixes are removed here).
        num_heads: attention heads; ``width // 64`` when ``None``.
        preprocess: preprocessing to attach; ImageNet (resize 256, crop 224) when ``None``.
        eps: LayerNorm epsilon (1e-6 in all of these codebases).
    """
    sd = strip_prefixes(unwrap_checkpoint(state_dict), PREFIXES)
    if not is_timm_vit(sd):
        raise ValueError(
            "not a timm-layout ViT checkpoint: expected keys 'cls_token' and 'blocks.0.attn.qkv.weight'"
        )
    sd = {k: v for k, v in sd.items() if not _DROP.match(k)}
    width = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
    ls = "blocks.0.ls1.gamma" in sd
    cfg = ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        depth=depth,
        num_heads=num_heads or max(1, width // 64),
        mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        patch_bias="patch_embed.proj.bias" in sd,
        pre_norm="norm_pre.weight" in sd,
        eps=eps,
        layer_scale=1.0 if ls else None,
        num_registers=registers,
        in_chans=sd["patch_embed.proj.weight"].shape[1],
        pos_antialias=registers > 0,  # DINOv2-with-registers resizes position embeddings with antialiasing
    )
    ours: dict[str, Tensor] = {}
    for key, value in sd.items():
        key = key.replace("patch_embed.proj.", "patch_embed.")
        if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
            base, kind = key.rsplit(".qkv.", 1)
            for name, part in zip("qkv", torch.chunk(value, 3, dim=0), strict=True):
                ours[f"{base}.{name}.{kind}"] = part.contiguous()
            continue
        ours[key] = value
    model = VisionTransformer(cfg, preprocess=preprocess)
    load_checked(model, ours, "timm-layout ViT checkpoint")
    return model
