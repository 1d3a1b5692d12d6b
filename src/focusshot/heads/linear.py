"""The fitted form shared by every linear head (ridge, R2D2, SVM, MetaOptNet, logistic probe, zero-shot)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from focusshot.heads.base import FittedHead, check_query, l2_normalize


@dataclass(frozen=True, eq=False)
class LinearClassifier(FittedHead):
    """``logits = scale * (q @ weight.T + bias) + offset``, with ``q`` optionally L2-normalised.

    Attributes:
        weight: (C, D) class weights, or (E, C, D) for E episodes fitted at once.
        bias: (C,) or (E, C) per-class bias (zeros for heads without one).
        scale: a fixed multiplier on the scores (R2D2's alpha, CLIP's logit scale, MetaOptNet's scale).
        offset: a fixed scalar added to every score (R2D2's beta; it changes no prediction).
        normalize: L2-normalise queries before scoring (the head was fitted on normalised features).
        head: the registry name of the head that produced this classifier.
        info: JSON-able facts about the fit (chosen hyper-parameters, solver iterations, duality gap).
    """

    weight: Tensor
    bias: Tensor
    scale: float = 1.0
    offset: float = 0.0
    normalize: bool = False
    head: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim not in (2, 3) or tuple(self.bias.shape) != tuple(self.weight.shape[:-1]):
            raise ValueError(
                f"weight must be (C, D) or (E, C, D) with bias (C,) / (E, C); got {tuple(self.weight.shape)} "
                f"and {tuple(self.bias.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[-2])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def episodes(self) -> int | None:
        """E when fitted on a batch of episodes, else ``None``."""
        return int(self.weight.shape[0]) if self.weight.ndim == 3 else None

    def logits(self, query: Tensor) -> Tensor:
        """(M, D) -> (M, C); for a batched fit (E, M, D) -> (E, M, C)."""
        check_query(query, self.dim, episodes=self.episodes)
        q = query.to(self.weight.dtype)
        if self.normalize:
            q = l2_normalize(q)
        scores = q @ self.weight.transpose(-1, -2) + self.bias.unsqueeze(-2)
        return self.scale * scores + self.offset

    def open_refusals(self) -> dict[str, str]:
        """Open-set scores this classifier cannot give: ``mcm`` unless it is zero-shot CLIP's text
        classifier (its rows the class texts, its queries normalised)."""
        if self.head == "zeroshot" and self.normalize:
            return {}
        return {"mcm": f"its {self.head or 'linear'} classifier's rows are not the class texts"}

    def text_similarities(self, query: Tensor) -> Tensor:
        """(M, D) -> (M, C): cosine similarities to the class texts, for zero-shot CLIP's classifier
        (:meth:`open_refusals`)."""
        why = self.open_refusals().get("mcm")
        if why:
            raise ValueError(why)
        check_query(query, self.dim, episodes=self.episodes)
        return l2_normalize(query.to(self.weight.dtype)) @ self.weight.transpose(-1, -2)
