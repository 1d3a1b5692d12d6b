"""LP++: a linear probe blended with the class text embeddings (Huang et al., *LP++: A Surprisingly
Strong Linear Probe for Few-Shot CLIP*, CVPR 2024).

Over L2-normalised features ``f`` (N, D) and normalised class text embeddings ``t`` (C, D)::

    logits(f) = W f + b + alpha ⊙ (t f)          W (C, D), b (C,), alpha (C,) per-class blend

i.e. a linear classifier with weight ``W + diag(alpha) t``. The fit is block majorize-minimise:
full-batch gradient steps on ``(W, b)`` (SGD with momentum 0.9) with the step size
``4 N / lambda_max(F^T F)``, and every ``alpha_every`` steps one gradient step on ``alpha`` with
step ``N / (4 max_c sum_i (t_c f_i)^2)`` -- data-driven steps, no learning-rate search.
Initialisation as the official code (``FereshteShakeri/FewShot-CLIP-Strong-Baseline``): ``W`` the
class centroids, alpha the mean over all (class, text class) pairs of ``250 * mean_i t f_i``.

Where we differ from that code, on purpose:

* ``b`` starts at zero (the code keeps ``nn.Linear``'s random bias);
* the ``alpha`` step uses the gradient at the current point; the code never clears ``alpha``'s
  gradient, so each step uses the sum of every gradient since the start (``alpha_grad =
  "accumulate"`` reproduces that);
* with a validation split the epoch with the best validation accuracy is kept (later epochs win
  ties, as in the code); without one, the last epoch.

Under an enclosing deadline (:func:`focusshot.deadlines.deadline`) every epoch first checks it,
with the pace of the epochs so far (:func:`~focusshot.deadlines.check_deadline`); without one
nothing is read and the fit is the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from focusshot.deadlines import check_deadline
from focusshot.heads.base import (
    Head,
    HeadInputError,
    check_validation,
    l2_normalize,
    one_of,
    register_head,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.heads.zeroshot import TextHead, check_text_support, text_classifier
from focusshot.options import option

__all__ = ["LPPlusPlus", "lp_pp_step_sizes"]


def lp_pp_step_sizes(features: Tensor, text: Tensor) -> tuple[float, float]:
    """``(lr_w, lr_alpha)`` for normalised features (N, D) and text weights (C, D)."""
    n = features.shape[0]
    lam = float(torch.linalg.eigvalsh(features.T @ features).max())
    lr_w = 4.0 * n / max(lam, 1e-12)
    energy = float((features @ text.T).pow(2).sum(0).max())
    lr_alpha = n / (4.0 * max(energy, 1e-12))
    return lr_w, lr_alpha


@dataclass(frozen=True)
class LPPlusPlusSettings:
    """:class:`LPPlusPlus`'s settings, all but the text (the ``lp_pp`` method's options)."""

    epochs: int = option(300, "full-batch steps on W, b")
    alpha_every: int = option(10, "one alpha step every this many W steps")
    alpha_scale: float = option(250.0, "alpha's initialisation constant")
    momentum: float = option(0.9, "SGD momentum of the W, b block")
    alpha_grad: str = option("current", "alpha's gradient: current or accumulate")
    select_on_val: bool = option(True, "keep the epoch best on validation, if any")

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {self.epochs!r}")
        if not isinstance(self.alpha_every, int) or self.alpha_every < 1:
            raise ValueError(f"alpha_every must be an int >= 1, got {self.alpha_every!r}")
        one_of("alpha_grad", self.alpha_grad, ("current", "accumulate"))

    def with_text(self, text_embeddings: Tensor) -> LPPlusPlus:
        """The head with these settings and ``text_embeddings``."""
        return LPPlusPlus(text_embeddings, **dataclasses.asdict(self))


@register_head("lp_pp")
@dataclass(frozen=True, eq=False)  # holds a tensor: compare by identity
class LPPlusPlus(LPPlusPlusSettings, TextHead, Head):
    """LP++ (Huang et al., CVPR 2024): linear probe + per-class blend of the text classifier.

    Args:
        text_embeddings: (C, T, D) or (C, D) class text embeddings.
        epochs: full-batch steps on (W, b) (the code's 300).
        alpha_every: one alpha step every this many (W, b) steps (the code's 10).
        alpha_scale: alpha's initialisation constant (the code's 250).
        momentum: SGD momentum of the (W, b) block.
        alpha_grad: ``"current"`` (block gradient step) or ``"accumulate"`` (the code's never-cleared
            gradient).
        select_on_val: with a validation split keep the epoch with the best validation accuracy.
    """

    def __post_init__(self) -> None:
        text_classifier(self.text_embeddings)
        super().__post_init__()

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> LinearClassifier:
        """Fit on features (N, D), labels (N,); keep the best epoch on (V, D) / (V,) when given."""
        text = text_classifier(self.text_embeddings).detach().double()
        classes = check_text_support(features, labels, num_classes, text)
        if features.shape[0] == 0:
            raise HeadInputError("lp_pp needs at least one support example")
        val = check_validation(val_features, val_labels, text.shape[1], classes)
        with torch.inference_mode(False), torch.enable_grad():
            f = l2_normalize(features.detach().double().clone())
            y = labels.detach().long().clone()
            counts = torch.bincount(y, minlength=classes).clamp_min(1).double()
            centroids = torch.zeros(classes, f.shape[1], dtype=f.dtype).index_add_(0, y, f) / counts[:, None]
            text_logits = f @ text.T  # (N, C)
            per_class = torch.zeros(classes, classes, dtype=f.dtype).index_add_(0, y, text_logits)
            alpha0 = float((self.alpha_scale * per_class / counts[:, None]).mean())
            lr_w, lr_alpha = lp_pp_step_sizes(f, text)
            w = centroids.clone().requires_grad_(True)
            b = torch.zeros(classes, dtype=f.dtype, requires_grad=True)
            alpha = torch.full((classes,), alpha0, dtype=f.dtype, requires_grad=True)
            opt = torch.optim.SGD([w, b], lr=lr_w, momentum=self.momentum)
            vf = None if val is None else l2_normalize(val[0].detach().double())
            best: tuple[float, Tensor, Tensor, int] | None = None
            paced: float | None = None  # the clock at epoch 2 (the first pays for warm-up)
            for epoch in range(self.epochs):
                t = check_deadline(
                    f"lp_pp at epoch {epoch + 1} of {self.epochs}",
                    done=epoch - 1,
                    total=self.epochs,
                    since=paced,
                )
                paced = t if epoch == 1 else paced
                logits = f @ w.T + b + alpha * text_logits
                loss = F.cross_entropy(logits, y)
                opt.zero_grad()
                if self.alpha_grad == "current" and alpha.grad is not None:
                    alpha.grad = None
                loss.backward()
                opt.step()
                if (epoch + 1) % self.alpha_every == 0:
                    assert alpha.grad is not None  # loss.backward() just filled it
                    with torch.no_grad():
                        alpha -= lr_alpha * alpha.grad
                if val is not None and vf is not None and self.select_on_val:
                    with torch.no_grad():
                        weight = w + alpha[:, None] * text
                        acc = float(((vf @ weight.T + b).argmax(1) == val[1]).double().mean())
                        if best is None or acc >= best[0]:
                            best = (acc, weight.clone(), b.detach().clone(), epoch)
            with torch.no_grad():
                weight, bias = w + alpha[:, None] * text, b.detach().clone()
                info = {
                    "lr_w": lr_w,
                    "lr_alpha": lr_alpha,
                    "alpha_init": alpha0,
                    "alpha_mean": float(alpha.mean()),
                    "final_loss": float(loss) if self.epochs else None,
                    "selected_on": "last epoch",
                }
            if best is not None:
                _, weight, bias, epoch = best
                info.update({"selected_on": "val", "best_epoch": epoch, "val_accuracy": best[0]})
        dtype = features.dtype if features.is_floating_point() else torch.float32
        return LinearClassifier(
            weight.detach().to(dtype).contiguous(),
            bias.detach().to(dtype).contiguous(),
            normalize=True,
            head=self.name,
            info=info,
        )
