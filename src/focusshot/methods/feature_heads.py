"""The frozen-feature baselines as methods: a classifier head over cached pooled features.

Every method here reads only the *pooled* prefix (DESIGN, "Performance"), so the runner computes
each image's features once and every episode and method reuses them. Methods that need class
names (zero-shot CLIP, Tip-Adapter, Tip-Adapter-F; Zhang et al., ECCV 2022) receive text
embeddings ``(C, T, D)`` through the fit context; heads never see a model. A method's options
are its head's settings: the head itself (:class:`HeadMethod`), or, for a head that holds class
text embeddings, its settings class (:class:`TextHeadMethod`; ``settings.with_text(text)`` is the
head).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Protocol, TypeVar

from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.heads import (
    R2D2,
    SVM,
    FittedHead,
    Head,
    LogisticRegression,
    MetaOptNet,
    NearestNeighbour,
    ProtoNet,
    Ridge,
    fitted_from_state,
)
from focusshot.heads.lp_pp import LPPlusPlusSettings
from focusshot.heads.tip_adapter import TipAdapterFSettings, TipAdapterSettings
from focusshot.heads.zeroshot import ZeroShotSettings
from focusshot.methods.base import FitContext, Fitted, Method, OptionsT, register_method
from focusshot.methods.open_set import HeadScores
from focusshot.methods.text import need_text

__all__ = ["FeatureHeadMethod", "HeadFitted", "HeadMethod", "TextHeadMethod"]


class HeadFitted(HeadScores, Fitted):
    """A fitted head as a fitted method: ``logits(query (M, D)) -> (M, C)``; its open-set scores
    are the head's (:class:`~focusshot.methods.open_set.HeadScores`)."""

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


class FeatureHeadMethod(Method[OptionsT]):
    """A head fitted on pooled support features."""

    @abstractmethod
    def head(self, ctx: FitContext) -> Head:
        """The head this fit uses."""

    def prefix(self, backbone: Backbone) -> Prefix:
        return Prefix.pooled()

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        val_f, val_l = ctx.val if ctx.val is not None else (None, None)
        fitted = self.head(ctx).fit(support, labels, ctx.num_classes, val_features=val_f, val_labels=val_l)
        return HeadFitted(self.name, fitted)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        return HeadFitted(cls.name, fitted_from_state(state, config["head"]))


H = TypeVar("H", bound=Head)


class HeadMethod(FeatureHeadMethod[H]):
    """A head over pooled features whose options are the head itself."""

    def head(self, ctx: FitContext) -> Head:
        return self.options


class TextSettings(Protocol):
    """The settings of a head that holds class text embeddings."""

    def with_text(self, text_embeddings: Tensor) -> Head:
        """The head with these settings and ``text_embeddings``."""
        ...


S = TypeVar("S", bound=TextSettings)


class TextHeadMethod(FeatureHeadMethod[S]):
    """A head that also reads the class text embeddings (a CLIP backbone); its options are the head's
    settings."""

    needs_text: ClassVar[bool] = True

    def head(self, ctx: FitContext) -> Head:
        return self.options.with_text(need_text(ctx, self.name))


@register_method("nearest_neighbour", auto_order=2)
class NearestNeighbourMethod(HeadMethod[NearestNeighbour]):
    """Cosine nearest neighbour over support features."""

    summary = "cosine nearest neighbour over support features"
    open_score = "distance"


@register_method("protonet", auto_order=1, auto_fallback="any")
class ProtoNetMethod(HeadMethod[ProtoNet]):
    """ProtoNet: nearest class mean (Snell et al., 2017)."""

    summary = "ProtoNet: nearest class mean (Snell et al., 2017)"
    open_score = "distance"


@register_method("ridge", auto_order=3)
class RidgeMethod(HeadMethod[Ridge]):
    """Ridge regression onto one-hot labels."""

    summary = "ridge regression onto one-hot labels"
    open_score = "max_logit"


@register_method("r2d2")
class R2D2Method(HeadMethod[R2D2]):
    """R2D2 closed-form ridge head (Bertinetto et al., 2019)."""

    summary = "R2D2 closed-form ridge head (Bertinetto et al., 2019)"
    open_score = "max_logit"


@register_method("svm")
class SVMMethod(HeadMethod[SVM]):
    """Multi-class linear SVM."""

    summary = "multi-class linear SVM"


@register_method("metaoptnet", auto_order=5)
class MetaOptNetMethod(HeadMethod[MetaOptNet]):
    """MetaOptNet SVM head (Lee et al., 2019)."""

    summary = "MetaOptNet SVM head (Lee et al., 2019)"


@register_method("logistic", auto_order=4)
class LogisticMethod(HeadMethod[LogisticRegression]):
    """Linear probe: L2-regularised logistic regression, C chosen on validation data."""

    summary = "linear probe: L2-regularised logistic regression, C chosen on val"


@register_method("zeroshot", auto_order=6)
class ZeroShotMethod(TextHeadMethod[ZeroShotSettings]):
    """Zero-shot CLIP: class names x prompt templates."""

    summary = "zero-shot CLIP: class names x prompt templates"
    open_score = "max_logit"


@register_method("tip_adapter", auto_order=7, auto_fallback="text")
class TipAdapterMethod(TextHeadMethod[TipAdapterSettings]):
    """Tip-Adapter: training-free cache model (Zhang et al., 2022)."""

    summary = "Tip-Adapter: training-free cache model (Zhang et al., 2022)"
    open_score = "max_logit"


@register_method("tip_adapter_f", auto_order=9)
class TipAdapterFMethod(TextHeadMethod[TipAdapterFSettings]):
    """Tip-Adapter-F: the cache keys fine-tuned."""

    summary = "Tip-Adapter-F: the cache keys fine-tuned"
    open_score = "max_logit"


@register_method("lp_pp", auto_order=8)
class LPPlusPlusMethod(TextHeadMethod[LPPlusPlusSettings]):
    """LP++: linear probe blended with the text classifier (Huang et al., 2024)."""

    summary = "LP++: linear probe blended with the text classifier (Huang et al., 2024)"
