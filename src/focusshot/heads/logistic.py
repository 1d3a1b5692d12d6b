"""Linear-probe head: multinomial logistic regression fitted with L-BFGS in torch.

The linear probe of CLIP (Radford et al., ICML 2021, sec. 3.2 and appendix A.3) and of CoOp's
baselines: an L2-regularised softmax regression on frozen features, its strength C searched on a
validation split. The objective is scikit-learn's multinomial ``LogisticRegression`` one::

    min_{W, b}  1/2 ||W||^2 + C sum_n CE(softmax(W x_n + b), y_n)        (b unpenalised)

minimised (in float64, after dividing by C N) with ``torch.optim.LBFGS`` and a strong-Wolfe line
search. With C >= 3 classes it is exactly scikit-learn's problem; with 2 classes scikit-learn fits
one weight vector instead of two, which equals this head at twice the C.

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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from focusshot.heads.base import (
    Head,
    check_support,
    check_validation,
    doc,
    positive,
    register_head,
    solver_features,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.numerics import golden_section

#: Default search grid for C: CLIP's range 10^-6 ... 10^6 in half-decade steps (25 values). The
#: useful C scales with 1 / ||x||^2, so a wide grid serves raw features of any backbone as well as
#: L2-normalised ones.
DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-12, 13))

#: How a validation split chooses C; recorded in the fit's ``info["selection"]``.
SELECTION_RULE = "max val accuracy; ties: min val NLL, then smaller C"

#: Bounds of the fitted logit scale, as the largest absolute centred validation logit it produces.
_SCALE_SPAN = (1e-4, 100.0)


def logistic_objective(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, C: float) -> Tensor:
    """scikit-learn's objective ``1/2 ||W||^2 + C sum_n CE`` for x (N, D), y (N,), W (C, D), b (C,)."""
    ce = torch.nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="sum")
    return 0.5 * weight.pow(2).sum() + C * ce


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
    """Minimise the multinomial logistic objective with L-BFGS.

    Args:
        x: (N, D) features (the dtype is used for the solve).
        y: (N,) int64 labels.
        classes: C.
        C: inverse regularisation strength.
        fit_intercept: learn an unpenalised bias b.
        max_iter: L-BFGS iterations at most.
        tol: stop when the largest gradient entry of the objective divided by C N falls below it.
        init: optional warm start (W (C, D), b (C,)).

    Returns:
        ``(W (C, D), b (C,), iterations)``.
    """
    n, d = x.shape
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        y = y.detach().clone()
        w0 = torch.zeros(classes, d, dtype=x.dtype, device=x.device) if init is None else init[0]
        b0 = torch.zeros(classes, dtype=x.dtype, device=x.device) if init is None else init[1]
        w = w0.detach().clone().requires_grad_(True)
        b = b0.detach().clone().requires_grad_(fit_intercept)
        params = [w, b] if fit_intercept else [w]
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=max_iter,
            max_eval=max_iter * 2,
            tolerance_grad=tol,
            tolerance_change=1e-15,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        reg = 1.0 / (2.0 * C * n)

        def closure() -> Tensor:
            opt.zero_grad()
            logits = x @ w.T + b
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="mean") + reg * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        iters = int(opt.state[w].get("n_iter", 0))
    return w.detach(), b.detach(), iters


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
    """Multinomial logistic-regression linear probe (L-BFGS in torch).

    Without a validation split the fixed ``C`` is used and nothing is calibrated. With
    ``val_features``/``val_labels`` every C in ``C_grid`` is fitted on the support set
    (warm-started, smallest first) and the one with the best validation accuracy is kept; ties go
    to the lower validation NLL, then to the smaller C (:data:`SELECTION_RULE`). With
    ``calibrate`` one logit scale is then fitted on the validation split
    (:func:`fit_logit_scale`); it multiplies ``W q + b`` and changes no prediction.

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
        max_iter: L-BFGS iterations at most, per C.
        tol: gradient tolerance (on the objective divided by C N).
    """

    C: float = field(
        default=1.0, metadata=doc("inverse regularisation strength used without validation data")
    )
    C_grid: tuple[float, ...] = field(
        default=DEFAULT_C_GRID,
        metadata=doc(
            "C candidates searched on validation data (default 1e-6..1e6 in half decades); "
            "best val accuracy wins, ties: lower val NLL, then smaller C"
        ),
    )
    fit_intercept: bool = field(default=True, metadata=doc("learn an unpenalised per-class bias"))
    normalize: bool = field(
        default=False, metadata=doc("L2-normalise support, validation and query features first")
    )
    calibrate: bool = field(
        default=True,
        metadata=doc(
            "with validation data: fit one logit scale on it after choosing C (temperature "
            "scaling; predictions unchanged)"
        ),
    )
    max_iter: int = field(default=1000, metadata=doc("L-BFGS iterations at most, per C"))
    tol: float = field(default=1e-6, metadata=doc("gradient tolerance (objective divided by C N)"))

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
            best: tuple[Any, ...] | None = None
            scores: list[list[float]] = []
            init = None
            iters = 0
            for c in sorted(float(v) for v in self.C_grid):
                w_c, b_c, it_c = fit_logistic(x, y, classes, c, init=init, **kw)
                init, iters = (w_c, b_c), iters + it_c
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
