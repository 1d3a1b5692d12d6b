"""Linear-probe head: multinomial logistic regression fitted with L-BFGS in torch.

The linear probe of CLIP (Radford et al., ICML 2021, sec. 3.2 and appendix A.3) and of CoOp's
baselines: an L2-regularised softmax regression on frozen features, its strength C searched on a
validation split. The objective is scikit-learn's multinomial ``LogisticRegression`` one::

    min_{W, b}  1/2 ||W||^2 + C sum_n CE(softmax(W x_n + b), y_n)        (b unpenalised)

minimised (in float64, after dividing by C N) with ``torch.optim.LBFGS`` and a strong-Wolfe line
search. With C >= 3 classes it is exactly scikit-learn's problem; with 2 classes scikit-learn fits
one weight vector instead of two, which equals this head at twice the C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from focusshot.heads.base import (
    Head,
    check_support,
    check_validation,
    doc,
    l2_normalize,
    positive,
    register_head,
    solver_features,
)
from focusshot.heads.linear import LinearClassifier

#: Default search grid for C: 10^-4 ... 10^4 in half-decade steps.
DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-8, 9))


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


@register_head("logistic")
@dataclass(frozen=True)
class LogisticRegression(Head):
    """Multinomial logistic-regression linear probe (L-BFGS in torch).

    Without a validation split the fixed ``C`` is used; with ``val_features``/``val_labels`` every C
    in ``C_grid`` is fitted on the support set (warm-started, smallest first) and the one with the
    best validation accuracy (ties: lower validation NLL, then smaller C) is kept. The chosen C is
    recorded in ``info["C"]``.

    Args:
        C: inverse regularisation strength used without validation data (scikit-learn's default, 1).
        C_grid: candidates searched with validation data.
        fit_intercept: learn an unpenalised per-class bias.
        normalize: L2-normalise support and query features first.
        max_iter: L-BFGS iterations at most, per C.
        tol: gradient tolerance (on the objective divided by C N).
    """

    C: float = field(
        default=1.0, metadata=doc("inverse regularisation strength used without validation data")
    )
    C_grid: tuple[float, ...] = field(
        default=DEFAULT_C_GRID, metadata=doc("C candidates searched on validation data")
    )
    fit_intercept: bool = field(default=True, metadata=doc("learn an unpenalised per-class bias"))
    normalize: bool = field(default=False, metadata=doc("L2-normalise support and query features first"))
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
        kw = {"fit_intercept": self.fit_intercept, "max_iter": self.max_iter, "tol": self.tol}
        info: dict = {}
        if val is None:
            C = float(self.C)
            w, b, iters = fit_logistic(x, y, classes, C, **kw)
        else:
            vx = val[0].to(dtype)
            if self.normalize:
                vx = l2_normalize(vx)
            best: tuple | None = None
            scores: list[list[float]] = []
            init = None
            iters = 0
            for c in sorted(float(v) for v in self.C_grid):
                w_c, b_c, it_c = fit_logistic(x, y, classes, c, init=init, **kw)
                init, iters = (w_c, b_c), iters + it_c
                logits = vx @ w_c.T + b_c
                acc = float((logits.argmax(-1) == val[1]).double().mean())
                nll = float(torch.nn.functional.cross_entropy(logits, val[1]))
                scores.append([c, acc, nll])
                key = (-acc, nll if math.isfinite(nll) else math.inf, c)
                if best is None or key < best[0]:
                    best = (key, c, w_c, b_c)
            assert best is not None
            _, C, w, b = best
            info["search"] = scores  # [C, val accuracy, val NLL] per candidate
        obj = float(logistic_objective(x, y, w, b, C))
        info = {"C": C, "objective": obj, "iterations": iters, **info}
        return LinearClassifier(
            w.to(features.dtype).contiguous(),
            b.to(features.dtype),
            normalize=self.normalize,
            head=self.name,
            info=info,
        )
