"""The frozen-feature baselines as methods: a classifier head over cached pooled features.

Every method here needs only the *pooled* prefix (DESIGN, "Performance"), so the runner computes
each image's features once and every episode and method reuses them. Methods that need class
names (zero-shot CLIP, Tip-Adapter, Tip-Adapter-F; Zhang et al., ECCV 2022) receive text
embeddings ``(C, T, D)`` from the caller; heads never see a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from focusshot.evaluation.cache import Prefix
from focusshot.heads import FittedHead, create_head, list_heads

#: method name -> (head name, fixed head arguments, needs class-name text embeddings)
_TABLE: dict[str, tuple[str, dict[str, Any], bool]] = {
    "nearest_neighbour": ("nearest_neighbour", {}, False),
    "protonet": ("protonet", {}, False),
    "ridge": ("ridge", {}, False),
    "r2d2": ("r2d2", {}, False),
    "svm": ("svm", {}, False),
    "metaoptnet": ("metaoptnet", {}, False),
    "logistic": ("logistic", {}, False),
    "zeroshot": ("zeroshot", {}, True),
    "tip_adapter": ("tip_adapter", {}, True),
    "tip_adapter_f": ("tip_adapter_f", {}, True),
}


@dataclass(frozen=True)
class FeatureHeadMethod:
    """A method that fits a head on pooled support features.

    Attributes:
        name: the method's name (``focusshot evaluate --method``).
        head: the head's registry name in :mod:`focusshot.heads`.
        head_args: fixed keyword arguments of the head.
        needs_text: the head needs class text embeddings (CLIP backbones only).
    """

    name: str
    head: str
    head_args: dict[str, Any] = field(default_factory=dict)
    needs_text: bool = False

    @property
    def prefix(self) -> Prefix:
        """The frozen prefix this method consumes: pooled features."""
        return Prefix.pooled()

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int,
        *,
        text_embeddings: Tensor | None = None,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> FittedHead:
        """Support features ``(N, D)`` and labels ``(N,)`` -> a fitted head (``logits(query) -> (M, C)``)."""
        args = dict(self.head_args)
        if self.needs_text:
            if text_embeddings is None:
                raise ValueError(f"method {self.name!r} needs class text embeddings: use a CLIP backbone")
            args["text_embeddings"] = text_embeddings
        head = create_head(self.head, **args)
        return head.fit(features, labels, num_classes, val_features=val_features, val_labels=val_labels)


def list_feature_methods() -> list[str]:
    """Names of the frozen-feature methods whose heads are available."""
    heads = set(list_heads())
    return [name for name, (head, _, _) in _TABLE.items() if head in heads]


def create_feature_method(name: str, **head_args: Any) -> FeatureHeadMethod:
    """The frozen-feature method ``name``; extra keyword arguments go to its head."""
    if name not in _TABLE:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(list_feature_methods())}")
    head, fixed, needs_text = _TABLE[name]
    return FeatureHeadMethod(name, head, {**fixed, **head_args}, needs_text)
