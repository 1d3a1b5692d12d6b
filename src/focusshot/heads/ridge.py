"""Ridge-regression heads: RR (closed-form ridge to one-hot targets) and R2D2.

Both regress one-hot targets ``Y`` (N, C) on support features ``X`` (N, D) in closed form::

    W = argmin_W ||X W - Y||^2 + lam ||W||^2
      = (X^T X + lam I_D)^-1 X^T Y          (primal: a D x D system)
      = X^T (X X^T + lam I_N)^-1 Y          (Woodbury: an N x N system, cheaper when N < D)

the second form being the one R2D2 uses (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning
with differentiable closed-form solvers", ICLR 2019, eq. 6). Solves run in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from focusshot.heads.base import (
    Head,
    HeadInputError,
    check_support,
    check_validation,
    one_hot,
    one_of,
    positive,
    register_head,
    solver_features,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.options import option

SOLVERS = ("auto", "primal", "dual")


def ridge_weights(x: Tensor, y: Tensor, lam: float, solver: str = "auto") -> Tensor:
    """Closed-form ridge solution ``W`` (D, C) for features ``x`` (N, D) and targets ``y`` (N, C).

    ``solver="dual"`` uses the Woodbury form ``X^T (X X^T + lam I)^-1 Y`` (N x N system),
    ``"primal"`` the normal equations (D x D system), ``"auto"`` whichever system is smaller.
    """
    n, d = x.shape[-2], x.shape[-1]
    if solver == "auto":
        solver = "dual" if n < d else "primal"
    if solver == "dual":
        gram = x @ x.transpose(-1, -2)
        gram.diagonal(dim1=-2, dim2=-1).add_(lam)
        dual: Tensor = x.transpose(-1, -2) @ torch.linalg.solve(gram, y)
        return dual
    cov = x.transpose(-1, -2) @ x
    cov.diagonal(dim1=-2, dim2=-1).add_(lam)
    primal: Tensor = torch.linalg.solve(cov, x.transpose(-1, -2) @ y)
    return primal


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The scale s > 0 minimising the NLL of ``softmax(s * logits)`` (V, C) on ``labels`` (V,).

    A training-free calibration: a log-spaced grid over [1e-3, 1e4], refined once around the best
    point. Returns the chosen scale.
    """
    z = logits.double()

    def nll(scales: Tensor) -> Tensor:
        scaled = scales[:, None, None] * z
        return (
            torch.nn.functional.cross_entropy(
                scaled.flatten(0, 1), labels.repeat(len(scales)), reduction="none"
            )
            .view(len(scales), -1)
            .mean(-1)
        )

    grid = torch.logspace(-3, 4, 141, dtype=torch.float64)
    best = int(nll(grid).argmin())
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    fine = torch.logspace(math.log10(lo), math.log10(hi), 101, dtype=torch.float64)
    return float(fine[int(nll(fine).argmin())])


