"""Linear one-vs-rest SVM head, solved in torch (:func:`focusshot.heads.qp.solve_binary_svm_dual`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from focusshot.heads.base import (
    Head,
    check_support,
    one_of,
    positive,
    register_head,
    solver_features,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.heads.qp import solve_binary_svm_dual
from focusshot.options import option

LOSSES = ("squared_hinge", "hinge")


@register_head("svm")
@dataclass(frozen=True)
class SVM(Head):
    """Linear SVM, one binary problem per class against the rest (Cortes & Vapnik 1995).

    Each class k gets ``w_k, b_k`` from::

        min 1/2 (||w_k||^2 + b_k^2) + C sum_n loss(s_nk (w_k . x_n + b_k)),   s_nk = +1 if y_n = k else -1

    with ``loss(m) = max(0, 1 - m)^2`` (``squared_hinge``) or ``max(0, 1 - m)`` (``hinge``). As in
    LIBLINEAR and scikit-learn's ``LinearSVC``, the intercept is a weight on a constant feature of
    value ``intercept_scaling`` and so is penalised too; the two therefore solve the same problem.
    The duals of all C problems are solved together, to a certified relative duality gap ``tol``.

    Args:
        C: misclassification cost (> 0).
        loss: ``"squared_hinge"`` (the ``LinearSVC`` default) or ``"hinge"``.
        fit_intercept: add the constant feature (a bias per class).
        intercept_scaling: value of that constant feature.
        normalize: L2-normalise support and query features first.
        tol: relative duality gap to reach.
        max_iter: iteration cap of the solver (a warning is raised if it stops there).
    """

    C: float = option(1.0, "misclassification cost")
    loss: str = option("squared_hinge", "squared_hinge (LinearSVC's default) or hinge")
    fit_intercept: bool = option(True, "add a constant feature (a penalised bias per class, as LIBLINEAR)")
    intercept_scaling: float = option(1.0, "value of that constant feature")
    normalize: bool = option(False, "L2-normalise support and query features first")
    tol: float = option(1e-6, "relative duality gap to reach")
    max_iter: int = option(20000, "solver iterations at most")

    def __post_init__(self) -> None:
        positive("C", self.C)
        positive("intercept_scaling", self.intercept_scaling)
        positive("tol", self.tol)
        one_of("loss", self.loss, LOSSES)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> LinearClassifier:
        """Fit W (C, D) and b (C,) to features (N, D), labels (N,). Validation is ignored."""
        classes = check_support(features, labels, num_classes)
        x = solver_features(features, self.normalize)
        dtype = x.dtype
        signs = torch.where(
            torch.nn.functional.one_hot(labels.long(), classes).bool(),
            torch.ones((), dtype=dtype, device=x.device),
            -torch.ones((), dtype=dtype, device=x.device),
        )  # (N, C)
        gram = x @ x.T
        if self.fit_intercept:
            gram = gram + self.intercept_scaling**2
        res = solve_binary_svm_dual(gram, signs, self.C, loss=self.loss, tol=self.tol, max_iter=self.max_iter)
        if not bool(res.converged.all()):
            warnings.warn(
                f"svm: the dual solver stopped at max_iter={self.max_iter} with relative gap "
                f"{float(res.relative_gap.max()):.2e} > tol={self.tol}",
                RuntimeWarning,
                stacklevel=2,
            )
        coef = signs * res.alpha  # (N, C): w_k = sum_n coef[n, k] x_n
        w = coef.T @ x
        if self.fit_intercept:
            b = self.intercept_scaling**2 * coef.sum(0)
        else:
            b = torch.zeros(classes, dtype=dtype, device=x.device)
        return LinearClassifier(
            w.to(features.dtype),
            b.to(features.dtype),
            normalize=self.normalize,
            head=self.name,
            info={
                "C": float(self.C),
                "loss": self.loss,
                "iterations": res.iterations,
                "max_relative_gap": float(res.relative_gap.max()),
                "primal_objective": [float(v) for v in res.primal_objective],
            },
        )
