"""Convert OpenAI CLIP state dicts (Radford et al., 2021) into :class:`focusshot.backbones.clip.CLIP`.

The input is a mapping of tensors in the key layout of the ``clip`` package's
``model.state_dict()``:

* ViT image tower: ``visual.conv1.weight``, ``visual.class_embedding``,
  ``visual.positional_embedding``, ``visual.ln_pre``, ``visual.transformer.resblocks.i.{attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}``, ``visual.ln_post``, ``visual.proj``;
* ModifiedResNet image tower: ``visual.{conv1..3, bn1..3, layer1..4, attnpool.{positional_embedding,
  q_proj, k_proj, v_proj, c_proj}}``;
* text tower: ``token_embedding``, ``positional_embedding``, ``transformer.resblocks.i...``,
  ``ln_final``, ``text_projection``, ``logit_scale``.

Hyper-parameters are read off the tensor shapes as OpenAI's ``build_model`` does. OpenAI's released
``.pt`` files are TorchScript archives; reading them (without unpickling) happens elsewhere; this
module only converts a dict of tensors.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from focusshot.backbones.base import CLIP_PREPROCESS, Identity
from focusshot.backbones.clip import CLIP, TextConfig, TextTransformer
from focusshot.backbones.clip_resnet import ModifiedResNet, ResNetConfig
from focusshot.backbones.convert.common import load_checked
from focusshot.backbones.vit import VisionTransformer, ViTConfig

#: Scalar entries some OpenAI checkpoints carry beside the weights; ``build_model`` drops them.
_META_KEYS = ("input_resolution", "context_length", "vocab_size")

#: OpenAI's head width: ``heads = width // 64`` (text, ViT) and ``32 * width // 64`` (ResNet pool).
HEAD_WIDTH = 64

# Renames inside one residual attention block (both towers): OpenAI -> ours.
_BLOCK_RULES: list[tuple[str, str]] = [
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
]

# Renames of the ModifiedResNet tower (after the ``visual.`` prefix): OpenAI -> ours.
_RESNET_RULES: list[tuple[str, str]] = [
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.bn."),
    (r"^attnpool\.q_proj\.", "attnpool.attn.q."),
    (r"^attnpool\.k_proj\.", "attnpool.attn.k."),
    (r"^attnpool\.v_proj\.", "attnpool.attn.v."),
    (r"^attnpool\.c_proj\.", "attnpool.attn.proj."),
]


def _need(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise ValueError(f"not an OpenAI CLIP state dict: key {key!r} is missing")
    return sd[key]


def _heads(width: int, given: int | None, what: str, arg: str, numerator: int = 1) -> int:
    heads = given if given is not None else numerator * width // HEAD_WIDTH
    if heads < 1 or (numerator * width) % heads != 0:
        raise ValueError(
            f"cannot use {heads} heads for the {what} (width {numerator * width}); OpenAI's rule gives "
            f"width // {HEAD_WIDTH}: pass {arg}= for models narrower than that rule assumes"
        )
    return heads


def infer_config(
    state_dict: Mapping[str, Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    eot_token_id: int | None = None,
) -> tuple[ViTConfig | ResNetConfig, TextConfig]:
    """Read the image and text tower hyper-parameters off the tensor shapes (OpenAI's ``build_model``).

    Args:
        state_dict: OpenAI CLIP tensors (see the module docstring).
        vision_heads: heads of the image tower; OpenAI's rule (``width // 64`` for a ViT,
            ``32 * width // 64`` for the ResNet pool) when ``None``.
        text_heads: heads of the text tower; ``width // 64`` when ``None``.
        eot_token_id: end-of-text token; ``vocab_size - 1`` when ``None`` (OpenAI pools at the
            highest token id, which is the end-of-text token, the last entry of its vocabulary).

    Returns:
        ``(vision_config, text_config)``: a :class:`ViTConfig` when ``visual.proj`` is present,
        otherwise a :class:`ResNetConfig`.
    """
    sd = state_dict
    embed_dim = int(_need(sd, "text_projection").shape[1])
    vision: ViTConfig | ResNetConfig
    if "visual.proj" in sd:
        conv = _need(sd, "visual.conv1.weight")
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        depth = sum(1 for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
        grid = round((int(_need(sd, "visual.positional_embedding").shape[0]) - 1) ** 0.5)
        vision = ViTConfig(
            image_size=patch * grid,
            patch_size=patch,
            width=width,
            depth=depth,
            num_heads=_heads(width, vision_heads, "ViT image tower", "vision_heads"),
            mlp_dim=int(_need(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0]),
            qkv_bias=True,
            patch_bias=False,
            pre_norm=True,
            act="quick_gelu",
            eps=1e-5,
            pool="cls",
            proj_dim=embed_dim,
        )
    else:
        layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
        )
        if min(layers) < 1:
            raise ValueError(
                f"not an OpenAI CLIP state dict: no 'visual.proj' (ViT), and ResNet stages of {layers} blocks"
            )
        width = int(_need(sd, "visual.layer1.0.conv1.weight").shape[0])
        positions = int(_need(sd, "visual.attnpool.positional_embedding").shape[0])
        grid = round((positions - 1) ** 0.5)
        if grid * grid + 1 != positions:
            raise ValueError(f"visual.attnpool.positional_embedding has {positions} rows, not 1 + a square")
        vision = ResNetConfig(
            layers=layers,  # type: ignore[arg-type]  # four stage counts; mypy sees tuple[int, ...]
            width=width,
            output_dim=embed_dim,
            heads=_heads(width, vision_heads, "ResNet attention pool", "vision_heads", numerator=32),
            image_size=grid * 32,
        )
    text_width = int(_need(sd, "ln_final.weight").shape[0])
    vocab = int(_need(sd, "token_embedding.weight").shape[0])
    text = TextConfig(
        vocab_size=vocab,
        context_length=int(_need(sd, "positional_embedding").shape[0]),
        width=text_width,
        depth=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        num_heads=_heads(text_width, text_heads, "text tower", "text_heads"),
        mlp_dim=int(_need(sd, "transformer.resblocks.0.mlp.c_fc.weight").shape[0]),
        proj_dim=embed_dim,
        act="quick_gelu",
        eps=1e-5,
        eot_token_id=vocab - 1 if eot_token_id is None else eot_token_id,
    )
    return vision, text


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _block_tensors(key: str, value: Tensor, src: str, dst: str) -> list[tuple[str, Tensor]] | None:
    """Map one ``{src}transformer.resblocks.i.*`` tensor to ``{dst}blocks.i.*``; ``None`` if it is not one."""
    m = re.match(rf"^{re.escape(src)}transformer\.resblocks\.(\d+)\.(.*)$", key)
    if m is None:
        return None
    base, rest = f"{dst}blocks.{m.group(1)}", m.group(2)
    fused = re.match(r"^attn\.in_proj_(weight|bias)$", rest)
    if fused is None:
        return [(_rename(f"{base}.{rest}", _BLOCK_RULES), value)]
    if value.shape[0] % 3 != 0:
        raise ValueError(f"{key} has {value.shape[0]} rows, not 3 * width")
    parts = value.chunk(3, dim=0)
    return [(f"{base}.attn.{n}.{fused.group(1)}", p) for n, p in zip("qkv", parts, strict=True)]


#: One-to-one renames outside the residual blocks: OpenAI -> ours.
_SIMPLE: dict[str, str] = {
    "visual.conv1.weight": "visual.patch_embed.weight",
    "token_embedding.weight": "text.token_embedding.weight",
    "positional_embedding": "text.pos_embed",
    "logit_scale": "logit_scale",
}

#: Prefix renames of the layer norms outside the blocks: OpenAI -> ours.
_NORMS: dict[str, str] = {
    "visual.ln_pre.": "visual.norm_pre.",
    "visual.ln_post.": "visual.norm.",
    "ln_final.": "text.norm.",
}


def _map_tensor(key: str, value: Tensor, resnet: bool) -> list[tuple[str, Tensor]]:
    """Our key(s) and tensor(s) for one OpenAI tensor; unknown keys come back unchanged."""
    for src, dst in (("visual.", "visual."), ("", "text.")):
        mapped = _block_tensors(key, value, src, dst)
        if mapped is not None:
            return mapped
    if key == "visual.class_embedding":
        return [("visual.cls_token", value.reshape(1, 1, -1))]
    if key == "visual.positional_embedding":
        return [("visual.pos_embed", value.unsqueeze(0))]
    if key == "visual.attnpool.positional_embedding":
        return [("visual.attnpool.pos_embed", value.unsqueeze(0))]
    if key == "visual.proj":
        return [("visual.proj.weight", value.t())]
    if key == "text_projection":
        return [("text.proj.weight", value.t())]
    if key in _SIMPLE and not (resnet and key == "visual.conv1.weight"):
        return [(_SIMPLE[key], value)]
    for src, dst in _NORMS.items():
        if key.startswith(src):
            return [(dst + key.removeprefix(src), value)]
    if resnet and key.startswith("visual."):
        return [("visual." + _rename(key.removeprefix("visual."), _RESNET_RULES), value)]
    return [(key, value)]


def convert_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename OpenAI CLIP tensors to the keys of :class:`focusshot.backbones.clip.CLIP`.

    Fused ``in_proj`` weights ``(3C, C)`` are split into ``q``, ``k``, ``v``; ``visual.proj``
    ``(C, E)`` and ``text_projection`` ``(W, E)`` are transposed into ``Linear`` weights ``(E, C)``
    and ``(E, W)``; ``class_embedding`` ``(C,)`` becomes ``cls_token`` ``(1, 1, C)`` and image
    positional embeddings ``(N, C)`` become ``(1, N, C)``. The ResNet stem and stages keep their
    names (``downsample.0/1`` become ``downsample.conv/bn``). Keys it does not know pass through
    unchanged, so that the strict load names them.
    """
    resnet = "visual.proj" not in state_dict
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in _META_KEYS:
            continue
        for new, tensor in _map_tensor(key, value, resnet):
            if new in out:
                raise ValueError(f"two checkpoint tensors map to {new!r} (the second is {key!r})")
            out[new] = tensor
    return out


def build_model(vision: ViTConfig | ResNetConfig, text: TextConfig, tokenizer: Any = None) -> CLIP:
    """A randomly initialised :class:`CLIP` with OpenAI's architecture for the given configs."""
    preprocess = dataclasses.replace(CLIP_PREPROCESS, resize=vision.image_size, crop=vision.image_size)
    visual = (
        VisionTransformer(vision, preprocess=preprocess)
        if isinstance(vision, ViTConfig)
        else ModifiedResNet(vision, preprocess=preprocess)
    )
    return CLIP(visual, TextTransformer(text), tokenizer=tokenizer)


def _arch_name(vision: ViTConfig | ResNetConfig) -> str:
    if isinstance(vision, ViTConfig):
        return f"vit-w{vision.width}-d{vision.depth}-p{vision.patch_size}-{vision.image_size}px"
    return f"rn{'-'.join(map(str, vision.layers))}-w{vision.width}-{vision.image_size}px"


def _fill_batch_counters(model: CLIP, converted: dict[str, Tensor]) -> None:
    """Add BatchNorm ``num_batches_tracked`` counters that a checkpoint left out (unused at inference)."""
    for key, own in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in converted:
            converted[key] = torch.zeros_like(own)


def convert_openai_clip(
    state_dict: Mapping[str, Tensor],
    tokenizer: Any = None,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    eot_token_id: int | None = None,
) -> CLIP:
    """Build a :class:`CLIP` from an OpenAI CLIP state dict (ViT or ModifiedResNet image tower).

    Hyper-parameters come from the tensor shapes (see :func:`infer_config`); activations are
    QuickGELU and layer norms use ``eps=1e-5``, as in OpenAI's models. Half-precision
    checkpoints load into a float32 model.

    Args:
        state_dict: tensors in the key layout of the ``clip`` package's ``model.state_dict()``.
        tokenizer: optional tokenizer stored on the model (``CLIP.tokenize`` uses it).
        vision_heads, text_heads, eot_token_id: overrides of the inferred values (see
            :func:`infer_config`); needed for models narrower than OpenAI's 64-wide heads.

    Raises:
        ValueError: when shapes cannot be read or the strict load finds missing, unexpected or
            mis-shaped keys (named in the message).
    """
    vision, text = infer_config(
        state_dict, vision_heads=vision_heads, text_heads=text_heads, eot_token_id=eot_token_id
    )
    model = build_model(vision, text, tokenizer)
    converted = convert_state_dict(state_dict)
    _fill_batch_counters(model, converted)
    load_checked(model, converted, "OpenAI CLIP state dict")
    model.identity = Identity(
        name=f"openai-clip-{_arch_name(vision)}",
        family="clip",
        source="openai",
        extra={"vision": dataclasses.asdict(vision), "text": dataclasses.asdict(text)},
    )
    return model.eval()