@register_head("ridge")
@dataclass(frozen=True)
class Ridge(Head):
    """Ridge regression to one-hot targets ("RR"), closed form, Woodbury form when N < D.

    ``logits = scale * (q W + b) + bias``; ``scale`` and ``bias`` are fixed numbers (no learning),
    like R2D2's alpha and beta. With ``calibrate=True`` and a validation split, ``scale`` is instead
    chosen to minimise the validation NLL (:func:`fit_temperature`) and recorded in ``info``.

    Args:
        lam: the ridge penalty lambda (>= 0; 0 needs a full-rank system).
        fit_intercept: fit an unpenalised per-class intercept b (centre X and Y, as scikit-learn's
            ``Ridge`` does); otherwise b = 0.
        normalize: L2-normalise support and query features first.
        solver: ``"auto"``, ``"primal"`` (D x D system) or ``"dual"`` (N x N, Woodbury).
        scale: fixed multiplier on the scores.
        bias: fixed scalar added to every score (changes no prediction).
        calibrate: pick ``scale`` on the validation split (needs ``val_features``/``val_labels``).
    """

    lam: float = option(1.0, "ridge penalty lambda (>= 0)")
    fit_intercept: bool = option(False, "fit an unpenalised per-class intercept (centre X and Y)")
    normalize: bool = option(False, "L2-normalise support and query features first")
    solver: str = option("auto", "auto, primal (D x D system) or dual (N x N, Woodbury)")
    scale: float = option(1.0, "fixed multiplier on the scores")
    bias: float = option(0.0, "fixed scalar added to every score")
    calibrate: bool = option(False, "choose the scale by validation NLL (needs a validation split)")

    def __post_init__(self) -> None:
        positive("lam", self.lam, allow_zero=True)
        positive("scale", self.scale)
        one_of("solver", self.solver, SOLVERS)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> LinearClassifier:
        """Fit W (C, D) and b (C,) to features (N, D), labels (N,)."""
        classes = check_support(features, labels, num_classes)
        val = check_validation(val_features, val_labels, features.shape[-1], classes)
        if self.calibrate and val is None:
            raise HeadInputError("ridge with calibrate=True needs val_features and val_labels")
        x = solver_features(features, self.normalize)
        dtype = x.dtype
        y = one_hot(labels, classes, dtype)
        if self.fit_intercept:
            x_mean, y_mean = x.mean(0), y.mean(0)
            w = ridge_weights(x - x_mean, y - y_mean, self.lam, self.solver)
            b = y_mean - x_mean @ w
        else:
            w = ridge_weights(x, y, self.lam, self.solver)
            b = torch.zeros(classes, dtype=dtype, device=x.device)
        out_dtype = features.dtype
        fitted = LinearClassifier(
            w.T.contiguous().to(out_dtype),
            b.to(out_dtype),
            scale=float(self.scale),
            offset=float(self.bias),
            normalize=self.normalize,
            head=self.name,
            info={"lam": float(self.lam)},
        )
        if self.calibrate and val is not None:
            raw = LinearClassifier(fitted.weight.to(dtype), fitted.bias.to(dtype), normalize=self.normalize)
            s = fit_temperature(raw.logits(val[0].to(dtype)), val[1])
            fitted = LinearClassifier(
                fitted.weight,
                fitted.bias,
                scale=s,
                offset=float(self.bias),
                normalize=self.normalize,
                head=self.name,
                info={"lam": float(self.lam), "calibrated_scale": s},
            )
        return fitted


@register_head("r2d2")
@dataclass(frozen=True)
class R2D2(Head):
    """R2D2's base learner (Bertinetto et al., ICLR 2019): ridge regression solved through the N x N system.

    ``W = X^T (X X^T + lam I)^-1 Y`` and ``logits = alpha * q W + beta``. In the paper lambda, alpha
    and beta are meta-learned; with frozen features nothing is learnt, so they are fixed here:
    ``lam = 50`` (the value of MetaOptNet's R2D2 re-implementation, Lee et al. CVPR 2019),
    ``alpha = 1`` and ``beta = 0`` (neither changes a prediction; alpha sets the softmax
    temperature, so pass your own when probabilities matter). No intercept, as in the paper.

    Args:
        lam: ridge penalty lambda (> 0).
        alpha: fixed scale on the regression outputs.
        beta: fixed offset on the regression outputs.
        normalize: L2-normalise support and query features first.
    """

    lam: float = option(50.0, "ridge penalty lambda (MetaOptNet's R2D2 value)")
    alpha: float = option(1.0, "fixed scale on the regression outputs (meta-learnt in the paper)")
    beta: float = option(0.0, "fixed offset on the regression outputs (meta-learnt in the paper)")
    normalize: bool = option(False, "L2-normalise support and query features first")

    def __post_init__(self) -> None:
        positive("lam", self.lam)
        positive("alpha", self.alpha)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> LinearClassifier:
        """Fit W (C, D) to features (N, D), labels (N,) via the N x N system. Validation is ignored."""
        classes = check_support(features, labels, num_classes)
        x = solver_features(features, self.normalize)
        dtype = x.dtype
        w = ridge_weights(x, one_hot(labels, classes, dtype), self.lam, "dual")
        return LinearClassifier(
            w.T.contiguous().to(features.dtype),
            torch.zeros(classes, dtype=features.dtype, device=features.device),
            scale=float(self.alpha),
            offset=float(self.beta),
            normalize=self.normalize,
            head=self.name,
            info={"lam": float(self.lam)},
        )
