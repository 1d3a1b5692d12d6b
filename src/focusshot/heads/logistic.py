"""Linear-probe head: multinomial logistic regression fitted by truncated Newton in torch.

The linear probe of CLIP (Radford et al., ICML 2021, sec. 3.2 and appendix A.3) and of CoOp's
baselines: an L2-regularised softmax regression on frozen features, its strength C searched on a
validation split. The objective is scikit-learn's multinomial ``LogisticRegression`` one::

    min_{W, b}  1/2 ||W||^2 + C sum_n CE(softmax(W x_n + b), y_n)        (b unpenalised)

minimised in float64. With C >= 3 classes it is exactly scikit-learn's problem; with 2 classes
scikit-learn fits one weight vector instead of two, which equals this head at twice the C.

The solver is a truncated Newton method (Newton-CG with an Armijo line search, as LIBLINEAR's and
scikit-learn's ``newton-cg``) in an exact reparametrisation of the problem: features centred (the
unpenalised bias absorbs the mean) and, with fewer images than dimensions, written in an
orthonormal basis of their span (the optimal W lies in it), so one Hessian-vector product costs
two (N, min(N, D) + 1) x (., C) products. A C search solves the grid in increasing order, each C
started from an extrapolation in log C of the previous solutions (:func:`fit_logistic_path`).
Every C stops when the scaled gradient is below ``tol`` *and* the last Newton step gained less
than ``tol`` of the objective: a gradient test alone stops far from the optimum at large C (the
objective divided by C N is flat there), where scikit-learn's L-BFGS, stopped by that test, can
return an objective several times the optimum.

Selecting C on a few-shot validation split (``min(K, 4)`` images per class, so 10 images for a
10-way 1-shot task) follows CLIP and CoOp: the highest validation accuracy wins, over CLIP's range
10^-6 ... 10^6 (here in half-decade steps). Ties are broken by the lower validation NLL, then by
the smaller C. On so few images the winner is often a strongly regularised C whose class scores
are nearly equal, so its probabilities are almost uniform (an ECE of 0.3-0.6 on clothing-small);
the argmax is fine, the scale is not. With ``calibrate`` (the default) one positive logit scale
is therefore fitted on the same validation images after C is chosen (temperature scaling, Guo et
al., ICML 2017). It changes no prediction, only the confidence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from focusshot.deadlines import check_deadline
from focusshot.heads.base import (
    Head,
    check_support,
    check_validation,
    positive,
    register_head,
    solver_features,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.numerics import golden_section
from focusshot.options import option

#: Default search grid for C: CLIP's range 10^-6 ... 10^6 in half-decade steps (25 values). The
#: useful C scales with 1 / ||x||^2, so a wide grid serves raw features of any backbone as well as
#: L2-normalised ones.
DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-12, 13))

#: How a validation split chooses C; recorded in the fit's ``info["selection"]``.
SELECTION_RULE = "max val accuracy; ties: min val NLL, then smaller C"

#: Bounds of the fitted logit scale, as the largest absolute centred validation logit it produces.
_SCALE_SPAN = (1e-4, 100.0)


#: Newton-CG constants: the CG forcing term (relative residual of each Newton system), the CG
#: iteration cap per Newton step, Armijo's sufficient-decrease constant and the smallest step tried.
_CG_FORCING = 0.1
_CG_MAX = 250
_ARMIJO = 1e-4
_MIN_STEP = 1e-10

#: A predicted gain below this fraction of ``tol`` (relative to the objective) is not worth a step.
_NEGLIGIBLE = 0.01

#: Grid values of C closer than this (relative) share one solution (the objectives differ by less).
_SAME_C = 1e-9


def logistic_objective(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, C: float) -> Tensor:
    """scikit-learn's objective ``1/2 ||W||^2 + C sum_n CE`` for x (N, D), y (N,), W (C, D), b (C,)."""
    ce = torch.nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="sum")
    return 0.5 * weight.pow(2).sum() + C * ce


