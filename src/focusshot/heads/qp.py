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

Under an enclosing deadline (:func:`focusshot.deadlines.deadline`) the solvers check it at every
duality-gap check of the projected gradient and every active-set round, and raise
:class:`~focusshot.deadlines.DeadlineExceeded` once it has passed; without one nothing is read
and every result is the same. (No pace is projected: how many iterations a problem needs is not
known in advance.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from focusshot.deadlines import check_deadline

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
    With ``u`` sorted decreasingly, the threshold is ``theta = max_j (u_1 + ... + u_j - radius) / j``
    (``t_j = t_{j-1} + (u_j - t_{j-1}) / j`` rises while ``u_j`` is in the support and falls
    after it), so no search for the support size is needed. ``radius`` must be positive.
    """
    u, _ = torch.sort(v, dim=-1, descending=True)
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    theta = ((u.cumsum(-1) - radius) / k).amax(-1, keepdim=True)
    return (v - theta).clamp_min(0)


#: How many times :func:`solve_crammer_singer_dual` tries its active-set method (at gap checks,
#: from the projected-gradient iterate).
_ACTIVE_SET_ATTEMPTS = 4

#: Up to this many samples the first active-set attempt starts from alpha = 0; beyond, after
#: :data:`_ACTIVE_SET_WARMUP` projected-gradient iterations. From zero the second round puts every
#: class in every support (K Cholesky factorisations of the full N x N Gram matrix), which costs
#: more than the iterations that bring the supports close to their final size (measured on
#: 512-d features: from zero is best up to N ~ 70, a warm start of 30-80 iterations from N ~ 100).
_ACTIVE_SET_COLD_MAX_N = 80
_ACTIVE_SET_WARMUP = 50


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
    polish: Callable[[Tensor, Tensor, Tensor, int], Tensor | None] | None = None,
) -> tuple[Tensor, Tensor, Tensor, int, Tensor]:
    """Minimise a smooth convex f over a set with projection ``project``, batched over leading dims.

    ``x0`` is (..., N, K). One problem is one (N, K) matrix, or one column of it when
    ``per_column`` (then momentum restarts and the stopping test run per column). ``grad(x)`` is
    f's gradient, ``step`` (..., 1, 1) is 1/L, ``objectives(x)`` returns the (primal, dual)
    objective pair per problem, (...,) or (..., K). At every gap check an optional
    ``polish(x, relative gap, converged, iterations so far)`` may return a better feasible point
    (or None); the iteration then restarts from it. Returns ``(x, primal, dual, iterations, converged)``.
    """
    x = x0
    z = x0
    dims: tuple[int, ...] = (-2,) if per_column else (-2, -1)
    shape_t = (*x0.shape[:-2], 1, x0.shape[-1] if per_column else 1)
    t = torch.ones(shape_t, dtype=x0.dtype, device=x0.device)
    primal, dual = objectives(x)
    it = 0
    polished = False
    while True:
        gap = primal - dual
        scale = torch.maximum(primal.abs(), dual.abs()).clamp_min(torch.finfo(x0.dtype).tiny)
        converged = gap <= tol * scale
        if it >= max_iter or bool(converged.all()):
            return x, primal, dual, it, converged
        check_deadline(f"the dual solver at iteration {it}")
        if polish is not None and not polished:
            better = polish(x, gap / scale, converged, it)
            if better is not None:
                x = z = better
                t = torch.ones(shape_t, dtype=x0.dtype, device=x0.device)
                primal, dual = objectives(x)
                polished = True
                continue
        polished = False
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


def _restricted_crammer_singer(
    gram: Tensor, linear: Tensor, C: float, support: Tensor
) -> tuple[Tensor, Tensor]:
    """Solve the Crammer–Singer dual with each ``beta[n]`` restricted to the classes in ``support[n]``.

    In ``beta = C Y - alpha`` the dual is ``min 1/2 sum_k beta_k^T K beta_k + <linear, beta>``
    with every row of beta on the simplex of radius C. With the bound ``beta >= 0`` dropped and
    ``beta[n, k] = 0`` imposed off the support, the KKT conditions are linear: on class k's
    support rows ``S_k``, ``K_kk beta_k + linear_k = nu`` (``K_kk`` the Gram matrix on ``S_k``,
    ``nu`` (N,) the row-sum multipliers), and ``sum_k beta[n, k] = C``. Eliminating
    ``beta_k = K_kk^-1 (nu - linear_k)`` leaves ``(sum_k K_kk^-1) nu = C + sum_k K_kk^-1 linear_k``,
    an (N, N) positive-definite system. The K per-class factorisations are batched, each padded to
    the largest support with an identity block.

    Args:
        gram: (E, N, N) Gram matrices; linear: (E, N, K) ``Y - C K Y``; support: (E, N, K) bool,
            at least one class per row.

    Returns:
        ``(beta (E, N, K), ok (E,))``; ok is False where a factorisation failed (a singular Gram
        matrix on some support) or the result is not finite.
    """
    e, n, k = linear.shape
    on = support.transpose(1, 2)  # (E, K, N)
    size = int(on.sum(-1).max())
    rows = torch.argsort((~on).to(torch.uint8), dim=-1, stable=True)[..., :size]  # (E, K, m): support first
    valid = torch.gather(on, -1, rows).to(gram.dtype)
    ep = torch.arange(e, device=gram.device)[:, None, None]
    pad = torch.diag_embed(1.0 - valid)
    block = (
        gram[ep[..., None], rows[..., :, None], rows[..., None, :]]
        * valid[..., :, None]
        * valid[..., None, :]
    )
    factor, info = torch.linalg.cholesky_ex(block + pad)
    factor = torch.where(
        (info == 0)[..., None, None], factor, torch.eye(size, dtype=gram.dtype, device=gram.device)
    )
    inverse = torch.cholesky_inverse(factor) - pad  # (E, K, m, m): zero outside the support block
    lin = torch.gather(linear.transpose(1, 2), -1, rows) * valid
    schur = gram.new_zeros(e, n, n)
    schur.index_put_((ep[..., None], rows[..., :, None], rows[..., None, :]), inverse, accumulate=True)
    rhs = gram.new_full((e, n), C)
    rhs.index_put_((ep, rows), (inverse @ lin[..., None]).squeeze(-1), accumulate=True)
    schur_factor, schur_info = torch.linalg.cholesky_ex(schur)
    schur_factor = torch.where(
        (schur_info == 0)[..., None, None], schur_factor, torch.eye(n, dtype=gram.dtype, device=gram.device)
    )
    nu = torch.cholesky_solve(rhs[..., None], schur_factor).squeeze(-1)  # (E, N)
    nu_k = torch.gather(nu[:, None, :].expand(e, k, n), -1, rows) * valid
    beta_k = (inverse @ (nu_k - lin)[..., None]).squeeze(-1)  # (E, K, m), zero on the padding
    beta = gram.new_zeros(e, k, n).scatter_(-1, rows, beta_k).transpose(1, 2)
    ok = (info == 0).all(-1) & (schur_info == 0) & torch.isfinite(beta).all(-1).all(-1)
    return beta, ok


def _active_set_crammer_singer(
    gram: Tensor, labels_one_hot: Tensor, C: float, alpha: Tensor
) -> Iterator[tuple[Tensor, Tensor]]:
    """Primal-dual active-set refinement of Crammer–Singer duals, batched: one result per round.

    The primal-dual active-set strategy (Hintermüller, Ito & Kunisch, SIAM J. Optim. 2003, a
    semismooth Newton method) for the bound ``beta >= 0``. Starting from the support of
    ``beta = C Y - alpha``, each round solves the dual restricted to the current supports
    exactly (:func:`_restricted_crammer_singer`) and updates every row's support to the classes
    whose ``beta`` stayed positive plus those whose multiplier ``(K beta + linear)[n, k] - nu[n]``
    is negative (the bound ``beta >= 0`` violated in the dual). A support that no longer changes
    satisfies the KKT conditions: the restricted solution is the optimum. On small support sets
    this converges in a handful of rounds even from ``alpha = 0``; the rounds end when every
    problem's support is stable (or when the caller stops asking). Nothing here is trusted: the
    caller certifies a result by its duality gap.

    Args:
        gram: (..., N, N); labels_one_hot: (..., N, K); alpha: (..., N, K) the start.

    Yields:
        ``(alpha (..., N, K), ok (...,))`` per round: the restricted solution (not projected onto
        the feasible set) and whether every factorisation succeeded for it.
    """
    shape = labels_one_hot.shape
    n, k = shape[-2:]
    g = gram.reshape(-1, n, n)
    y = labels_one_hot.reshape(-1, n, k)
    linear = y - C * (g @ y)
    support = C * y - alpha.reshape(-1, n, k) > 0
    for round_ in itertools.count(1):
        check_deadline(f"the dual solver's active-set round {round_}")
        beta, ok = _restricted_crammer_singer(g, linear, C, support)
        yield (C * y - beta).reshape(shape), ok.reshape(shape[:-2])
        multiplier = torch.baddbmm(linear, g, beta)
        multiplier = multiplier - (multiplier * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        update = torch.where(support, beta > 0, multiplier < 0)
        if bool((update == support).all()):
            return
        support = update


def solve_crammer_singer_dual(
    gram: Tensor,
    labels_one_hot: Tensor,
    C: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 20000,
    check_every: int = 10,
    active_set_rounds: int = 20,
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

    The solver is accelerated projected gradient, sped up by a primal-dual active-set method
    (:func:`_active_set_crammer_singer`) tried at up to :data:`_ACTIVE_SET_ATTEMPTS` gap
    checks, the first at ``alpha = 0`` for N <= :data:`_ACTIVE_SET_COLD_MAX_N` (else after
    :data:`_ACTIVE_SET_WARMUP` iterations). It guesses which classes carry each sample's dual
    mass and solves the dual restricted to them exactly, a few small Cholesky factorisations per
    round, until the supports stop changing (then the restricted solution is the optimum). On
    few-shot problems (N up to a few hundred, a nonsingular Gram matrix on every support) it
    reaches the optimum in a handful of rounds, so the projected gradient runs no iteration (N
    <= :data:`_ACTIVE_SET_COLD_MAX_N`) or only the warm-up. Its result is projected onto the
    feasible set and kept only where its duality gap is smaller than the iterate's; where the
    active-set method fails (a cycling support, a singular Gram matrix), the projected gradient
    goes on.

    Args:
        gram: (..., N, N) linear kernel ``X X^T`` of the support features.
        labels_one_hot: (..., N, K) one-hot labels (K classes).
        C: the SVM cost (MetaOptNet's ``C_reg``), positive.
        tol: relative duality gap at which a problem counts as solved.
        max_iter: iteration cap of the projected gradient; problems not solved by then have
            ``converged`` False.
        check_every: iterations between duality-gap evaluations.
        active_set_rounds: rounds of each active-set attempt (0: projected gradient only).

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

    attempts = _ACTIVE_SET_ATTEMPTS
    usable = torch.ones(Y.shape[:-2], dtype=torch.bool, device=Y.device)

    warmup = 0 if Y.shape[-2] <= _ACTIVE_SET_COLD_MAX_N else _ACTIVE_SET_WARMUP

    def polish(a: Tensor, relative_gap: Tensor, converged: Tensor, iteration: int) -> Tensor | None:
        nonlocal attempts, usable
        todo = usable & ~converged
        if attempts <= 0 or iteration < warmup or not bool(todo.any()):
            return None
        attempts -= 1
        # the last round: a stable support (the optimum) or the cap
        *_, (candidate, ok) = itertools.islice(_active_set_crammer_singer(gram, Y, C, a), active_set_rounds)
        usable = usable & ok  # a singular support: do not try again
        candidate = project(torch.where(ok[..., None, None], candidate, a))
        primal, dual = objectives(candidate)
        scale = torch.maximum(primal.abs(), dual.abs()).clamp_min(torch.finfo(a.dtype).tiny)
        better = todo & ok & ((primal - dual) / scale < relative_gap)
        return torch.where(better[..., None, None], candidate, a) if bool(better.any()) else None

    alpha, primal, dual, iters, converged = _fista(
        grad,
        project,
        objectives,
        torch.zeros_like(Y),
        step,
        tol=tol,
        max_iter=max_iter,
        check_every=check_every,
        polish=polish if active_set_rounds > 0 else None,
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
