"""Per-head activations of a Hugging Face (multimodal) causal language model, as SAV reads them.

Mitra et al., "Enhancing Few-Shot Vision-Language Classification with Large Multimodal Model
Features" (arXiv 2412.00142, Sec. 3.1) take, for every attention head of the language model of a
large multimodal model (LLaVA-OneVision, Qwen2-VL), the head's output at the **last token** of the
prompt: the input of the attention layer's output projection ``o_proj`` (the heads' outputs
concatenated, ``(B, T, H * D)``), split back into ``H`` heads of ``D`` dims. The official code
(``chancharikmitra/SAVs``) records it with baukit ``TraceDict(retain_input=True)`` on
``model.layers.{l}.self_attn.o_proj``; here forward pre-hooks on those modules keep only the last
token, so the ``(B, T, H * D)`` inputs are never stored.

Example (any ``transformers`` model whose decoder layers have ``self_attn.o_proj``)::

    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    acts = vlm_head_activations(model, inputs)            # (B, L, H, D)
    fitted = fit_sav(acts, labels, num_classes)           # focusshot.methods.sav
    pred = fitted.logits(vlm_head_activations(model, query_inputs)).argmax(-1)

Vision towers are left out by the default suffix: CLIP/SigLIP encoders name their projection
``self_attn.out_proj`` and Qwen2-VL's ``attn.proj``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HeadProjection", "last_token_index", "o_proj_modules", "vlm_head_activations"]

#: the module-name suffix of a decoder layer's attention output projection (Llama, Qwen2, Mistral,
#: Gemma and the language models of LLaVA, LLaVA-OneVision, Qwen2-VL in ``transformers``)
O_PROJ_SUFFIX = "self_attn.o_proj"


@dataclass(frozen=True)
class HeadProjection:
    """One attention layer's output projection and how its input splits into heads.

    Attributes:
        name: the module's qualified name in the model.
        module: the projection (``nn.Linear`` with ``in_features = heads * head_dim``).
        heads: H (query heads; key/value heads of grouped-query attention do not matter here).
        head_dim: D.
    """

    name: str
    module: nn.Module
    heads: int
    head_dim: int


def _num_heads(attn: nn.Module) -> int | None:
    config = getattr(attn, "config", None)
    for source, attr in ((config, "num_attention_heads"), (attn, "num_heads"), (attn, "num_attention_heads")):
        value = getattr(source, attr, None) if source is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def o_proj_modules(model: nn.Module, suffix: str = O_PROJ_SUFFIX) -> list[HeadProjection]:
    """The output projections of ``model``'s attention layers, in layer (registration) order.

    Raises:
        ValueError: no module name ends with ``suffix``, or a projection's input does not split
            into the attention module's heads.
    """
    out: list[HeadProjection] = []
    for name, module in model.named_modules():
        if not (name == suffix or name.endswith("." + suffix)):
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        heads = _num_heads(parent)
        width = getattr(module, "in_features", None)
        if heads is None or not isinstance(width, int) or width % heads:
            raise ValueError(f"{name}: cannot split an input of width {width} into {heads} heads")
        head_dim = int(getattr(parent, "head_dim", width // heads))
        if heads * head_dim != width:
            raise ValueError(f"{name}: {heads} heads x {head_dim} dims != input width {width}")
        out.append(HeadProjection(name, module, heads, head_dim))
    if not out:
        raise ValueError(f"{type(model).__name__} has no module named '*{suffix}'")
    return out


def last_token_index(attention_mask: Tensor | None, length: int) -> Tensor | None:
    """Index ``(B,)`` of each row's last attended token (right or left padding); ``None``: ``length - 1``."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if mask.shape[-1] != length:
        raise ValueError(f"attention_mask has {mask.shape[-1]} positions, the sequence {length}")
    return (length - 1) - mask.flip(-1).long().argmax(-1)  # first attended position from the right


@torch.no_grad()
def vlm_head_activations(
    model: nn.Module,
    processor_inputs: Mapping[str, Any],
    layers: Sequence[int] | None = None,
    suffix: str = O_PROJ_SUFFIX,
) -> Tensor:
    """Per-head outputs at the last token, ``(B, L, H, D)`` float32 on the CPU (SAV's features).

    Args:
        model: a ``transformers`` causal (multimodal) language model, e.g.
            ``LlavaForConditionalGeneration``, ``Qwen2VLForConditionalGeneration``,
            ``LlamaForCausalLM``; it is run once, in eval mode, with ``**processor_inputs``.
        processor_inputs: what the processor returned (``input_ids``, ``attention_mask``,
            ``pixel_values``...). The last token of each row is the last position its
            ``attention_mask`` attends (``T - 1`` without a mask).
        layers: which attention layers (negatives from the end); ``None``: all, in order.
        suffix: the module-name suffix of the output projections (:data:`O_PROJ_SUFFIX`).

    Returns:
        ``(B, L, H, D)``: for layer ``l`` the input of its ``o_proj`` at the last token, viewed as
        ``H`` heads of ``D`` dims (paper Sec. 3.1; the official code's ``split_activations_by_head``).
    """
    projections = o_proj_modules(model, suffix)
    total = len(projections)
    chosen = list(range(total)) if layers is None else [int(v) for v in layers]
    bad = [v for v in chosen if not -total <= v < total]
    if bad:
        raise ValueError(f"layers {bad} out of range for {total} attention layers")
    chosen = [v % total for v in chosen]
    shapes = {(projections[i].heads, projections[i].head_dim) for i in chosen}
    if len(shapes) != 1:
        raise ValueError(f"layers {chosen} differ in heads x head_dim ({sorted(shapes)})")
    mask = processor_inputs.get("attention_mask")
    captured: dict[int, Tensor] = {}

    def hook_for(i: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        proj = projections[i]

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]  # (B, T, H * D)
            idx = last_token_index(mask, x.shape[1])
            rows = torch.arange(x.shape[0], device=x.device)
            last = x[:, -1] if idx is None else x[rows, idx.to(x.device)]  # (B, H * D)
            captured[i] = last.reshape(x.shape[0], proj.heads, proj.head_dim).float().cpu()

        return hook

    handles = [projections[i].module.register_forward_pre_hook(hook_for(i)) for i in chosen]
    was_training = model.training
    model.eval()
    try:
        model(**processor_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [i for i in chosen if i not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached the o_proj of layers {missing}")
    return torch.stack([captured[i] for i in chosen], dim=1)  # (B, L, H, D)
