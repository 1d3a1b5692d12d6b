"""Prototypical-network head: nearest class centroid (Snell, Swersky & Zemel, NeurIPS 2017)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from focusshot.heads.base import (
    FittedHead,
    Head,
    check_query,
    check_support,
    l2_normalize,
    one_hot,
    one_of,
    positive,
    register_head,
)
from focusshot.options import option

DISTANCES = ("euclidean", "cosine")


@dataclass(frozen=True, eq=False)
class PrototypeClassifier(FittedHead):
    """Scores queries against class prototypes.

    ``euclidean``: ``logits[m, c] = -||q_m - p_c||^2 / temperature`` (Snell et al., eq. 2).
    ``cosine``:    ``logits[m, c] = cos(q_m, p_c) / temperature``.

    Attributes:
        prototypes: (C, D) class prototypes (unit-norm for cosine).
        distance: ``"euclidean"`` or ``"cosine"``.
        temperature: divides the scores; it changes no prediction, only the softmax's sharpness.
    """

    prototypes: Tensor
    distance: str = "euclidean"
    temperature: float = 1.0

    @property
    def num_classes(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.prototypes.shape[1])

    def logits(self, query: Tensor) -> Tensor:
        """(M, D) -> (M, C)."""
        check_query(query, self.dim)
        q = query.to(self.prototypes.dtype)
        p = self.prototypes
        if self.distance == "cosine":
            return (l2_normalize(q) @ p.T) / self.temperature
        sq = (q.pow(2).sum(-1, keepdim=True) - 2 * q @ p.T + p.pow(2).sum(-1)).clamp_min(0)
        return -sq / self.temperature

    def nearest_distance(self, query: Tensor) -> Tensor:
        """(M, D) -> (M,): distance to the nearest prototype (Euclidean; ``1 - cos`` for cosine),
        the temperature left out (the open-set ``distance`` score is minus it)."""
        scores = self.logits(query) * self.temperature  # -squared distance, or cosine
        if self.distance == "cosine":
            return 1.0 - scores.amax(-1)
        return (-scores.amax(-1)).clamp_min(0).sqrt()


@register_head("protonet")
@dataclass(frozen=True)
class ProtoNet(Head):
    """Nearest-centroid classifier (ProtoNet; Snell et al., NeurIPS 2017).

    Prototypes are class means of the support features (``euclidean``), or class means of the
    L2-normalised support features, normalised again (``cosine``).

    Args:
        distance: ``"euclidean"`` (squared, as in the paper) or ``"cosine"``.
        temperature: scores are divided by it (for cosine, values around 0.1 give useful
            probabilities; it never changes a prediction).
    """

    distance: str = option("euclidean", "euclidean (squared, as in the paper) or cosine")
    temperature: float = option(1.0, "scores are divided by it (never changes a prediction)")

    def __post_init__(self) -> None:
        one_of("distance", self.distance, DISTANCES)
        positive("temperature", self.temperature)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> PrototypeClassifier:
        """Class means of features (N, D) grouped by labels (N,) -> prototypes (C, D).

        Validation data is ignored.
        """
        classes = check_support(features, labels, num_classes)
        x = l2_normalize(features) if self.distance == "cosine" else features
        y = one_hot(labels, classes, x.dtype)  # (N, C)
        protos = (y.T @ x) / y.sum(0).unsqueeze(1)
        if self.distance == "cosine":
            protos = l2_normalize(protos)
        return PrototypeClassifier(protos.detach().contiguous(), self.distance, float(self.temperature))
