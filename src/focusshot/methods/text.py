"""Class names -> CLIP text classifier weights (Radford et al., 2021, "prompt ensembling")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.clip import CLIP
from focusshot.methods.base import FitContext

#: A short ensemble of CLIP's ImageNet prompt templates.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a bad photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "itap of a {}.",
)


def fill(template: str, name: str) -> str:
    """Put ``name`` into ``template``; ``{article}`` becomes "a" or "an" by the name's first letter."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return template.replace("{article}", article).format(name)


def readable(name: str) -> str:
    """A folder-style class name as words: ``"t_shirt"`` -> ``"t shirt"``."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


@torch.inference_mode()
def class_text_embeddings(
    clip: Any, class_names: Sequence[str], templates: Sequence[str] | None = None
) -> Tensor:
    """Text embeddings ``(C, T, D)`` of every class name in every template, each L2-normalised.

    Args:
        clip: a :class:`focusshot.backbones.clip.CLIP` (anything with ``encode_text`` and a tokenizer).
        class_names: the C class names (underscores read as spaces).
        templates: T prompt templates with one ``{}`` (and optionally ``{article}``); the
            backbone's own ``templates`` when it has them, else :data:`DEFAULT_TEMPLATES`.
    """
    if not hasattr(clip, "encode_text"):
        raise ValueError(f"{type(clip).__name__} has no text tower: zero-shot heads need a CLIP backbone")
    if templates is None:
        templates = getattr(clip, "templates", None) or DEFAULT_TEMPLATES
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every template needs one '{}' where the class name goes")
    texts = [fill(t, readable(c)) for c in class_names for t in templates]
    emb: Tensor = clip.encode_text(texts).float()
    emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return emb.reshape(len(class_names), len(templates), -1)


def need_text(ctx: FitContext, method: str) -> Tensor:
    """The fit's class text embeddings ``(C, T, D)``; ``ValueError`` naming ``method`` without them."""
    if ctx.text is None:
        raise ValueError(f"method {method!r} needs class text embeddings: use a CLIP backbone")
    return ctx.text


def require_text_tower(method: str, backbone: Backbone) -> CLIP:
    """``backbone`` as the :class:`CLIP` it is; ``ValueError`` naming ``method`` when it has no CLIP
    text tower."""
    if not backbone.capabilities.text or not isinstance(backbone, CLIP):
        raise ValueError(
            f"method {method!r} needs a CLIP backbone (a text tower), not {backbone.identity.name}"
        )
    return backbone


def logit_scale(backbone: Backbone, override: float = 0.0) -> float:
    """CLIP's logit scale: ``override`` when positive, else the model's ``exp(logit_scale)`` (at
    most 100, as CLIP clamps it in training; 100 for OpenAI's models)."""
    if override:
        return float(override)
    if not isinstance(backbone, CLIP):
        raise ValueError(f"{backbone.identity.name} has no CLIP logit scale; give the scale option")
    return float(backbone.logit_scale.detach().exp().clamp(max=100))
