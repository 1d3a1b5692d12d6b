"""Converters for Swin Transformer checkpoints (Liu et al., ICCV 2021) into :class:`SwinTransformer`.

Two layouts are read:

* Hugging Face ``transformers`` ``SwinModel`` / ``SwinForImageClassification``: the layout
  ``save_pretrained`` writes (``encoder.layers.i.blocks.j.attention.self.query``,
  ``...attention.output.dense``, ``...intermediate.dense``, ``...output.dense``) and the renamed
  layout of recent ``transformers`` in memory (``...attention.q_proj``, ``...mlp.fc1``), with the
  parsed ``config.json`` giving the hyper-parameters.
* The original Microsoft layout, which iBOT (Zhou et al., ICLR 2022) and most Swin training code
  reuse: ``patch_embed.proj``, ``layers.i.blocks.j.{norm1, attn.qkv, attn.proj,
  attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}``, ``layers.i.downsample.{norm,
  reduction}``, ``norm``; training wrappers (``teacher`` / ``student`` / ``state_dict`` / ``model``
  entries; ``module.``, ``backbone.``, ``teacher.``, ``student.`` prefixes) are removed.

The fused ``qkv`` projection is split into ``q``, ``k`` and ``v``; buffers we recompute
(``relative_position_index``, shift masks) and heads (classifier, DINO/iBOT projection heads, mask
tokens) are dropped. Every converter ends in :func:`load_checked`, which raises a ``ValueError``
naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from focusshot.backbones.base import Preprocess
from focusshot.backbones.convert.common import Rules, load_checked, rename, strip_prefixes
from focusshot.backbones.swin import SwinConfig, SwinTransformer

_HF_RULES: Rules = [
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^encoder\.layers\.(\d+)\.downsample\.", r"stages.\1.downsample."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.key\.", ".attn.k."),
    (r"\.attention\.self\.value\.", ".attn.v."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.self\.relative_position_bias_table$", ".relative_position_bias_table"),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$", ".relative_position_bias_table"),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed."),
    (r"^embeddings\.norm\.", "patch_norm."),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^layernorm\.", "norm."),
]
_HF_DROP = re.compile(
    r"(relative_position_index$|^embeddings\.mask_token$|^classifier\.|^pooler\.|^decoder\.)"
)

_ORIGINAL_RULES: Rules = [
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"^patch_embed\.norm\.", "patch_norm."),
    (r"^absolute_pos_embed$", "pos_embed"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^layers\.(\d+)\.downsample\.", r"stages.\1.downsample."),
    (r"\.attn\.relative_position_bias_table$", ".relative_position_bias_table"),
]
_ORIGINAL_DROP = re.compile(
    r"(relative_position_index$|\.attn_mask$|^head\.|^head$|^masked_embed$|^mask_token$|^avgpool\.)"
)
#: Prefixes of training checkpoints (DDP, DINO/iBOT teacher-student wrappers, SimMIM encoders).
ORIGINAL_PREFIXES = ("module.", "teacher.", "student.", "model.", "encoder.")
_NESTED = ("teacher", "state_dict", "model", "student", "module")
_QKV = re.compile(r"^(.*)\.attn\.qkv\.(weight|bias)$")

_HF_ACTS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
}


def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"only square {what}s are supported, got {value}")
        value = value[0]
    return int(value)


# --------------------------------------------------------------------------- Hugging Face


def swin_config_from_hf(config: Mapping[str, Any]) -> SwinConfig:
    """A parsed Hugging Face ``config.json`` of ``model_type`` ``"swin"`` -> :class:`SwinConfig`.

    Hugging Face applies ``layer_norm_eps`` to the blocks and the final norm only; its
    patch-embedding and patch-merging norms keep PyTorch's 1e-5, hence ``patch_norm_eps=1e-5``.
    Dropout and stochastic-depth rates are carried over (they act only in training mode; note
    that ``transformers`` defaults ``drop_path_rate`` to 0.1).
    """
    model_type = config.get("model_type", "swin")
    if model_type != "swin":
        raise ValueError(
            f"expected a config with model_type 'swin', got {model_type!r} (Swin V2 is not supported)"
        )
    act = config.get("hidden_act", "gelu")
    if act not in _HF_ACTS:
        raise ValueError(f"unsupported hidden_act {act!r}; supported: {sorted(_HF_ACTS)}")
    image = config.get("image_size", 224)
    image_size: int | tuple[int, int] = (
        (int(image[0]), int(image[1])) if isinstance(image, (list, tuple)) else int(image)
    )
    return SwinConfig(
        image_size=image_size,
        patch_size=_square(config.get("patch_size", 4), "patch"),
        embed_dim=int(config.get("embed_dim", 96)),
        depths=tuple(config.get("depths", (2, 2, 6, 2))),
        num_heads=tuple(config.get("num_heads", (3, 6, 12, 24))),
        window_size=int(config.get("window_size", 7)),
        mlp_ratio=float(config.get("mlp_ratio", 4.0)),
        qkv_bias=bool(config.get("qkv_bias", True)),
        eps=float(config.get("layer_norm_eps", 1e-5)),
        patch_norm_eps=1e-5,
        table_per_config=True,
        patch_norm=True,
        abs_pos_embed=bool(config.get("use_absolute_embeddings", False)),
        act=_HF_ACTS[act],
        drop=float(config.get("hidden_dropout_prob", 0.0)),
        attn_drop=float(config.get("attention_probs_dropout_prob", 0.0)),
        drop_path_rate=float(config.get("drop_path_rate", 0.0)),
        in_chans=int(config.get("num_channels", 3)),
    )


def hf_swin_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face Swin tensors (either key layout, with or without ``swin.``) -> our key layout.

    Keys that no rule knows are kept under their own name, so that loading reports them.
    """
    sd = strip_prefixes(dict(state_dict), ("swin.",))
    sd = {k: v for k, v in sd.items() if not _HF_DROP.search(k)}
    return rename(sd, _HF_RULES)


