"""Nearest-neighbour head: a query takes the label of its most similar support example.

The 1-NN rule (Cover & Hart, "Nearest neighbor pattern classification", IEEE Trans. Inf. Theory
1967), with cosine similarity as in the few-shot baselines of Vinyals et al. (Matching Networks,
NeurIPS 2016) and Wang et al. (SimpleShot, 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from focusshot.heads.base import (
    FittedHead,
    Head,
    check_query,
    check_support,
    l2_normalize,
    one_of,
    register_head,
)
from focusshot.options import option

METRICS = ("cosine", "euclidean")


@dataclass(frozen=True, eq=False)
class NearestNeighbourClassifier(FittedHead):
    """Scores each class by its best-matching support example.

    ``logits[m, c]`` is the largest cosine similarity between query m and a support example of
    class c (``metric="cosine"``), or minus the smallest squared Euclidean distance
    (``metric="euclidean"``); the arg-max is the 1-NN prediction.

    Attributes:
        support: (N, D) support features (L2-normalised for cosine).
        labels: (N,) int64 support labels.
        classes: C.
        metric: ``"cosine"`` or ``"euclidean"``.
    """

    support: Tensor
    labels: Tensor
    classes: int
    metric: str = "cosine"

    @property
    def num_classes(self) -> int:
        return self.classes

    @property
    def dim(self) -> int:
        return int(self.support.shape[-1])

    def logits(self, query: Tensor) -> Tensor:
        """(M, D) -> (M, C)."""
        check_query(query, self.dim)
        q = query.to(self.support.dtype)
        if self.metric == "cosine":
            sim = l2_normalize(q) @ self.support.T
        else:
            sim = -(q.pow(2).sum(-1, keepdim=True) - 2 * q @ self.support.T + self.support.pow(2).sum(-1))
        out = sim.new_full((q.shape[0], self.classes), float("-inf"))
        return out.scatter_reduce(1, self.labels.expand(q.shape[0], -1), sim, reduce="amax")

    def nearest_distance(self, query: Tensor) -> Tensor:
        """(M, D) -> (M,): distance to the nearest support feature (Euclidean; ``1 - cos`` for
        cosine; the open-set ``distance`` score is minus it)."""
        best = self.logits(query).amax(-1)
        return 1.0 - best if self.metric == "cosine" else (-best).clamp_min(0).sqrt()


@register_head("nearest_neighbour")
@dataclass(frozen=True)
class NearestNeighbour(Head):
    """1-nearest-neighbour classifier over support features (cosine similarity by default).

    Args:
        metric: ``"cosine"`` (features L2-normalised) or ``"euclidean"`` (squared distance).
    """

    metric: str = option(
        "cosine", "similarity: cosine (features L2-normalised) or euclidean (squared distance)"
    )

    def __post_init__(self) -> None:
        one_of("metric", self.metric, METRICS)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> NearestNeighbourClassifier:
        """Store the (normalised) support set: features (N, D), labels (N,). Validation is ignored."""
        classes = check_support(features, labels, num_classes)
        support = l2_normalize(features) if self.metric == "cosine" else features
        return NearestNeighbourClassifier(
            support.detach().clone(), labels.long().clone(), classes, self.metric
        )
