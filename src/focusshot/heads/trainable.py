"""Fitted heads as trainable linear layers: "initialise from a solver, then fine-tune".

FORT (Wang et al., NeurIPS 2023, Sec. 4) starts the classifier of every fine-tuned model from a
closed-form few-shot solver fitted on the support features: ProtoNet (``W = 2c``,
``b = -||c||^2``, since ``-||q - c||^2 = 2 c.q - ||c||^2 - ||q||^2`` and the last term is shared by
every class), R2D2/ridge, or MetaOptNet (``W = alpha^T S``, ``b = 0``). :func:`linear_form` turns
any fitted head that is linear in the (optionally L2-normalised) query into ``(W, b, normalize)``,
reusing the one copy of every solver in :mod:`focusshot.heads`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from focusshot.heads.base import FittedHead, l2_normalize
from focusshot.heads.linear import LinearClassifier
from focusshot.heads.protonet import PrototypeClassifier

__all__ = ["LinearHead", "linear_form"]


def linear_form(fitted: FittedHead) -> tuple[Tensor, Tensor, bool]:
    """``(W (C, D), b (C,), normalize)`` with ``fitted.logits(q) = W q + b`` up to a per-query constant.

    ``normalize`` says the head scores L2-normalised queries. Raises ``ValueError`` for heads that
    are not linear in the query (nearest neighbour, Tip-Adapter's cache).
    """
    if isinstance(fitted, LinearClassifier):
        if fitted.weight.ndim != 2:
            raise ValueError("a batched (E, C, D) head has no single linear form")
        return fitted.scale * fitted.weight.float(), fitted.scale * fitted.bias.float(), fitted.normalize
    if isinstance(fitted, PrototypeClassifier):
        p = fitted.prototypes.float()
        if fitted.distance == "cosine":
            return p / fitted.temperature, torch.zeros(p.shape[0]), True
        return 2 * p / fitted.temperature, -p.pow(2).sum(-1) / fitted.temperature, False
    raise ValueError(
        f"{type(fitted).__name__} is not linear in the query; initialise from protonet, ridge, r2d2, "
        "svm, metaoptnet or logistic"
    )


class LinearHead(nn.Module):
    """``logits = (f @ W.T + b) / temperature`` over features ``f`` ``(B, D)`` (L2-normalised if asked).

    The parameters hold ``temperature`` times the solver's weights, so the initial logits equal the
    solver's; a temperature > 1 makes the head's effective learning rate ``lr / temperature``
    relative to its weights (FORT's code uses 20 for LoRA, SSF and VPT).
    """

    def __init__(
        self, weight: Tensor, bias: Tensor, normalize: bool = False, temperature: float = 1.0
    ) -> None:
        super().__init__()
        if weight.ndim != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(
                f"weight (C, D) and bias (C,) expected, got {tuple(weight.shape)}, {tuple(bias.shape)}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.weight = nn.Parameter(weight.detach().float().clone() * self.temperature)
        self.bias = nn.Parameter(bias.detach().float().clone() * self.temperature)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, D) -> (B, C)``."""
        f = l2_normalize(features) if self.normalize else features
        return (f @ self.weight.T + self.bias) / self.temperature
