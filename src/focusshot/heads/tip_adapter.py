"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for
Few-shot Classification", ECCV 2022).

A key-value cache built from the support set is blended with zero-shot CLIP::

    f        = normalise(query)                                (M, D)
    A        = exp(-beta * (1 - f @ keys.T))                   (M, N)   affinities (paper eq. 5)
    logits   = scale * f @ W_text.T + alpha * A @ values        (M, C)   (paper eq. 6)

with keys the normalised support features (N, D), values their one-hot labels (N, C) and W_text
the normalised class text embeddings (C, D). Tip-Adapter-F fine-tunes the keys with AdamW on the
support set (paper sec. 3.3); both search alpha and beta on a validation split when given one.
Under an enclosing deadline (:func:`focusshot.deadlines.deadline`) every training step of
Tip-Adapter-F first checks it, with the pace of the steps so far; without one nothing is read and
the fit is the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from focusshot.deadlines import check_deadline
from focusshot.heads.base import (
    FittedHead,
    Head,
    HeadInputError,
    check_query,
    check_validation,
    l2_normalize,
    one_hot,
    positive,
    register_head,
)
from focusshot.heads.zeroshot import TextHead, check_text_support, text_classifier
from focusshot.options import option

#: Default search grids (the paper's ranges: alpha in (0, 3], beta in (0, 7]).
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 31))
DEFAULT_BETA_GRID: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 71))


def cache_logits(query: Tensor, keys: Tensor, values: Tensor, beta: float) -> Tensor:
    """``exp(-beta (1 - query @ keys.T)) @ values``: (M, D), (N, D), (N, C) -> (M, C)."""
    return torch.exp(-beta * (1.0 - query @ keys.T)) @ values


@dataclass(frozen=True, eq=False)
class TipAdapterClassifier(FittedHead):
    """A fitted Tip-Adapter(-F): ``scale * f W_text^T + alpha * exp(-beta (1 - f keys^T)) values``.

    Attributes:
        keys: (N, D) cache keys (normalised support features; fine-tuned for Tip-Adapter-F).
        values: (N, C) cache values (one-hot support labels).
        text_weights: (C, D) normalised class text embeddings.
        alpha: residual ratio of the cache logits.
        beta: sharpness of the affinities.
        scale: CLIP's logit scale on the zero-shot term.
        head: registry name of the head that produced it.
        info: JSON-able facts about the fit (search results, training loss).
    """

    keys: Tensor
    values: Tensor
    text_weights: Tensor
    alpha: float
    beta: float
    scale: float = 100.0
    head: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.text_weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.text_weights.shape[1])

    def logits(self, query: Tensor) -> Tensor:
        """(M, D) -> (M, C)."""
        check_query(query, self.dim)
        f = l2_normalize(query.to(self.keys.dtype))
        return self.scale * f @ self.text_weights.T + self.alpha * cache_logits(
            f, self.keys, self.values, self.beta
        )

    def text_similarities(self, query: Tensor) -> Tensor:
        """(M, D) -> (M, C): cosine similarities to the class texts (the zero-shot term without its
        scale; the open-set ``mcm`` score reads them)."""
        check_query(query, self.dim)
        return l2_normalize(query.to(self.keys.dtype)) @ self.text_weights.T


