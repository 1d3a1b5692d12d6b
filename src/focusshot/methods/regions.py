"""What the region methods share: FALIP (:mod:`focusshot.methods.falip`) and the drawn visual
prompts (:mod:`focusshot.methods.drawn_prompts`) both score a query by a zero-shot CLIP head over
features that depend on each image's region.

Regions arrive as ``(M, 4)`` boxes in ``[0, 1]`` coordinates of the evaluation crop (a NaN row:
the image has none), from ``FitContext.regions`` for the support set and ``logits(query,
regions=...)`` for the queries. ``missing_box`` says what an image without a box gets: ``error``
(the run stops, naming the image) or ``whole`` (no region: counted as ``regions_missing``).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from focusshot.backbones.base import Backbone
from focusshot.heads import FittedHead
from focusshot.heads.linear import LinearClassifier
from focusshot.heads.zeroshot import ZeroShot
from focusshot.methods.base import FitContext, Fitted
from focusshot.methods.open_set import HeadScores
from focusshot.methods.text import need_text

__all__ = [
    "MISSING_BOX",
    "REGIONS",
    "RegionHeadFitted",
    "check_region_options",
    "device_dtype",
    "resolve_regions",
    "zeroshot_classifier",
]

#: where a region comes from: the data's boxes, none (the whole image), or found by rollout
REGIONS = ("box", "whole", "auto")
#: what an image without a box gets
MISSING_BOX = ("error", "whole")


def check_region_options(region: str, missing_box: str, scale: float, batch_size: int) -> None:
    """Raise ``ValueError`` naming the option unless the options every region method has are valid."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {list(REGIONS)}, got {region!r}")
    if missing_box not in MISSING_BOX:
        raise ValueError(f"missing_box must be one of {list(MISSING_BOX)}, got {missing_box!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where ``module``'s parameters live and their dtype (the CPU and float32 when it has none)."""
    p = next(module.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def zeroshot_classifier(ctx: FitContext, method: str, scale: float) -> LinearClassifier:
    """Zero-shot CLIP's classifier of the fit's class texts, logit scale ``scale`` (nothing is learnt)."""
    return ZeroShot(text_embeddings=need_text(ctx, method), scale=scale).classifier()


def resolve_regions(method: str, region: str, missing_box: str, regions: Tensor | None) -> Tensor | None:
    """The boxes a fit uses: ``None`` for whole/auto; the given ones for box (or ``None`` when the
    caller has none and ``missing_box`` is ``whole``)."""
    if region != "box":
        return None
    if regions is None:
        if missing_box == "whole":
            return None
        raise ValueError(
            f"method {method!r} (region='box') needs a region per image: pass regions=(M, 4) boxes in "
            "[0, 1] crop coordinates, or use region='auto' / missing_box='whole'"
        )
    return regions.detach().to(torch.float32).cpu()


class RegionHeadFitted(HeadScores, Fitted):
    """A head over region-dependent features: ``logits(query, regions) = head(features(query, regions))``;
    its open-set scores are the head's, over those features."""

    head: FittedHead
    backbone: Backbone

    @abstractmethod
    def features(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """Features ``(M, D)`` of the query prefix under ``regions`` ``(M, 4)``."""

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.head.logits(self.features(query, regions))

    def head_features(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.features(query, regions)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def state_dict(self) -> dict[str, Tensor]:
        return self.head.state_dict()

    def attention_model(self) -> Backbone | None:
        """The backbone, whose attention under this method's region (bias or drawn prompt) is recorded
        while :meth:`logits` runs."""
        return self.backbone
