"""MetaOptNet head: the Crammer–Singer multi-class SVM of Lee et al. (CVPR 2019), batched over episodes.

Lee, Maji, Ravichandran & Soatto, "Meta-Learning with Differentiable Convex Optimization", CVPR
2019, fit a Crammer–Singer SVM (Crammer & Singer, JMLR 2001) on each episode's support features by
solving its dual, a QP over ``alpha`` (N, C)::

    max_alpha  -1/2 sum_k ||sum_n alpha[n, k] x_n||^2 + sum_n alpha[n, y_n]
    s.t.       alpha[n, k] <= C * delta(k, y_n),  sum_k alpha[n, k] = 0

and score a query by ``logits[m, k] = scale * sum_n alpha[n, k] (x_n . q_m) = scale * w_k . q_m``.
The paper uses qpth's interior-point solver; here the dual is solved by our own batched solver
(:func:`focusshot.heads.qp.solve_crammer_singer_dual`: a primal-dual active-set method, which
solves few-shot problems exactly in a handful of small Cholesky factorisations, backed by
accelerated projected gradient) to a certified relative duality gap, any number of episodes at
once: features (E, N, D), labels (E, N).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from focusshot.heads.base import (
    Head,
    check_support,
    one_hot,
    positive,
    register_head,
    solver_features,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.heads.qp import solve_crammer_singer_dual
from focusshot.options import option


@register_head("metaoptnet")
@dataclass(frozen=True)
class MetaOptNet(Head):
    """Crammer–Singer multi-class linear SVM, MetaOptNet's base learner (no bias, as in the paper).

    ``fit`` takes one episode, features (N, D) and labels (N,), or E episodes at once, features
    (E, N, D) and labels (E, N) (every episode with the same N and C); the fitted classifier then
    scores (M, D) -> (M, C), or (E, M, D) -> (E, M, C).

    Args:
        C: the SVM cost; 0.1 is MetaOptNet's ``C_reg``.
        scale: fixed multiplier on the logits (MetaOptNet meta-learns one, initialised to 1).
        normalize: L2-normalise support and query features first.
        tol: relative duality gap at which an episode counts as solved.
        max_iter: iteration cap of the projected-gradient solver (a warning is raised for episodes
            not solved by then).
    """

    C: float = option(0.1, "SVM cost (MetaOptNet's C_reg)")
    scale: float = option(1.0, "fixed multiplier on the logits")
    normalize: bool = option(False, "L2-normalise support and query features first")
    tol: float = option(1e-6, "relative duality gap at which an episode counts as solved")
    max_iter: int = option(20000, "solver iterations at most")

    def __post_init__(self) -> None:
        positive("C", self.C)
        positive("scale", self.scale)
        positive("tol", self.tol)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> LinearClassifier:
        """Fit W (C, D) to features (N, D) / labels (N,), or W (E, C, D) to (E, N, D) / (E, N).

        Validation data is ignored. ``info`` records the dual objective per episode (maximisation
        form), the relative duality gap and the iteration count.
        """
        batched = isinstance(features, Tensor) and features.ndim == 3
        classes = check_support(features, labels, num_classes, batched=batched)
        x = solver_features(features, self.normalize)
        dtype = x.dtype
        gram = x @ x.transpose(-1, -2)
        res = solve_crammer_singer_dual(
            gram, one_hot(labels, classes, dtype), self.C, tol=self.tol, max_iter=self.max_iter
        )
        if not bool(res.converged.all()):
            bad = int((~res.converged).sum())
            warnings.warn(
                f"metaoptnet: {bad} episode(s) stopped at max_iter={self.max_iter} with relative gap up to "
                f"{float(res.relative_gap.max()):.2e} > tol={self.tol}",
                RuntimeWarning,
                stacklevel=2,
            )
        w = res.alpha.transpose(-1, -2) @ x  # (..., C, D): w_k = sum_n alpha[n, k] x_n
        dual = res.dual_objective.reshape(-1).tolist()
        return LinearClassifier(
            w.to(features.dtype).contiguous(),
            torch.zeros(w.shape[:-1], dtype=features.dtype, device=features.device),
            scale=float(self.scale),
            normalize=self.normalize,
            head=self.name,
            info={
                "C": float(self.C),
                "iterations": res.iterations,
                "max_relative_gap": float(res.relative_gap.max()),
                "dual_objective": dual if batched else dual[0],
            },
        )
