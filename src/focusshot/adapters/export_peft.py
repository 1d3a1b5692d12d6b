"""Export LoRA adapters to the Hugging Face ``peft`` format (``PeftModel.from_pretrained`` reads it).

Our LoRA (:class:`~focusshot.adapters.lora.LoRALinear`) and peft's compute the same update,
``W x + (alpha / r) B A x`` with ``A: (r, in)`` and ``B: (out, r)``, so the export only renames:
each of our module names becomes the name of the same layer inside the ``transformers`` model the
backbone was converted from (:mod:`focusshot.backbones.convert.hf`, read the other way), and
the tensors are written under the keys peft's ``save_pretrained`` writes::

    base_model.model.<hf module>.lora_A.weight   (r, in)
    base_model.model.<hf module>.lora_B.weight   (out, r)

beside an ``adapter_config.json`` with the fields of peft's ``LoraConfig``. Supported layouts:

* CLIP with a ViT image tower -> ``CLIPModel`` (``vision_model.encoder.layers.{i}.self_attn.q_proj``,
  ``...mlp.fc1``, ``visual_projection``; the text tower -> ``text_model...`` likewise);
* a CLIP image tower alone -> ``CLIPVisionModelWithProjection`` / ``CLIPVisionModel``;
* a ViT / DINO / DeiT -> ``ViTModel`` (``encoder.layer.{i}.attention.attention.query``,
  ``attention.output.dense``, ``intermediate.dense``, ``output.dense``);
* a DINOv2 (layer scale) -> ``Dinov2Model`` (as ViT, but ``mlp.fc1`` / ``mlp.fc2``).

CLIP's names are the same in ``transformers`` 4 and 5. ViT and DINOv2 blocks were renamed in
``transformers`` 5 (``layers.{i}.attention.q_proj``), and peft adapts modules by their in-memory
name without translating, so for them the names of the *installed* ``transformers`` are written:
load the adapter with the same major version.

Use::

    export_peft(clf.fitted.tail.backbone, "adapter/", rank=4, alpha=1.0,
                base_model_name_or_path="openai/clip-vit-base-patch16")
    # then: PeftModel.from_pretrained(CLIPModel.from_pretrained(...), "adapter/")
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from focusshot.adapters.base import AdapterError, describe_model
from focusshot.adapters.lora import LoRALinear, lora_layers

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "HFLayout",
    "export_peft",
    "hf_base_model_name",
    "hf_layout",
    "peft_module_names",
]

#: file names peft reads
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: prefix of every tensor key in a peft LoRA checkpoint (``PeftModel`` -> ``LoraModel`` -> the model)
_KEY_PREFIX = "base_model.model."

# Our block-relative module names -> Hugging Face's, per layout.
_CLIP_BLOCK = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_BLOCK = {
    "attn.q": "attention.attention.query",
    "attn.k": "attention.attention.key",
    "attn.v": "attention.attention.value",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_DINOV2_BLOCK = {**_VIT_BLOCK, "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
# ViT and DINOv2 blocks as ``transformers`` 5 names them in memory
_V5_BLOCK = {
    "attn.q": "attention.q_proj",
    "attn.k": "attention.k_proj",
    "attn.v": "attention.v_proj",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


@dataclass(frozen=True)
class HFLayout:
    """Where our modules live inside one ``transformers`` model class.

    Attributes:
        base_model_class: the ``transformers`` class the adapter applies to (``CLIPModel``).
        parent_library: the module defining it (peft's ``auto_mapping``).
        blocks: our prefix of a block list (``"visual.blocks"``) -> (Hugging Face's prefix of the
            same list, block-relative name map).
        singles: our full name -> Hugging Face's, for layers outside the blocks (projections).
    """

    base_model_class: str
    parent_library: str
    blocks: dict[str, tuple[str, dict[str, str]]]
    singles: dict[str, str] = field(default_factory=dict)

    def hf_name(self, name: str) -> str | None:
        """The Hugging Face module name of our module ``name`` (``None``: it has no counterpart)."""
        if name in self.singles:
            return self.singles[name]
        for ours, (theirs, mapping) in self.blocks.items():
            m = re.fullmatch(rf"{re.escape(ours)}\.(\d+)\.(.+)", name)
            if m and m.group(2) in mapping:
                return f"{theirs}.{m.group(1)}.{mapping[m.group(2)]}"
        return None


def _vit_config(model: nn.Module) -> Any:
    """The :class:`~focusshot.backbones.vit.ViTConfig` of a ViT image tower, else ``None``."""
    from focusshot.backbones.vit import VisionTransformer

    return model.cfg if isinstance(model, VisionTransformer) else None


def hf_layout(model: nn.Module) -> HFLayout:
    """The Hugging Face layout of ``model`` (a CLIP with a ViT tower, a CLIP tower, ViT or DINOv2).

    Raises:
        AdapterError: the architecture has no supported ``transformers`` counterpart.
    """
    from focusshot.backbones.clip import CLIP

    if isinstance(model, CLIP):
        if _vit_config(model.visual) is None:
            raise AdapterError(
                f"{describe_model(model)}: only CLIPs with a ViT image tower map onto Hugging Face's "
                f"CLIPModel, not a {type(model.visual).__name__} tower"
            )
        return HFLayout(
            "CLIPModel",
            "transformers.models.clip.modeling_clip",
            {
                "visual.blocks": ("vision_model.encoder.layers", _CLIP_BLOCK),
                "text.blocks": ("text_model.encoder.layers", _CLIP_BLOCK),
            },
            {"visual.proj": "visual_projection", "text.proj": "text_projection"},
        )
    cfg = _vit_config(model)
    if cfg is None:
        raise AdapterError(
            f"{describe_model(model)}: no Hugging Face layout is known for {type(model).__name__}; "
            "LoRA exports to peft support CLIP (ViT), ViT/DINO/DeiT and DINOv2 backbones"
        )
    if cfg.pre_norm:  # a CLIP image tower on its own (clip_vision_model)
        cls = "CLIPVisionModelWithProjection" if cfg.proj_dim else "CLIPVisionModel"
        return HFLayout(
            cls,
            "transformers.models.clip.modeling_clip",
            {"blocks": ("vision_model.encoder.layers", _CLIP_BLOCK)},
            {"proj": "visual_projection"},
        )
    dinov2 = cfg.layer_scale is not None
    cls, library = ("Dinov2Model", "dinov2") if dinov2 else ("ViTModel", "vit")
    prefix, block = _vit_names(cls, dinov2)
    return HFLayout(cls, f"transformers.models.{library}.modeling_{library}", {"blocks": (prefix, block)})


def _vit_names(cls: str, dinov2: bool) -> tuple[str, dict[str, str]]:
    """Block-list prefix and block map of ``transformers``' ``cls`` (``ViTModel``, ``Dinov2Model``).

    ``transformers`` 5 renamed these modules in memory (``layers.{i}.attention.q_proj``), and peft
    injects by in-memory name, so the names come from the installed ``transformers``: a one-block
    model is built on the meta device and the candidate layout whose names it has wins. Without
    ``transformers`` the layout ``save_pretrained`` writes (``transformers`` 4's) is used.
    """
    legacy = ("encoder.layer", _DINOV2_BLOCK if dinov2 else _VIT_BLOCK)
    candidates = [legacy, ("encoder.layer", _V5_BLOCK), ("layers", _V5_BLOCK)]
    names = _installed_linear_names(cls)
    if names is None:
        return legacy
    for prefix, block in candidates:
        if all(f"{prefix}.0.{theirs}" in names for theirs in block.values()):
            return prefix, block
    raise AdapterError(
        f"the installed transformers' {cls} has none of the known layouts of its blocks "
        f"(its linear layers: {sorted(names)}); export with the transformers version you will load it with"
    )


def _installed_linear_names(cls: str) -> set[str] | None:
    """Names of the ``nn.Linear`` layers of a one-block ``transformers.<cls>`` (``None``: no transformers)."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    config_cls = getattr(transformers, cls.replace("Model", "Config"))
    config = config_cls(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, image_size=8, patch_size=4)
    with torch.device("meta"):
        model = getattr(transformers, cls)(config)
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def peft_module_names(model: nn.Module, layout: HFLayout | None = None) -> list[tuple[str, str, LoRALinear]]:
    """``(our name, Hugging Face module name, layer)`` of every LoRA layer of ``model``, in model order.

    Args:
        model: a backbone with LoRA layers.
        layout: ``hf_layout(model)`` when the caller has it already (computed when ``None``).

    Raises:
        AdapterError: ``model`` has no LoRA layers, its architecture has no Hugging Face layout, or
            a LoRA layer has no counterpart there (the message names it).
    """
    layers = lora_layers(model)
    if not layers:
        raise AdapterError(f"{describe_model(model)} has no LoRA layers to export (fit with method 'lora')")
    layout = layout or hf_layout(model)
    out = []
    for name, layer in layers:
        hf = layout.hf_name(name)
        if hf is None:
            raise AdapterError(
                f"LoRA layer {name!r} of {describe_model(model)} has no counterpart in Hugging Face's "
                f"{layout.base_model_class}; peft can only adapt layers that exist there"
            )
        out.append((name, hf, layer))
    return out


def hf_base_model_name(source: str) -> str:
    """What ``transformers`` loads for a focusshot backbone source (peft's ``base_model_name_or_path``).

    A registry name with Hugging Face weights gives its repository (``clip-vit-b16`` ->
    ``openai/clip-vit-base-patch16``), ``hf:<repo>`` gives ``<repo>``, an existing local path its
    absolute form; anything else (random ``tiny-*`` models) is returned as it is.
    """
    from focusshot.backbones.registry import parse_source

    try:
        parsed = parse_source(source)
    except ValueError:
        return source
    return parsed.hf_repo or parsed.value


def _check_layer(name: str, layer: LoRALinear, rank: int, alpha: float) -> None:
    if layer.rank != rank or layer.lora_A.shape[0] != rank:
        raise AdapterError(
            f"LoRA layer {name!r} has rank {layer.rank}, but the export was asked for rank {rank}"
        )
    if not math.isclose(layer.alpha, alpha, rel_tol=1e-6):
        raise AdapterError(
            f"LoRA layer {name!r} has alpha {layer.alpha}, but the export was asked for alpha {alpha}; "
            "peft would scale its update by a different alpha / r"
        )


def _adapter_config(
    targets: list[str], layout: HFLayout, rank: int, alpha: float, dropout: float, base: str | None
) -> dict[str, Any]:
    """The ``adapter_config.json`` of peft's ``LoraConfig`` (fields every peft since 0.9 accepts)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "auto_mapping": {
            "base_model_class": layout.base_model_class,
            "parent_library": layout.parent_library,
        },
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
    }


def export_peft(
    model: nn.Module,
    output_dir: str | os.PathLike[str],
    *,
    rank: int | None = None,
    alpha: float | None = None,
    dropout: float | None = None,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write the LoRA layers of ``model`` as a peft adapter directory.

    Args:
        model: a backbone with :class:`~focusshot.adapters.lora.LoRALinear` layers (a CLIP whose
            image tower has LoRA, e.g. ``clf.fitted.tail.backbone`` of a ``lora`` classifier, a
            CLIP image tower, a ViT/DINO or a DINOv2).
        output_dir: the adapter directory (created; ``adapter_config.json`` and
            ``adapter_model.safetensors`` in it are overwritten).
        rank: ``r`` of every layer (default: the first layer's; every layer is checked against it).
        alpha: ``lora_alpha`` of every layer (default: the first layer's; checked likewise: peft
            scales by ``alpha / r`` as we do).
        dropout: ``lora_dropout`` written to the config (default: the first layer's dropout
            probability; training only, inference ignores it).
        base_model_name_or_path: the Hugging Face model the adapter applies to (a hub id or a
            directory), recorded for ``AutoPeftModel``.

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        AdapterError: no LoRA layers, an unsupported architecture, a layer without a Hugging Face
            counterpart, or a layer whose rank / alpha differ from ``rank`` / ``alpha``.
    """
    from safetensors.torch import save_file

    # errors come in this order: no LoRA layers, an unsupported model, a layer without counterpart
    layout = hf_layout(model) if lora_layers(model) else None
    named = peft_module_names(model, layout)
    assert layout is not None  # peft_module_names raised otherwise
    first = named[0][2]
    rank = int(first.rank) if rank is None else rank
    alpha = float(first.alpha) if alpha is None else alpha
    if dropout is None:
        dropout = float(getattr(first.dropout, "p", 0.0))  # nn.Dropout, or nn.Identity for none
    for name, _, layer in named:
        _check_layer(name, layer, rank, alpha)
    state: dict[str, Tensor] = {}
    for _, hf, layer in named:
        # ours and peft's agree on shapes: A (r, in), B (out, r); fan_in_fan_out stays False
        state[f"{_KEY_PREFIX}{hf}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous().clone()
        state[f"{_KEY_PREFIX}{hf}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous().clone()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _adapter_config(
        [hf for _, hf, _ in named], layout, int(rank), float(alpha), float(dropout), base_model_name_or_path
    )
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out
