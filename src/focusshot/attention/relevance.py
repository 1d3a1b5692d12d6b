"""Relevance maps over patches: which part of the image a prediction rests on.

* :func:`gradient_rollout`: Chefer, Gur and Wolf, *Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers*, ICCV 2021, Eqs. 5-6 (self-attention
  rule): ``R = I``, then for every layer, first to last, ``A_bar = E_h[(grad_A * A)^+]`` and
  ``R <- R + A_bar R``; the map is the [CLS] row of ``R`` over the patches. ``grad_A`` is the
  gradient of the explained class's logit with respect to the layer's attention probabilities,
  so the map is class-specific.
* :func:`plain_rollout`: Abnar and Zuidema, *Quantifying Attention Flow in Transformers*, ACL 2020:
  ``A' = (E_h[A] + I) / 2``, rows renormalised, multiplied over the layers; the [CLS] row. Not
  class-specific (a reference map).
* :func:`cls_attention`: the last layer's [CLS] row, heads averaged (a reference map).
* :func:`grad_cam`: Selvaraju et al., *Grad-CAM*, ICCV 2017, on a token sequence: channel weights
  are the gradient averaged over the spatial tokens, the map is ``ReLU(sum_c w_c T_c)``.

Every function returns one non-negative value per patch, ``(B, P)``; patches sit at
``num_prefix_tokens .. num_prefix_tokens + P`` of the token axis (tokens after them, such as VPT's
prompts, take part in the rollout but get no value).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["cls_attention", "grad_cam", "gradient_rollout", "plain_rollout"]


def _check(probs: Sequence[Tensor], num_prefix_tokens: int, num_patches: int) -> tuple[int, int]:
    if not probs:
        raise ValueError("a rollout needs the attention of at least one layer")
    b, n = probs[0].shape[0], probs[0].shape[-1]
    for a in probs:
        if a.ndim != 4 or a.shape[0] != b or a.shape[-2:] != (n, n):
            raise ValueError(
                f"every layer's attention must be (B, H, {n}, {n}) with B = {b}, got {tuple(a.shape)}"
            )
    if num_prefix_tokens < 1 or n < num_prefix_tokens + num_patches:
        raise ValueError(
            f"{n} tokens do not hold a [CLS] token, {num_prefix_tokens - 1} more prefix tokens and "
            f"{num_patches} patches"
        )
    return b, n


def gradient_rollout(
    probs: Sequence[Tensor], grads: Sequence[Tensor], num_prefix_tokens: int, num_patches: int
) -> Tensor:
    """Chefer et al.'s class-specific relevance (module docstring) of every patch.

    Args:
        probs: attention probabilities of every layer, first layer first, each ``(B, H, N, N)``.
        grads: the gradient of the explained logit with respect to each of ``probs``, same shapes.
        num_prefix_tokens: tokens ahead of the patches ([CLS] first, then registers).
        num_patches: ``P``, the patch tokens after them.

    Returns:
        ``(B, P)`` float32, non-negative: row 0 of ``R`` at the patch columns.
    """
    b, n = _check(probs, num_prefix_tokens, num_patches)
    if len(grads) != len(probs) or any(g.shape != a.shape for g, a in zip(grads, probs, strict=False)):
        raise ValueError("grads must match probs layer for layer and in shape")
    r = torch.eye(n, dtype=torch.float64).expand(b, n, n)
    for a, g in zip(probs, grads, strict=True):
        cam = (g.detach().double().cpu() * a.detach().double().cpu()).clamp_min(0.0).mean(dim=1)  # (B, N, N)
        r = r + cam @ r
    s = int(num_prefix_tokens)
    return r[:, 0, s : s + num_patches].clamp_min(0.0).float()


def plain_rollout(probs: Sequence[Tensor], num_prefix_tokens: int, num_patches: int) -> Tensor:
    """Attention rollout (Abnar and Zuidema 2020): ``(B, P)`` float32, the [CLS] row over patches.

    Args:
        probs: attention probabilities of every layer, first layer first, each ``(B, H, N, N)``.
        num_prefix_tokens: tokens ahead of the patches ([CLS] first).
        num_patches: ``P``, the patch tokens after them.
    """
    b, n = _check(probs, num_prefix_tokens, num_patches)
    eye = torch.eye(n, dtype=torch.float64)
    r = eye.expand(b, n, n)
    for a in probs:
        step = (a.detach().double().cpu().mean(dim=1) + eye) / 2.0
        r = (step / step.sum(dim=-1, keepdim=True)) @ r
    s = int(num_prefix_tokens)
    return r[:, 0, s : s + num_patches].float()


def cls_attention(probs: Tensor, num_prefix_tokens: int, num_patches: int) -> Tensor:
    """The [CLS] row of one layer's attention ``(B, H, N, N)``, heads averaged: ``(B, P)`` float32.

    Args:
        probs: one layer's attention probabilities (the last layer's, for the reference map).
        num_prefix_tokens: tokens ahead of the patches ([CLS] first).
        num_patches: ``P``, the patch tokens after them.
    """
    _check([probs], num_prefix_tokens, num_patches)
    s = int(num_prefix_tokens)
    return probs.detach().float().cpu().mean(dim=1)[:, 0, s : s + num_patches]


def grad_cam(tokens: Tensor, grads: Tensor, num_prefix_tokens: int = 0) -> Tensor:
    """Grad-CAM over spatial tokens: ``(B, N, C)`` tokens and the logit's gradient -> ``(B, N - s)``.

    Args:
        tokens: the last stage's tokens (a CNN's feature map flattened row-major; Swin's last stage).
        grads: the gradient of the explained logit with respect to ``tokens``, same shape.
        num_prefix_tokens: ``s``, tokens ahead of the spatial ones (CLIP-ResNet's mean token), left out.

    Returns:
        ``(B, N - s)`` float32, non-negative.
    """
    if tokens.ndim != 3 or grads.shape != tokens.shape:
        raise ValueError(
            f"tokens and grads must both be (B, N, C), got {tuple(tokens.shape)}, {tuple(grads.shape)}"
        )
    s = int(num_prefix_tokens)
    t, g = tokens.detach().double().cpu()[:, s:], grads.detach().double().cpu()[:, s:]
    weights = g.mean(dim=1, keepdim=True)  # (B, 1, C)
    return (t * weights).sum(dim=-1).clamp_min(0.0).float()
