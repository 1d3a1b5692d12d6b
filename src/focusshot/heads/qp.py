"""Batched solvers, in torch, for the SVM duals behind :mod:`svm` and :mod:`metaoptnet`.

Both duals are convex quadratic programs over a matrix of dual variables ``alpha`` (N, K) whose
Hessian is ``K_gram (x) I`` (the Gram matrix of the support features, shared by every column) and
whose feasible set splits row by row (or entry by entry) into sets with an exact, cheap Euclidean
projection. That makes accelerated projected gradient (FISTA; Beck & Teboulle, SIAM J. Imaging
Sci. 2009) with gradient-based adaptive restart (O'Donoghue & Candes, Found. Comput. Math. 2015)
a good fit: one iteration is a batched (N, N) @ (N, K) product plus a projection, and any number of
episodes E run in lock-step as a leading batch dimension.

Exactness comes from a certificate, not an iteration count: the primal objective is evaluated at
the primal point the dual iterate defines, and a problem counts as solved when the duality gap
``P - D <= tol * max(|P|, |D|)``. Since the dual optimum lies in ``[D, P]``, the returned dual
objective is within that relative gap of the optimum.

All tensors here are (..., N, N) Gram matrices and (..., N, K) dual variables; the leading ``...``
is any batch of independent problems (episodes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "QPResult",
    "project_simplex",
    "solve_binary_svm_dual",
    "solve_crammer_singer_dual",
]


@dataclass(frozen=True)
class QPResult:
    """A batch of solved duals.

    Attributes:
        alpha: (..., N, K) dual variables.
        dual_objective: (...,) dual objective in its *maximisation* form (the textbook one).
        primal_objective: (...,) primal objective at the primal point defined by ``alpha``.
        gap: (...,) ``primal_objective - dual_objective`` (>= 0 up to rounding).
        iterations: iterations run (the same for the whole batch).
        converged: (...,) bool, whether the relative gap reached the tolerance.
    """

    alpha: Tensor
    dual_objective: Tensor
    primal_objective: Tensor
    gap: Tensor
    iterations: int
    converged: Tensor

    @property
    def relative_gap(self) -> Tensor:
        """(...,) ``gap / max(|P|, |D|)``."""
        scale = torch.maximum(self.primal_objective.abs(), self.dual_objective.abs())
        return self.gap / scale.clamp_min(torch.finfo(scale.dtype).tiny)


def project_simplex(v: Tensor, radius: float) -> Tensor:
    """Euclidean projection of each row of ``v`` (..., K) onto ``{b >= 0, sum(b) = radius}``.

    The sort-based algorithm of Held, Wolfe & Crowder (1974) / Duchi et al. (ICML 2008); exact.
    ``radius`` must be positive.
    """
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - radius
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    active = (u * k > css).sum(-1, keepdim=True)  # the condition holds on a prefix, at least k = 1
    theta = css.gather(-1, active - 1) / active.to(v.dtype)
    return (v - theta).clamp_min(0)


def _largest_eigenvalue(gram: Tensor) -> Tensor:
    """(..., N, N) symmetric PSD -> (..., 1, 1) its largest eigenvalue (the gradient's Lipschitz constant)."""
    top: Tensor = torch.linalg.eigvalsh(gram)[..., -1]
    return top.clamp_min(torch.finfo(gram.dtype).tiny)[..., None, None]


def _fista(
    grad: Callable[[Tensor], Tensor],
    project: Callable[[Tensor], Tensor],
    objectives: Callable[[Tensor], tuple[Tensor, Tensor]],
    x0: Tensor,
    step: Tensor,
    *,
    tol: float,
    max_iter: int,
    check_every: int,
    per_column: bool = False,
) -> tuple[Tensor, Tensor, Tensor, int, Tensor]:
    """Minimise a smooth convex f over a set with projection ``project``, batched over leading dims.

    ``x0`` is (..., N, K). One problem is one (N, K) matrix, or one column of it when
    ``per_column`` (then momentum restarts and the stopping test run per column). ``grad(x)`` is
    f's gradient, ``step`` (..., 1, 1) is 1/L, ``objectives(x)`` returns the (primal, dual)
    objective pair per problem, (...,) or (..., K). Returns ``(x, primal, dual, iterations, converged)``.
    """
    x = x0
    z = x0
    dims: tuple[int, ...] = (-2,) if per_column else (-2, -1)
    t = torch.ones(*x0.shape[:-2], 1, x0.shape[-1] if per_column else 1, dtype=x0.dtype, device=x0.device)
    primal, dual = objectives(x)
    it = 0
    while True:
        gap = primal - dual
        scale = torch.maximum(primal.abs(), dual.abs()).clamp_min(torch.finfo(x0.dtype).tiny)
        converged = gap <= tol * scale
        if it >= max_iter or bool(converged.all()):
            return x, primal, dual, it, converged
        for _ in range(check_every):
            g = grad(z)
            x_new = project(z - step * g)
            # restart the momentum where it points uphill (O'Donoghue & Candes' gradient scheme)
            uphill = (g * (x_new - x)).sum(dims, keepdim=True) > 0
            t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            momentum = torch.where(uphill, torch.zeros_like(t), (t - 1.0) / t_new)
            t = torch.where(uphill, torch.ones_like(t), t_new)
            z = x_new + momentum * (x_new - x)
            x = x_new
            it += 1
        primal, dual = objectives(x)


def solve_crammer_singer_dual(
    gram: Tensor,
    labels_one_hot: Tensor,
    C: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 20000,
    check_every: int = 10,
) -> QPResult:
    """Solve the dual of the Crammer–Singer multi-class SVM, as MetaOptNet uses it.

    Primal (Crammer & Singer, JMLR 2001; Lee et al., "Meta-Learning with Differentiable Convex
    Optimization", CVPR 2019, eq. 8)::

        min_{w, xi}  1/2 sum_k ||w_k||^2 + C sum_n xi_n
        s.t.  w_{y_n} . x_n - w_k . x_n >= 1 - delta(k, y_n) - xi_n     for all n, k

    Dual (MetaOptNet eq. 9), with ``w_k = sum_n alpha[n, k] x_n``::

        max_alpha  -1/2 sum_k ||w_k||^2 + sum_n alpha[n, y_n]
        s.t.  alpha[n, k] <= C * delta(k, y_n),   sum_k alpha[n, k] = 0     for all n

    Per sample, ``C * y_n - alpha[n]`` lies on the simplex of radius C, so the projection is a
    simplex projection (:func:`project_simplex`).

    Args:
        gram: (..., N, N) linear kernel ``X X^T`` of the support features.
        labels_one_hot: (..., N, K) one-hot labels (K classes).
        C: the SVM cost (MetaOptNet's ``C_reg``), positive.
        tol: relative duality gap at which a problem counts as solved.
        max_iter: iteration cap; problems not solved by then have ``converged`` False.
        check_every: iterations between duality-gap evaluations.

    Returns:
        A :class:`QPResult` with ``alpha`` (..., N, K).
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    Y = labels_one_hot.to(gram.dtype)
    CY = C * Y
    step = 1.0 / _largest_eigenvalue(gram)

    def grad(a: Tensor) -> Tensor:
        return gram @ a - Y

    def project(a: Tensor) -> Tensor:
        return CY - project_simplex(CY - a, C)

    def objectives(a: Tensor) -> tuple[Tensor, Tensor]:
        scores = gram @ a  # scores[n, k] = w_k . x_n
        quad = (a * scores).sum((-2, -1))  # sum_k ||w_k||^2
        true = (scores * Y).sum(-1, keepdim=True)
        slack = (scores + 1.0 - Y - true).amax(-1).clamp_min(0)  # xi_n at this w
        primal = 0.5 * quad + C * slack.sum(-1)
        dual = -0.5 * quad + (a * Y).sum((-2, -1))
        return primal, dual

    alpha, primal, dual, iters, converged = _fista(
        grad,
        project,
        objectives,
        torch.zeros_like(Y),
        step,
        tol=tol,
        max_iter=max_iter,
        check_every=check_every,
    )
    return QPResult(alpha, dual, primal, primal - dual, iters, converged)


def solve_binary_svm_dual(
    gram: Tensor,
    signs: Tensor,
    C: float,
    *,
    loss: str = "squared_hinge",
    tol: float = 1e-6,
    max_iter: int = 20000,
    check_every: int = 10,
) -> QPResult:
    """Solve K binary linear SVM duals that share one Gram matrix (one-vs-rest), batched.

    Primal per column k, with ``s[n] = signs[n, k]`` in {-1, +1} (Cortes & Vapnik 1995; the L2-loss
    form as in LIBLINEAR, Fan et al. JMLR 2008)::

        hinge:          min_w 1/2 ||w||^2 + C sum_n max(0, 1 - s_n w . x_n)
        squared_hinge:  min_w 1/2 ||w||^2 + C sum_n max(0, 1 - s_n w . x_n)^2

    Dual, with ``Q = diag(s) K diag(s)`` and ``w = sum_n alpha_n s_n x_n``::

        hinge:          max_alpha  sum(alpha) - 1/2 alpha^T Q alpha,                   0 <= alpha <= C
        squared_hinge:  max_alpha  sum(alpha) - 1/2 alpha^T Q alpha - ||alpha||^2/(4C), alpha >= 0

    A bias is handled by the caller by augmenting ``gram`` (an extra constant feature).

    Args:
        gram: (..., N, N) linear kernel of the support features.
        signs: (..., N, K) +-1 targets, one column per binary problem.
        C: the SVM cost, positive.
        loss: ``"hinge"`` or ``"squared_hinge"``.
        tol, max_iter, check_every: as in :func:`solve_crammer_singer_dual`.

    Returns:
        A :class:`QPResult` with ``alpha`` (..., N, K) >= 0 and objectives, gap and ``converged``
        per binary problem, (..., K).
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    if loss not in ("hinge", "squared_hinge"):
        raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {loss!r}")
    s = signs.to(gram.dtype)
    diag = 0.0 if loss == "hinge" else 1.0 / (2.0 * C)
    step = 1.0 / (_largest_eigenvalue(gram) + diag)

    def grad(a: Tensor) -> Tensor:
        return s * (gram @ (s * a)) + diag * a - 1.0

    if loss == "hinge":

        def project(a: Tensor) -> Tensor:
            return a.clamp(0.0, C)

    else:

        def project(a: Tensor) -> Tensor:
            return a.clamp_min(0.0)

    def objectives(a: Tensor) -> tuple[Tensor, Tensor]:
        margins = s * (gram @ (s * a))  # s_n w . x_n
        quad = (a * margins).sum(-2)  # ||w||^2 per column
        hinge = (1.0 - margins).clamp_min(0)
        if loss == "hinge":
            primal = 0.5 * quad + C * hinge.sum(-2)
            dual = -0.5 * quad + a.sum(-2)
        else:
            primal = 0.5 * quad + C * (hinge * hinge).sum(-2)
            dual = -0.5 * quad - 0.5 * diag * (a * a).sum(-2) + a.sum(-2)
        return primal, dual

    alpha, primal, dual, iters, converged = _fista(
        grad,
        project,
        objectives,
        torch.zeros_like(s),
        step,
        tol=tol,
        max_iter=max_iter,
        check_every=check_every,
        per_column=True,
    )
    return QPResult(alpha, dual, primal, primal - dual, iters, converged)
