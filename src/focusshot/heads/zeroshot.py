"""Zero-shot CLIP head: classify by cosine similarity to class text embeddings (Radford et al., ICML 2021).

The head receives text embeddings computed elsewhere (C classes x T prompt templates x D), never a
text model: ``heads`` do not import ``backbones``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from focusshot.heads.base import (
    Head,
    HeadInputError,
    check_support,
    l2_normalize,
    positive,
    register_head,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.options import option


def text_classifier(text_embeddings: Tensor) -> Tensor:
    """Class weights (C, D) from text embeddings (C, T, D) or (C, D).

    Each template embedding is L2-normalised, the templates are averaged, and the mean is
    normalised again (CLIP's prompt ensembling, Radford et al. 2021, sec. 3.1.4).
    """
    if not isinstance(text_embeddings, Tensor) or text_embeddings.ndim not in (2, 3):
        shape = tuple(text_embeddings.shape) if isinstance(text_embeddings, Tensor) else type(text_embeddings)
        raise HeadInputError(f"text_embeddings must be a (C, T, D) or (C, D) tensor, got {shape}")
    if not text_embeddings.is_floating_point() or not bool(torch.isfinite(text_embeddings).all()):
        raise HeadInputError("text_embeddings must be finite floating-point values")
    if text_embeddings.shape[0] == 0 or text_embeddings.shape[-2] == 0:
        raise HeadInputError(
            f"text_embeddings must hold at least one class and template, got {tuple(text_embeddings.shape)}"
        )
    emb = text_embeddings if text_embeddings.ndim == 3 else text_embeddings.unsqueeze(1)
    return l2_normalize(l2_normalize(emb).mean(1))


def check_text_support(
    features: Tensor, labels: Tensor, num_classes: int | None, text_weights: Tensor
) -> int:
    """Check a support set against text weights (C, D): same D, labels in 0..C-1. Returns C."""
    classes, dim = text_weights.shape
    if num_classes is not None and num_classes != classes:
        raise HeadInputError(f"num_classes={num_classes}, but the text embeddings describe {classes} classes")
    check_support(features, labels, classes, require_every_class=False)
    if features.shape[-1] != dim:
        raise HeadInputError(
            f"support features have dimension {features.shape[-1]}, text embeddings have D={dim}"
        )
    return classes


@dataclass(frozen=True, eq=False)  # holds a tensor: compare by identity
class TextHead:
    """The class text embeddings a head holds, its first field (:class:`ZeroShot`,
    :class:`~focusshot.heads.tip_adapter.TipAdapter`, :class:`~focusshot.heads.lp_pp.LPPlusPlus`);
    its settings come from a settings class (each one's ``with_text`` gives the head)."""

    text_embeddings: Tensor = field(
        metadata={"help": "(C, T, D) or (C, D) class text embeddings"}, repr=False
    )


@dataclass(frozen=True)
class ZeroShotSettings:
    """:class:`ZeroShot`'s settings, all but the text (the ``zeroshot`` method's options)."""

    scale: float = option(100.0, "CLIP's logit scale")

    def __post_init__(self) -> None:
        positive("scale", self.scale)

    def with_text(self, text_embeddings: Tensor) -> ZeroShot:
        """The head with these settings and ``text_embeddings``."""
        return ZeroShot(text_embeddings, **dataclasses.asdict(self))


@register_head("zeroshot")
@dataclass(frozen=True, eq=False)  # holds a tensor: compare by identity
class ZeroShot(ZeroShotSettings, TextHead, Head):
    """CLIP zero-shot classifier: ``logits = scale * cos(q, t_c)``, t_c the template-averaged text embedding.

    ``fit`` learns nothing: it only checks that the support set matches the text embeddings (same
    D, labels below C). :meth:`classifier` builds the fitted head without any support set.

    Args:
        text_embeddings: (C, T, D) class x template text embeddings, or (C, D).
        scale: CLIP's logit scale (100 for the released models).
    """

    def __post_init__(self) -> None:
        text_classifier(self.text_embeddings)  # validates
        super().__post_init__()

    def classifier(self) -> LinearClassifier:
        """The zero-shot classifier: weight (C, D) = normalised class embeddings, queries normalised."""
        w = text_classifier(self.text_embeddings).detach()
        return LinearClassifier(
            w.contiguous(),
            torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
            scale=float(self.scale),
            normalize=True,
            head=self.name,
        )

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> LinearClassifier:
        """Check features (N, D) / labels (N,) against the C text classes and return :meth:`classifier`."""
        fitted = self.classifier()
        check_text_support(features, labels, num_classes, fitted.weight)
        return fitted