def convert_hf_swin(
    config: Mapping[str, Any], state_dict: Mapping[str, Tensor], preprocess: Preprocess | None = None
) -> SwinTransformer:
    """Hugging Face ``SwinModel`` (or ``SwinForImageClassification``) -> :class:`SwinTransformer`.

    Args:
        config: the parsed ``config.json``.
        state_dict: the checkpoint's tensors (``model.safetensors`` or ``pytorch_model.bin``).
        preprocess: preprocessing to attach; ImageNet's when ``None``.

    Raises:
        ValueError: on an unsupported config, or when the tensors do not fit the model (the
            message lists missing, unexpected and mis-shaped keys).
    """
    model = SwinTransformer(swin_config_from_hf(config), preprocess=preprocess)
    load_checked(model, hf_swin_state_dict(state_dict), "Hugging Face Swin checkpoint")
    return model.eval()


# --------------------------------------------------------------------------- original / iBOT


def unwrap_original(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The backbone tensors of a Microsoft / iBOT Swin checkpoint, wrappers and prefixes removed.

    Nested entries are searched in the order ``teacher``, ``state_dict``, ``model``, ``student``,
    ``module``. When keys carry ``backbone.`` (DINO/iBOT ``MultiCropWrapper``), only those are kept,
    which leaves out the projection heads.
    """
    obj: Mapping[str, Any] = checkpoint
    descended = True
    while descended:
        descended = False
        for name in _NESTED:
            inner = obj.get(name)
            if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
                obj, descended = inner, True
                break
    sd = strip_prefixes({k: v for k, v in obj.items() if isinstance(v, Tensor)}, ORIGINAL_PREFIXES)
    if any(k.startswith("backbone.") for k in sd):
        sd = strip_prefixes({k: v for k, v in sd.items() if k.startswith("backbone.")}, ("backbone.",))
    return sd


def original_swin_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Microsoft / iBOT Swin checkpoint -> our key layout, fused ``qkv`` split into ``q``, ``k``, ``v``.

    ``attn.qkv.weight`` is ``(3C, C)`` with the rows of q, then k, then v (the reference reshapes
    its output to ``(B, N, 3, H, D)``); the bias is split the same way.
    """
    sd = {k: v for k, v in unwrap_original(checkpoint).items() if not _ORIGINAL_DROP.search(k)}
    out: dict[str, Tensor] = {}
    for key, value in rename(sd, _ORIGINAL_RULES).items():
        m = _QKV.match(key)
        if m is None:
            out[key] = value
            continue
        if value.shape[0] % 3:
            raise ValueError(f"{key}: fused qkv of shape {tuple(value.shape)} does not split in three")
        for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
            out[f"{m.group(1)}.attn.{name}.{m.group(2)}"] = part.clone()
    return out


def convert_original_swin(
    checkpoint: Mapping[str, Any], cfg: SwinConfig, preprocess: Preprocess | None = None
) -> SwinTransformer:
    """Microsoft / iBOT Swin checkpoint + its hyper-parameters -> :class:`SwinTransformer`.

    Args:
        checkpoint: a state dict, or a training checkpoint holding one (see :func:`unwrap_original`).
        cfg: the architecture. iBOT builds its Swins with LayerNorm ``eps=1e-6`` (pass
            ``SwinConfig(eps=1e-6)``); Microsoft's classification models use 1e-5.
        preprocess: preprocessing to attach; ImageNet's when ``None``.

    Raises:
        ValueError: listing missing, unexpected and mis-shaped keys when the tensors do not fit.
    """
    model = SwinTransformer(cfg, preprocess=preprocess)
    load_checked(model, original_swin_state_dict(checkpoint), "original-layout Swin checkpoint")
    return model.eval()


def _looks_like_ibot(checkpoint: Mapping[str, Any]) -> bool:
    keys: list[str] = []
    obj: Any = checkpoint
    while isinstance(obj, Mapping):
        keys.extend(str(k) for k in obj)
        nxt = next((obj[n] for n in _NESTED if isinstance(obj.get(n), Mapping)), None)
        obj = nxt
    stripped = [re.sub(r"^((module|teacher|student)\.)+", "", k) for k in keys]
    return any(k in ("teacher", "student") for k in keys) or any(
        k.startswith("backbone.") or k == "masked_embed" for k in stripped
    )


def infer_original_swin_config(
    checkpoint: Mapping[str, Any], image_size: int | None = None, eps: float | None = None
) -> SwinConfig:
    """Read a :class:`SwinConfig` off the tensor shapes of a Microsoft / iBOT Swin checkpoint.

    Widths, depths, heads (relative-position table columns), window (table rows
    ``(2w - 1)**2``), MLP ratio and biases are exact. The training resolution is not stored; it
    is taken from the absolute position embedding when there is one, else from the first stage
    whose table is smaller than the window (the reference shrinks those windows to the map),
    else it is assumed that the last stage's map equals the window (true of every released Swin:
    224 px for window 7, 384 px for window 12).

    Args:
        checkpoint: state dict or training checkpoint.
        image_size: the training resolution, overriding the guess.
        eps: LayerNorm epsilon; when ``None``, 1e-6 for checkpoints that look like iBOT's (teacher /
            student wrappers, ``backbone.`` keys, ``masked_embed``) and 1e-5 otherwise.
    """
    sd = original_swin_state_dict(checkpoint)
    if "patch_embed.weight" not in sd:
        raise ValueError("not an original-layout Swin checkpoint: no 'patch_embed.proj.weight'")
    embed_dim, in_chans, patch, _ = sd["patch_embed.weight"].shape
    block_key = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")
    blocks: dict[int, set[int]] = {}
    for key in sd:
        m = block_key.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"cannot read the stages of this Swin checkpoint (found stages {sorted(blocks)})")
    depths = tuple(len(blocks[i]) for i in range(len(blocks)))
    heads, windows = [], []
    for i in range(len(depths)):
        rows, h = sd[f"stages.{i}.blocks.0.relative_position_bias_table"].shape
        side = math.isqrt(rows)
        if side * side != rows or side % 2 == 0:
            raise ValueError(f"stage {i}: relative position table with {rows} rows is not (2w - 1)**2")
        heads.append(int(h))
        windows.append((side + 1) // 2)
    window = max(windows)
    if image_size is None:
        if "pos_embed" in sd:
            image_size = math.isqrt(sd["pos_embed"].shape[1]) * patch
        else:
            clamped = [i for i, w in enumerate(windows) if w < window]
            i = clamped[0] if clamped else len(depths) - 1
            image_size = windows[i] * patch * 2**i
    hidden = sd["stages.0.blocks.0.mlp.fc1.weight"].shape[0]
    if eps is None:
        eps = 1e-6 if _looks_like_ibot(checkpoint) else 1e-5
    return SwinConfig(
        image_size=int(image_size),
        patch_size=int(patch),
        embed_dim=int(embed_dim),
        depths=depths,
        num_heads=tuple(heads),
        window_size=window,
        mlp_ratio=hidden / embed_dim,
        qkv_bias="stages.0.blocks.0.attn.q.bias" in sd,
        eps=eps,
        patch_norm="patch_norm.weight" in sd,
        abs_pos_embed="pos_embed" in sd,
        in_chans=int(in_chans),
    )


def convert_original_swin_inferred(
    checkpoint: Mapping[str, Any],
    image_size: int | None = None,
    eps: float | None = None,
    preprocess: Preprocess | None = None,
) -> SwinTransformer:
    """Microsoft / iBOT Swin checkpoint -> :class:`SwinTransformer`, config read off the shapes.

    See :func:`infer_original_swin_config` for what is inferred and what is assumed.
    """
    cfg = infer_original_swin_config(checkpoint, image_size=image_size, eps=eps)
    return convert_original_swin(checkpoint, cfg, preprocess=preprocess)


__all__ = [
    "convert_hf_swin",
    "convert_original_swin",
    "convert_original_swin_inferred",
    "hf_swin_state_dict",
    "infer_original_swin_config",
    "original_swin_state_dict",
    "swin_config_from_hf",
    "unwrap_original",
]