@dataclass(frozen=True)
class _Reduced:
    """The support set in the coordinates the solver works in (an exact reparametrisation).

    With a bias the features are centred (``x - mean``; the unpenalised bias absorbs
    ``W mean``), and with N < D they are expressed in an orthonormal basis of their span (the
    optimal W lies in it: the gradient of the loss is a combination of the x_n, and a component
    outside only adds to ||W||^2). So the solver fits ``theta = [Z | c]`` (K, R) on ``feats``
    (N, R), where R = min(N, D) + 1 (the last column is ones, for the bias) or min(N, D), and
    ``W = Z basis^T``, ``b = c - W mean``. The objective, ``sum_n CE + ||Z||^2 / (2 C)``, is
    the original one divided by C.

    Attributes:
        feats: (N, R) reduced features (a trailing column of ones with a bias).
        squares: (N, R) ``feats ** 2`` (for the Hessian diagonal).
        onehot: (N, K) one-hot labels.
        penalised: (R,) 1 on weight coordinates, 0 on the bias column.
        basis: (D, r) orthonormal basis of the centred features' span, or None (r = D).
        mean: (D,) the centre (zeros without a bias).
        fit_intercept: whether the last column is the bias's.
    """

    feats: Tensor
    squares: Tensor
    onehot: Tensor
    penalised: Tensor
    basis: Tensor | None
    mean: Tensor
    fit_intercept: bool

    @classmethod
    def build(cls, x: Tensor, y: Tensor, classes: int, fit_intercept: bool) -> _Reduced:
        """From features x (N, D) and labels y (N,)."""
        n, d = x.shape
        mean = x.mean(0) if fit_intercept else x.new_zeros(d)
        centred = x - mean
        basis: Tensor | None = None
        if n < d:
            basis, upper = torch.linalg.qr(centred.T)  # (D, N), (N, N): centred = upper^T basis^T
            centred = upper.T
        feats = torch.cat([centred, centred.new_ones(n, 1)], 1) if fit_intercept else centred
        penalised = feats.new_ones(feats.shape[1])
        if fit_intercept:
            penalised[-1] = 0.0
        onehot = torch.nn.functional.one_hot(y, classes).to(x.dtype)
        return cls(feats.contiguous(), feats * feats, onehot, penalised, basis, mean, fit_intercept)

    def reduce(self, weight: Tensor, bias: Tensor) -> Tensor:
        """``(W (K, D), b (K,))`` -> theta (K, R) (W projected onto the span)."""
        z = weight if self.basis is None else weight @ self.basis
        return torch.cat([z, (bias + weight @ self.mean)[:, None]], 1) if self.fit_intercept else z

    def expand(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """theta (K, R) -> ``(W (K, D), b (K,))``; b centred over the classes (softmax ignores a shift)."""
        z = theta[:, :-1] if self.fit_intercept else theta
        weight = z if self.basis is None else z @ self.basis.T
        if not self.fit_intercept:
            return weight, theta.new_zeros(theta.shape[0])
        bias = theta[:, -1] - weight @ self.mean
        return weight, bias - bias.mean()

    def objective(self, logits: Tensor, theta: Tensor, lam: float) -> float:
        """``sum_n CE + lam/2 ||Z||^2`` at logits (N, K) = feats theta^T."""
        ce = torch.logsumexp(logits, 1).sum() - (logits * self.onehot).sum()
        return float(ce) + 0.5 * lam * float((theta * theta * self.penalised).sum())


def _newton_cg(
    problem: _Reduced, lam: float, theta: Tensor, logits: Tensor, *, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, int]:
    """Minimise ``sum_n CE + lam/2 ||Z||^2`` over theta (K, R) by truncated Newton from ``theta``.

    Each step solves the Newton system with conjugate gradients (preconditioned by the Hessian's
    diagonal at the start, to a relative residual of :data:`_CG_FORCING`), through
    Hessian-vector products that cost two (N, R) x (R, K) products and never form the Hessian;
    the logits of the step are accumulated on the way, so the Armijo backtracking line search
    costs no matrix product. It stops when the largest gradient entry, divided by N, is at most
    ``tol`` and either the last step or the next one (as the quadratic model predicts it,
    ``-grad . d / 2``) lowers the objective by at most ``tol`` times its value; that next step
    is still taken (one line search, no product) unless it promises less than
    :data:`_NEGLIGIBLE` of that, so the result typically lies within ``tol / 100`` of the
    optimum and a converged start is returned unchanged. It also stops after ``max_iter``
    steps, or when no step lowers the objective any more (rounding).
    ``logits`` (N, K) must equal ``feats theta^T``. Each Newton step first checks the enclosing
    deadline (:func:`~focusshot.deadlines.check_deadline`; nothing is read without one).

    Returns ``(theta, logits, steps)``.
    """
    x, onehot = problem.feats, problem.onehot
    n = x.shape[0]
    lam_pen = lam * problem.penalised
    loss = problem.objective(logits, theta, lam)
    steps = 0
    previous = math.inf
    diag: Tensor | None = None  # Jacobi preconditioner, from the Hessian at the start
    while True:
        lse = torch.logsumexp(logits, 1, keepdim=True)
        prob = torch.exp(logits - lse)
        grad = torch.addmm(theta * lam_pen, (prob - onehot).T, x)
        small = float(grad.abs().max()) <= tol * n
        if steps >= max_iter or (small and previous - loss <= tol * abs(loss)):
            break
        check_deadline(f"the logistic probe's Newton step {steps + 1}")
        # Newton direction by preconditioned CG on H d = -grad, H v = X^T (P v - P (P.v)) + lam v
        if diag is None:
            diag = torch.addmm(lam_pen.expand_as(theta), (prob - prob * prob).T, problem.squares)
            diag.clamp_(min=float(diag.max()) * 1e-12)
        flat_grad = grad.view(-1)
        target = _CG_FORCING**2 * float(flat_grad @ flat_grad)
        direction = torch.zeros_like(theta)
        step_logits = torch.zeros_like(logits)
        residual = -grad
        z = residual / diag
        p = z
        rz = float(residual.view(-1) @ z.view(-1))
        for _ in range(_CG_MAX):
            u = x @ p.T  # (N, K): logits of p
            t = prob * u
            t.sub_(prob * t.sum(1, keepdim=True))
            hp = torch.addmm(p * lam_pen, t.T, x)
            php = float(p.view(-1) @ hp.view(-1))
            if not php > 0.0:
                break
            alpha = rz / php
            direction.add_(p, alpha=alpha)
            step_logits.add_(u, alpha=alpha)
            residual.sub_(hp, alpha=alpha)
            if float(residual.view(-1) @ residual.view(-1)) <= target:
                break
            z = residual / diag
            rz, rz_old = float(residual.view(-1) @ z.view(-1)), rz
            p = z.add_(p, alpha=rz / rz_old)
        slope = float(flat_grad @ direction.view(-1))
        last = small and -0.5 * slope <= tol * abs(loss)  # the model promises less than tol
        if not slope < 0.0 or (last and -0.5 * slope <= _NEGLIGIBLE * tol * abs(loss)):
            break
        step = 1.0
        while True:
            trial_theta = torch.add(theta, direction, alpha=step)
            trial_logits = torch.add(logits, step_logits, alpha=step)
            trial = problem.objective(trial_logits, trial_theta, lam)
            if trial <= loss + _ARMIJO * step * slope:
                break
            step *= 0.5
            if step < _MIN_STEP:
                return theta, logits, steps
        theta, logits, previous, loss = trial_theta, trial_logits, loss, trial
        steps += 1
        if last:
            break
    return theta, logits, steps


def fit_logistic(
    x: Tensor,
    y: Tensor,
    classes: int,
    C: float,
    *,
    fit_intercept: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-6,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Minimise the multinomial logistic objective at one C by truncated Newton (:func:`_newton_cg`).

    Args:
        x: (N, D) features (the dtype is used for the solve).
        y: (N,) int64 labels.
        classes: C.
        C: inverse regularisation strength.
        fit_intercept: learn an unpenalised bias b.
        max_iter: Newton steps at most.
        tol: stop once the largest gradient entry of the objective divided by C N is at most
            ``tol`` and the last Newton step, or the next one as predicted, changes the objective
            by at most ``tol`` times its value.
        init: optional warm start (W (C, D), b (C,)).

    Returns:
        ``(W (C, D), b (C,), Newton steps)``; b sums to zero over the classes.
    """
    problem = _Reduced.build(x.detach(), y.detach().long(), classes, fit_intercept)
    if init is None:
        theta = problem.feats.new_zeros(classes, problem.feats.shape[1])
    else:
        theta = problem.reduce(init[0].detach().to(x.dtype), init[1].detach().to(x.dtype))
    logits = problem.feats @ theta.T
    theta, _, steps = _newton_cg(problem, 1.0 / C, theta, logits, tol=tol, max_iter=max_iter)
    weight, bias = problem.expand(theta)
    return weight, bias, steps


def fit_logistic_path(
    x: Tensor,
    y: Tensor,
    classes: int,
    Cs: Iterable[float],
    *,
    fit_intercept: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> Iterator[tuple[float, Tensor, Tensor, int]]:
    """Fit every C of ``Cs`` in increasing order, each warm-started from the ones before.

    The start at a new C is the previous solution, or, where it scores a lower objective, the
    polynomial extrapolation in log C through the last (up to three) solutions: along a grid
    such as CLIP's half decades the path is smooth in log C, so the extrapolation usually lands
    within a Newton step or two of the optimum. Every C is then solved to the same tolerance as
    :func:`fit_logistic` cold (the warm start changes the cost, not the stopping rule), except
    that a C within a relative :data:`_SAME_C` of the previous one reuses its solution.

    Under an enclosing deadline (:func:`~focusshot.deadlines.deadline`) each C first checks it,
    with the pace of the Cs solved so far: :class:`~focusshot.deadlines.DeadlineExceeded` is
    raised once it has passed or that pace says the grid would not end by it (Newton steps check
    it too). Without one nothing is read and the path is the same.

    Args:
        x: (N, D) features; y: (N,) int64 labels; classes: C.
        Cs: the inverse regularisation strengths (any order; solved sorted).
        fit_intercept, max_iter, tol: as in :func:`fit_logistic`, per C.

    Yields:
        ``(C, W (C, D), b (C,), Newton steps)`` per C, smallest C first.
    """
    problem = _Reduced.build(x.detach(), y.detach().long(), classes, fit_intercept)
    theta = problem.feats.new_zeros(classes, problem.feats.shape[1])
    logits = problem.feats.new_zeros(problem.feats.shape[0], classes)
    history: list[tuple[float, Tensor, Tensor]] = []  # (log C, theta, logits), the last three
    grid = sorted(float(v) for v in Cs)
    started: float | None = None  # the clock at the first C (None: no deadline)
    for i, c in enumerate(grid):
        t = check_deadline(
            f"the logistic probe at C {i + 1} of {len(grid)}", done=i, total=len(grid), since=started
        )
        started = t if i == 0 else started
        lam, u = 1.0 / c, math.log(c)
        if history and u - history[-1][0] <= _SAME_C:
            weight, bias = problem.expand(theta)
            yield c, weight, bias, 0
            continue
        guess = _extrapolate(history, u)
        if guess is not None and problem.objective(guess[1], guess[0], lam) < problem.objective(
            logits, theta, lam
        ):
            theta, logits = guess
        theta, logits, steps = _newton_cg(problem, lam, theta, logits, tol=tol, max_iter=max_iter)
        history = [*history[-2:], (u, theta, logits)]
        weight, bias = problem.expand(theta)
        yield c, weight, bias, steps


def _extrapolate(history: list[tuple[float, Tensor, Tensor]], u: float) -> tuple[Tensor, Tensor] | None:
    """Lagrange extrapolation to log C = u of the last solutions ``(log C, theta (K, R), logits (N, K))``.

    Uses the most recent points whose log C differ by more than 1e-3 (at most three), and only
    when u lies beyond the last of them by at most four times their spacing. Returns
    ``(theta, logits)`` (exact: the logits are linear in theta), or None.
    """
    points: list[tuple[float, Tensor, Tensor]] = []
    for point in reversed(history):
        if all(abs(point[0] - q[0]) > 1e-3 for q in points):
            points.append(point)
    if len(points) < 2 or not 0.0 < u - points[0][0] <= 4.0 * (points[0][0] - points[1][0]):
        return None
    nodes = [q[0] for q in points]
    theta = torch.zeros_like(points[0][1])
    logits = torch.zeros_like(points[0][2])
    for i, (ui, th, lg) in enumerate(points):
        weight = math.prod((u - uj) / (ui - uj) for j, uj in enumerate(nodes) if j != i)
        theta.add_(th, alpha=weight)
        logits.add_(lg, alpha=weight)
    return theta, logits


def fit_logit_scale(logits: Tensor, labels: Tensor, *, iterations: int = 100) -> tuple[float, float]:
    """Temperature scaling: the scale ``a > 0`` minimising the validation NLL of ``softmax(a * logits)``.

    The targets are the one-hot labels smoothed by one pseudo-example spread evenly over the
    classes (``eps = 1 / (V + 1)``), so the optimum stays finite when every validation image is
    classified with a margin (plain NLL would then send ``a`` to infinity). The objective is
    convex in ``a``; it is minimised over ``log a`` by golden-section search on a bracket that
    keeps the largest centred logit between 1e-4 (uniform) and 100. Deterministic.

    Args:
        logits: (V, C) validation logits of the fitted classifier.
        labels: (V,) int64 validation labels.
        iterations: golden-section steps (100 narrow the bracket below 1e-19 in ``log a``).

    Returns:
        ``(a, smoothed NLL at a)``; ``(1.0, smoothed NLL at 1)`` when every row's logits are equal.
    """
    z = logits.double()
    z = z - z.mean(-1, keepdim=True)
    v, classes = z.shape
    eps = 1.0 / (v + 1)
    target = torch.full_like(z, eps / classes)
    target[torch.arange(v), labels.long()] += 1.0 - eps

    def loss(u: float) -> float:
        return float(-(target * torch.log_softmax(math.exp(u) * z, -1)).sum(-1).mean())

    spread = float(z.abs().max())
    if not math.isfinite(spread) or spread == 0.0:
        return 1.0, loss(0.0)
    lo, hi = math.log(_SCALE_SPAN[0] / spread), math.log(_SCALE_SPAN[1] / spread)
    u = golden_section(loss, lo, hi, iterations)
    return math.exp(u), loss(u)


@register_head("logistic")
@dataclass(frozen=True)
class LogisticRegression(Head):
    """Multinomial logistic-regression linear probe (truncated Newton in torch).

    Without a validation split the fixed ``C`` is used and nothing is calibrated. With
    ``val_features``/``val_labels`` every C in ``C_grid`` is fitted on the support set
    (warm-started, smallest first: :func:`fit_logistic_path`) and the one with the best
    validation accuracy is kept; ties go to the lower validation NLL, then to the smaller C
    (:data:`SELECTION_RULE`). With ``calibrate`` one logit scale is then fitted on the
    validation split (:func:`fit_logit_scale`); it multiplies ``W q + b`` and changes no
    prediction.

    ``info`` records ``C``, ``selection`` (the rule, or ``"fixed"``), ``val_accuracy`` and
    ``val_nll`` at the chosen C, ``logit_scale`` and the (plain) validation NLL with it,
    ``val_nll_calibrated``, when calibrated, and
    ``search``: one ``[C, val accuracy, val NLL]`` row per candidate.

    Args:
        C: inverse regularisation strength used without validation data (scikit-learn's default, 1).
        C_grid: candidates searched with validation data.
        fit_intercept: learn an unpenalised per-class bias.
        normalize: L2-normalise support, validation and query features first. Off by default, as
            in CLIP's and CoOp's probes, which fit the raw features; the default grid is wide
            enough for either.
        calibrate: fit a logit scale on the validation split after choosing C.
        max_iter: Newton steps at most, per C.
        tol: stop once the largest gradient entry of the objective divided by C N is at most tol
            and the last (or predicted next) Newton step changes the objective by at most tol
            times its value.
    """

    C: float = option(1.0, "inverse regularisation strength used without validation data")
    C_grid: tuple[float, ...] = option(
        DEFAULT_C_GRID,
        "C candidates searched on validation data (default 1e-6..1e6 in half decades); "
        "best val accuracy wins, ties: lower val NLL, then smaller C",
    )
    fit_intercept: bool = option(True, "learn an unpenalised per-class bias")
    normalize: bool = option(False, "L2-normalise support, validation and query features first")
    calibrate: bool = option(
        True,
        "with validation data: fit one logit scale on it after choosing C (temperature "
        "scaling; predictions unchanged)",
    )
    max_iter: int = option(1000, "Newton steps at most, per C")
    tol: float = option(
        1e-6,
        "stop once the gradient of the objective divided by C N is at most tol and the last "
        "Newton step gained at most tol of the objective",
    )

    def __post_init__(self) -> None:
        positive("C", self.C)
        positive("tol", self.tol)
        if not self.C_grid:
            raise ValueError("C_grid must hold at least one value")
        for c in self.C_grid:
            positive("every C_grid value", c)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> LinearClassifier:
        """Fit W (C, D), b (C,) to features (N, D), labels (N,); search C on (V, D)/(V,) when given."""
        classes = check_support(features, labels, num_classes)
        val = check_validation(val_features, val_labels, features.shape[-1], classes)
        x = solver_features(features, self.normalize)
        dtype = x.dtype
        y = labels.long()
        kw: dict[str, Any] = {"fit_intercept": self.fit_intercept, "max_iter": self.max_iter, "tol": self.tol}
        info: dict[str, Any] = {}
        scale = 1.0
        if val is None:
            C = float(self.C)
            w, b, iters = fit_logistic(x, y, classes, C, **kw)
            info["selection"] = "fixed"
        else:
            vx = solver_features(val[0], self.normalize).to(dtype)
            vy = val[1]
            best: tuple[tuple[float, float, float], float, Tensor, Tensor] | None = None
            scores: list[list[float]] = []
            iters = 0
            for c, w_c, b_c, it_c in fit_logistic_path(x, y, classes, self.C_grid, **kw):
                iters += it_c
                logits = vx @ w_c.T + b_c
                acc = float((logits.argmax(-1) == vy).double().mean())
                nll = float(torch.nn.functional.cross_entropy(logits, vy))
                scores.append([c, acc, nll])
                key = (-acc, nll if math.isfinite(nll) else math.inf, c)
                if best is None or key < best[0]:
                    best = (key, c, w_c, b_c)
            assert best is not None
            (neg_acc, val_nll, _), C, w, b = best
            info.update(selection=SELECTION_RULE, val_accuracy=-neg_acc, val_nll=val_nll)
            if self.calibrate:
                val_logits = vx @ w.T + b
                scale, _ = fit_logit_scale(val_logits, vy)
                calibrated = float(torch.nn.functional.cross_entropy(scale * val_logits, vy))
                info.update(logit_scale=scale, val_nll_calibrated=calibrated)
            info["search"] = scores  # [C, val accuracy, val NLL] per candidate
        obj = float(logistic_objective(x, y, w, b, C))
        info = {"C": C, "objective": obj, "iterations": iters, **info}
        return LinearClassifier(
            w.to(features.dtype).contiguous(),
            b.to(features.dtype),
            scale=scale,
            normalize=self.normalize,
            head=self.name,
            info=info,
        )