def search_alpha_beta(
    zero_shot: Tensor,
    affinity: Tensor,
    values: Tensor,
    labels: Tensor,
    alpha_grid: tuple[float, ...],
    beta_grid: tuple[float, ...],
) -> tuple[float, float, float]:
    """Grid-search alpha and beta for validation accuracy.

    Args:
        zero_shot: (V, C) zero-shot logits of the validation features (scale included).
        affinity: (V, N) cosine similarities between validation features and cache keys.
        values: (N, C) cache values.
        labels: (V,) validation labels.
        alpha_grid, beta_grid: the candidates; beta is the outer loop, and the first best pair wins.

    Returns:
        ``(alpha, beta, accuracy)``.
    """
    alphas = torch.tensor(alpha_grid, dtype=zero_shot.dtype, device=zero_shot.device)
    chunk = max(1, (1 << 24) // max(1, zero_shot.numel()))
    best = (-1.0, alpha_grid[0], beta_grid[0])
    for beta in beta_grid:
        cache = torch.exp(-beta * (1.0 - affinity)) @ values  # (V, C)
        for start in range(0, len(alpha_grid), chunk):
            a = alphas[start : start + chunk]
            pred = (zero_shot + a[:, None, None] * cache).argmax(-1)  # (A, V)
            acc = (pred == labels).double().mean(-1)
            i = int(acc.argmax())
            if float(acc[i]) > best[0]:
                best = (float(acc[i]), float(alpha_grid[start + i]), float(beta))
    return best[1], best[2], best[0]


def _check_grid(name: str, grid: tuple[float, ...]) -> None:
    if not grid:
        raise ValueError(f"{name} must hold at least one value")
    for v in grid:
        positive(f"every {name} value", v, allow_zero=True)


@dataclass(frozen=True)
class TipAdapterSettings:
    """:class:`TipAdapter`'s settings, all but the text (the ``tip_adapter`` method's options)."""

    alpha: float = option(1.0, "residual ratio of the cache logits (used without validation data)")
    beta: float = option(5.5, "affinity sharpness (used without validation data)")
    scale: float = option(100.0, "CLIP's logit scale on the zero-shot term")
    alpha_grid: tuple[float, ...] = option(
        DEFAULT_ALPHA_GRID, "alpha candidates searched on validation data", repr=False
    )
    beta_grid: tuple[float, ...] = option(
        DEFAULT_BETA_GRID, "beta candidates searched on validation data", repr=False
    )

    def __post_init__(self) -> None:
        positive("alpha", self.alpha, allow_zero=True)
        positive("beta", self.beta, allow_zero=True)
        positive("scale", self.scale)
        _check_grid("alpha_grid", self.alpha_grid)
        _check_grid("beta_grid", self.beta_grid)

    def with_text(self, text_embeddings: Tensor) -> TipAdapter:
        """The head with these settings and ``text_embeddings``."""
        return TipAdapter(text_embeddings, **dataclasses.asdict(self))


@register_head("tip_adapter")
@dataclass(frozen=True, eq=False)  # holds a tensor: compare by identity
class TipAdapter(TipAdapterSettings, TextHead, Head):
    """Training-free Tip-Adapter (Zhang et al., ECCV 2022).

    Args:
        text_embeddings: (C, T, D) or (C, D) class text embeddings (templates averaged, normalised).
        alpha: residual ratio used without validation data (the paper's ImageNet default, 1).
        beta: affinity sharpness used without validation data (the paper's default, 5.5).
        scale: CLIP's logit scale on the zero-shot term.
        alpha_grid: alpha candidates searched when a validation split is given.
        beta_grid: beta candidates searched when a validation split is given.
    """

    def __post_init__(self) -> None:
        text_classifier(self.text_embeddings)
        super().__post_init__()

    def _cache(
        self, features: Tensor, labels: Tensor, num_classes: int | None
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        text = text_classifier(self.text_embeddings).detach()
        classes = check_text_support(features, labels, num_classes, text)
        if features.shape[0] == 0:
            raise HeadInputError(f"{self.name} needs at least one support example")
        keys = l2_normalize(features.detach().to(text.dtype))
        values = one_hot(labels, classes, text.dtype)
        return keys, values, text, classes

    def _finish(
        self,
        keys: Tensor,
        values: Tensor,
        text: Tensor,
        classes: int,
        val_features: Tensor | None,
        val_labels: Tensor | None,
        info: dict[str, Any],
    ) -> TipAdapterClassifier:
        val = check_validation(val_features, val_labels, keys.shape[-1], classes)
        alpha, beta = float(self.alpha), float(self.beta)
        if val is not None:
            f = l2_normalize(val[0].to(keys.dtype))
            alpha, beta, acc = search_alpha_beta(
                self.scale * f @ text.T, f @ keys.T, values, val[1], self.alpha_grid, self.beta_grid
            )
            info = {**info, "val_accuracy": acc, "searched": True}
        return TipAdapterClassifier(
            keys.contiguous(), values, text.contiguous(), alpha, beta, float(self.scale), self.name, info
        )

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> TipAdapterClassifier:
        """Build the cache from features (N, D), labels (N,); search alpha, beta on (V, D)/(V,) when given."""
        keys, values, text, classes = self._cache(features, labels, num_classes)
        return self._finish(keys, values, text, classes, val_features, val_labels, {})


@dataclass(frozen=True)
class TipAdapterFSettings(TipAdapterSettings):
    """:class:`TipAdapterF`'s settings, all but the text (the ``tip_adapter_f`` method's options)."""

    epochs: int = option(20, "training epochs over the support set")
    lr: float = option(1e-3, "AdamW learning rate (cosine schedule)")
    eps: float = option(1e-4, "AdamW epsilon")
    weight_decay: float = option(0.01, "AdamW weight decay")
    batch_size: int = option(256, "mini-batch size")
    seed: int = option(0, "seed of the mini-batch order")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("lr", self.lr)
        positive("eps", self.eps)
        positive("weight_decay", self.weight_decay, allow_zero=True)
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")

    def with_text(self, text_embeddings: Tensor) -> TipAdapterF:
        """The head with these settings and ``text_embeddings``."""
        return TipAdapterF(text_embeddings, **dataclasses.asdict(self))


@register_head("tip_adapter_f")
@dataclass(frozen=True, eq=False)  # holds a tensor: compare by identity
class TipAdapterF(TipAdapterFSettings, TipAdapter):
    """Tip-Adapter-F: Tip-Adapter whose cache keys are fine-tuned (Zhang et al., ECCV 2022, sec. 3.3).

    The keys (initialised to the normalised support features) are trained with AdamW and a cosine
    learning-rate schedule to minimise the cross-entropy of the Tip-Adapter logits on the support
    set, with alpha and beta held at their initial values; values and text weights stay frozen.
    Afterwards alpha and beta are searched on the validation split when one is given. The paper
    trains on augmented views of the support images; pass such features (and repeat the labels) if
    you have them. Mini-batch order comes from a private generator seeded with ``seed``, so a fit
    is deterministic and touches no global random state.

    Args:
        epochs: training epochs (the paper's 20).
        lr: AdamW learning rate (the paper's 0.001).
        eps: AdamW epsilon (1e-4, as in the paper's code).
        weight_decay: AdamW weight decay (torch's default, 0.01).
        batch_size: mini-batch size (256, as in the paper's code).
        seed: seed of the mini-batch order.
        (the rest as in :class:`TipAdapter`)
    """

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> TipAdapterClassifier:
        """Fine-tune the cache keys on features (N, D), labels (N,).

        Then alpha and beta are searched on (V, D) / (V,) validation data when given.
        """
        keys0, values, text, classes = self._cache(features, labels, num_classes)
        n = keys0.shape[0]
        steps = self.epochs * math.ceil(n / self.batch_size)
        losses: list[float] = []
        with torch.inference_mode(False), torch.enable_grad():
            x = keys0.clone()  # the training inputs: normalised support features
            y = labels.detach().clone().long().to(x.device)
            values_t, text_t = values.clone(), text.clone()
            keys = torch.nn.Parameter(keys0.clone())
            opt = torch.optim.AdamW([keys], lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
            gen = torch.Generator().manual_seed(self.seed)
            step = 0
            paced: float | None = None  # the clock at step 2 (the first pays for warm-up)
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=gen).to(x.device)
                total = 0.0
                for start in range(0, n, self.batch_size):
                    step += 1
                    t = check_deadline(
                        f"tip_adapter_f at step {step} of {steps}", done=step - 2, total=steps, since=paced
                    )
                    paced = t if step == 2 else paced
                    idx = order[start : start + self.batch_size]
                    f = x[idx]
                    logits = self.scale * f @ text_t.T + self.alpha * cache_logits(
                        f, keys, values_t, self.beta
                    )
                    loss = torch.nn.functional.cross_entropy(logits, y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                losses.append(total / n)
            trained = keys.detach().clone()
        info = {"epochs": self.epochs, "train_loss": losses, "seed": self.seed}
        return self._finish(trained, values, text, classes, val_features, val_labels, info)
