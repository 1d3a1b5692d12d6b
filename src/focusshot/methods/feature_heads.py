"""The frozen-feature baselines as methods: a classifier head over cached pooled features.

Every method here reads only the *pooled* prefix (DESIGN, "Performance"), so the runner computes
each image's features once and every episode and method reuses them. Methods that need class
names (zero-shot CLIP, Tip-Adapter, Tip-Adapter-F; Zhang et al., ECCV 2022) receive text
embeddings ``(C, T, D)`` through the fit context; heads never see a model. A method's options
are its head's settings (the head's dataclass fields, less the text embeddings).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.heads import FittedHead, create_head, fitted_from_state, list_heads
from focusshot.heads.base import _lookup, class_fields
from focusshot.methods.base import FitContext, Fitted, Method, register_method

#: method name -> (head name, needs class-name text embeddings, one line of help, place among
#: ``fit --method auto``'s candidates (cheapest first; None: not one), auto's fallback kind)
_TABLE: dict[str, tuple[str, bool, str, float | None, str]] = {
    "nearest_neighbour": (
        "nearest_neighbour",
        False,
        "cosine nearest neighbour over support features",
        2,
        "",
    ),
    "protonet": ("protonet", False, "ProtoNet: nearest class mean (Snell et al., 2017)", 1, "any"),
    "ridge": ("ridge", False, "ridge regression onto one-hot labels", 3, ""),
    "r2d2": ("r2d2", False, "R2D2 closed-form ridge head (Bertinetto et al., 2019)", None, ""),
    "svm": ("svm", False, "multi-class linear SVM", None, ""),
    "metaoptnet": ("metaoptnet", False, "MetaOptNet SVM head (Lee et al., 2019)", 5, ""),
    "logistic": (
        "logistic",
        False,
        "linear probe: L2-regularised logistic regression, C chosen on val",
        4,
        "",
    ),
    "zeroshot": ("zeroshot", True, "zero-shot CLIP: class names x prompt templates", 6, ""),
    "tip_adapter": (
        "tip_adapter",
        True,
        "Tip-Adapter: training-free cache model (Zhang et al., 2022)",
        7,
        "text",
    ),
    "tip_adapter_f": ("tip_adapter_f", True, "Tip-Adapter-F: the cache keys fine-tuned", 9, ""),
    "lp_pp": (
        "lp_pp",
        True,
        "LP++: linear probe blended with the text classifier (Huang et al., 2024)",
        8,
        "",
    ),
}

_TEXT_FIELD = "text_embeddings"


def _options_of(head: str) -> type:
    """A dataclass with the head's settings (text embeddings excluded): the method's options."""
    cls = _lookup(head)
    fields = []
    for f in class_fields(cls):
        if not f.init or f.name == _TEXT_FIELD:
            continue
        kw: dict[str, Any] = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        fields.append((f.name, f.type, dataclasses.field(**kw)))
    return dataclasses.make_dataclass(f"{cls.__name__}Options", fields, frozen=True)


class HeadFitted(Fitted):
    """A fitted head as a fitted method: ``logits(query (M, D)) -> (M, C)``."""

    def __init__(self, method: str, head: FittedHead) -> None:
        self.method = method
        self.head = head

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.head.logits(query)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def state_dict(self) -> dict[str, Tensor]:
        return self.head.state_dict()

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "head": self.head.config()}

    def info(self) -> dict[str, Any]:
        cfg = self.head.config()
        flat = {**cfg, **(cfg.get("info") or {})}
        keep = (int, float, str, bool)
        return {k: v for k, v in flat.items() if isinstance(v, keep) and k not in ("type", "head")}


class FeatureHeadMethod(Method):
    """A head fitted on pooled support features (subclassed once per head below)."""

    head: ClassVar[str] = ""

    def prefix(self, backbone: Backbone) -> Prefix:
        return Prefix.pooled()

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        args = dataclasses.asdict(self.options)
        if self.needs_text:
            if ctx.text is None:
                raise ValueError(f"method {self.name!r} needs class text embeddings: use a CLIP backbone")
            args[_TEXT_FIELD] = ctx.text
        val_f, val_l = ctx.val if ctx.val is not None else (None, None)
        fitted = create_head(self.head, **args).fit(
            support, labels, ctx.num_classes, val_features=val_f, val_labels=val_l
        )
        return HeadFitted(self.name, fitted)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        return HeadFitted(cls.name, fitted_from_state(state, config["head"]))


def _register_all() -> None:
    heads = set(list_heads())
    for name, (head, text, summary, auto_order, fallback) in _TABLE.items():
        if head not in heads:
            continue
        cls = type(
            f"{head.title().replace('_', '')}Method",
            (FeatureHeadMethod,),
            {
                "head": head,
                "Options": _options_of(head),
                "needs_text": text,
                "summary": summary,
                "__doc__": summary,
                "__module__": __name__,
            },
        )
        register_method(name, auto_order=auto_order, auto_fallback=fallback)(cls)


_register_all()
