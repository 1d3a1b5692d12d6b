"""Grad-Rollout and position prompts: where in a support image the class signal lies (FORT).

Wang, Jie & Deng, *Focus Your Attention when Few-Shot Classification*, NeurIPS 2023, Sec. 4.1, and
the official code (``Haoqing-Wang/FORT``, ``importance`` / ``imp_to_focus``), which differ:

* **Gradient term.** The gradient of the true-class score (the solver-initialised head, before its
  temperature division; the batch *mean* of the scores, as the code does) with respect to the
  input of the last block, ``(B, N, C)``. Its patch rows are centred over patches and projected
  on their first principal component (first right singular vector): one number per patch,
  ``(B, P)``. An SVD returns ``±v``; the code keeps whatever sign it gets (``sign="svd"``). Our
  default ``sign="aligned"`` flips it, per image, so that the projection correlates positively
  with gradient x input summed over channels (the first-order contribution of each patch to the
  score): a documented rule instead of chance.
* **Fusion per layer.** Patch-to-patch attention (prefix tokens dropped) of every layer, heads
  reduced by ``min`` (code) or ``mean`` (paper), plus ``lamb`` x the gradient term added to every
  row (column-wise); the code then zeroes the ``int(0.9 P)`` smallest entries of every row (keeps
  the largest 10%: ``row_keep=0.1``); the paper keeps all (``row_keep=1``).
* **Rollout.** ``A' = (A + I) / 2``, rows renormalised, multiplied from the first layer up
  (``R = A'_L ... A'_1``); the importance of patch ``j`` is the mean over rows of ``R[:, j]``.

``variant="code"`` = (min, 0.1); ``variant="paper"`` = (mean, 1.0).

Position prompts (``imp_to_focus``): the ``top`` most important patches keep their importance,
the rest get zero, and the result is scaled to sum to ``top`` (the code's target for the
attention loss, a "many-hot" vector of total mass ``top``). Importance can be negative in
degenerate cases (the gradient term dominates); we clip the kept weights at zero, where the code
would keep a negative target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from focusshot.attention.record import attention_modules, record

__all__ = [
    "RolloutSettings",
    "box_coverage",
    "first_component",
    "fused_rollout",
    "grad_rollout_importance",
    "position_prompts",
    "prompt_count",
    "tail_layers",
]

VARIANTS = {"code": ("min", 0.1), "paper": ("mean", 1.0)}


@dataclass(frozen=True)
class RolloutSettings:
    """How Grad-Rollout fuses and rolls out (see the module docstring).

    Attributes:
        variant: ``"code"`` (heads fused by their minimum, each fused row keeping its largest 10%,
            as the official code) or ``"paper"`` (heads averaged, every entry kept, as the paper).
        lamb: weight of the gradient term added to each layer's fused patch attention (default 1).
        sign: the sign rule of the gradient term: ``"aligned"`` (default; each image's projection
            flipped to correlate positively with gradient x input) or ``"svd"`` (the sign the SVD
            returns, as the official code).
    """

    variant: str = "code"
    lamb: float = 1.0
    sign: str = "aligned"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        if self.sign not in ("aligned", "svd"):
            raise ValueError(f"sign must be 'aligned' or 'svd', got {self.sign!r}")

    @property
    def head_fusion(self) -> str:
        return VARIANTS[self.variant][0]

    @property
    def row_keep(self) -> float:
        return VARIANTS[self.variant][1]


def prompt_count(grid: tuple[int, int], top: int = 0) -> int:
    """``top`` if given, else the grid's side (FORT: P = 14 on a 14x14 grid, 7 for Swin-T's 7x7).

    Args:
        grid: the patch grid ``(rows, cols)``.
        top: how many patches to prompt; ``0`` (the default) means ``round(sqrt(rows * cols))``,
            and a count above ``rows * cols`` is cut to it. Negative counts raise ``ValueError``.
    """
    if top < 0:
        raise ValueError(f"the number of prompt patches must be >= 0, got {top}")
    rows, cols = grid
    return min(int(top), rows * cols) if top else int(round((rows * cols) ** 0.5))


def first_component(grad: Tensor, sign: str = "aligned", reference: Tensor | None = None) -> Tensor:
    """Per image, the patch gradients projected on their first principal component.

    Args:
        grad: ``(B, P, C)`` gradient rows of the patch tokens (NaNs count as zero, as in the code).
        sign: ``"svd"`` keeps the sign the SVD returns; ``"aligned"`` flips each image's projection
            so that it correlates positively with ``reference``.
        reference: ``(B, P)`` per-patch gradient x input (needed for ``"aligned"``).

    Returns:
        ``(B, P)`` float32: ``(g - mean_p g) @ v_1``.
    """
    if grad.ndim != 3:
        raise ValueError(f"grad must be (B, P, C), got shape {tuple(grad.shape)}")
    g = torch.nan_to_num(grad.detach().to(torch.float64), nan=0.0)
    g = g - g.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(g, full_matrices=False)
    proj: Tensor = (g @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # (B, P)
    if sign == "aligned":
        if reference is None or reference.shape != proj.shape:
            got = None if reference is None else tuple(reference.shape)
            raise ValueError(f"sign='aligned' needs a (B, P) = {tuple(proj.shape)} reference, got {got}")
        ref = reference.detach().to(torch.float64)
        cov = ((proj - proj.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
        proj = proj * torch.where(cov < 0, -1.0, 1.0).to(proj).unsqueeze(1)
    elif sign != "svd":
        raise ValueError(f"sign must be 'aligned' or 'svd', got {sign!r}")
    return proj.to(torch.float32)


def fused_rollout(
    probs: Sequence[Tensor],
    grad_term: Tensor,
    num_prefix_tokens: int,
    head_fusion: str = "min",
    row_keep: float = 0.1,
    lamb: float = 1.0,
) -> Tensor:
    """Grad-Rollout importance over patches: ``(B, P)``.

    Args:
        probs: attention probabilities of consecutive layers, first layer first, each
            ``(B, H, N, N)``; patches at ``num_prefix_tokens .. num_prefix_tokens + P`` (tokens
            after them, such as VPT prompts, are dropped).
        grad_term: ``(B, P)`` from :func:`first_component`.
        num_prefix_tokens: tokens ahead of the patches ([CLS], registers).
        head_fusion: ``"min"`` (code) or ``"mean"`` (paper) over heads.
        row_keep: share of each row's largest entries kept (code 0.1; 1 keeps all).
        lamb: weight of the gradient term.
    """
    if not probs:
        raise ValueError("Grad-Rollout needs the attention of at least one layer")
    if head_fusion not in ("min", "mean"):
        raise ValueError(f"head_fusion must be 'min' or 'mean', got {head_fusion!r}")
    if not 0.0 < row_keep <= 1.0:
        raise ValueError(f"row_keep must lie in (0, 1], got {row_keep}")
    b, p = grad_term.shape
    s = int(num_prefix_tokens)
    drop = int(p * (1.0 - row_keep))
    eye = torch.eye(p, dtype=torch.float64, device=grad_term.device)
    result = eye.unsqueeze(0).expand(b, p, p)
    g = grad_term.detach().to(torch.float64).unsqueeze(1)  # (B, 1, P)
    for layer in probs:
        if layer.ndim != 4 or layer.shape[0] != b or layer.shape[-1] < s + p:
            raise ValueError(f"attention {tuple(layer.shape)} does not hold {s} prefix tokens + {p} patches")
        a = layer.detach().to(torch.float64)
        a = a.amin(dim=1) if head_fusion == "min" else a.mean(dim=1)
        fused = a[:, s : s + p, s : s + p] + lamb * g
        if drop > 0:
            idx = fused.topk(drop, dim=-1, largest=False).indices
            fused = fused.scatter(-1, idx, 0.0)
        step = (fused + eye) / 2.0
        step = step / step.sum(dim=-1, keepdim=True)
        result = step @ result
    return result.mean(dim=1).to(torch.float32)


def position_prompts(importance: Tensor, top: int) -> Tensor:
    """The ``top`` most important patches, weighted by importance, scaled to sum to ``top``.

    ``importance (B, P) -> (B, P)``, non-negative, ``top`` non-zero entries at most, each row
    summing to ``top`` (divide by ``top`` for a distribution over patches). Ties keep patch order.
    Negative importance is clipped to zero; when every kept weight is zero, the ``top`` patches
    share the mass equally.

    Args:
        importance: ``(B, P)`` importance of each patch (higher: more important), e.g. from
            :func:`grad_rollout_importance`.
        top: how many patches per image keep a weight, in ``[1, P]`` (:func:`prompt_count`).
    """
    if importance.ndim != 2:
        raise ValueError(f"importance must be (B, P), got shape {tuple(importance.shape)}")
    p = importance.shape[1]
    if not 1 <= top <= p:
        raise ValueError(f"top must lie in [1, {p}], got {top}")
    order = importance.sort(dim=1, descending=True, stable=True).indices[:, :top]
    kept = torch.zeros_like(importance).scatter(1, order, importance.gather(1, order).clamp_min(0.0))
    total = kept.sum(dim=1, keepdim=True)
    uniform = torch.zeros_like(importance).scatter(1, order, 1.0)
    kept = torch.where(total > 0, kept, uniform)  # all kept weights zero: equal weights
    return kept * top / kept.sum(dim=1, keepdim=True)


def box_coverage(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """Fraction of each patch inside each box: ``boxes (B, 4) -> (B, rows * cols)`` in ``[0, 1]``.

    Boxes are ``(x0, y0, x1, y1)`` in ``[0, 1]`` crop coordinates; a NaN row (no box) covers the
    whole image. Patches in row-major order.

    Args:
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in ``[0, 1]`` coordinates of the (centre-cropped)
            input, ``x`` along the columns; a row with a NaN stands for an image without a box.
        grid: the patch grid ``(rows, cols)``.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (B, 4), got shape {tuple(boxes.shape)}")
    rows, cols = (int(v) for v in grid)
    b = boxes.detach().to(torch.float64).cpu()
    b = torch.where(torch.isnan(b).any(dim=1, keepdim=True), torch.tensor([0.0, 0.0, 1.0, 1.0]).double(), b)
    c = torch.arange(cols, dtype=torch.float64)
    r = torch.arange(rows, dtype=torch.float64)
    wx = ((torch.minimum(b[:, 2:3], (c + 1) / cols) - torch.maximum(b[:, 0:1], c / cols)) * cols).clamp(0, 1)
    wy = ((torch.minimum(b[:, 3:4], (r + 1) / rows) - torch.maximum(b[:, 1:2], r / rows)) * rows).clamp(0, 1)
    return (wy[:, :, None] * wx[:, None, :]).reshape(len(b), rows * cols).to(torch.float32)


ScoreFn = Callable[[Tensor], Tensor]


def grad_rollout_importance(
    model: nn.Module,
    run: Callable[[Tensor], Tensor],
    score: ScoreFn,
    inputs: Tensor,
    labels: Tensor,
    layers: Sequence[int],
    num_prefix_tokens: int,
    num_patches: int,
    settings: RolloutSettings = RolloutSettings(),
    chunk: int = 16,
) -> tuple[Tensor, Tensor]:
    """Grad-Rollout importance of every patch of every input, and the gradient term.

    Args:
        model: the module whose :class:`~focusshot.attention.core.Attention` layers are recorded.
        run: ``inputs (b, ...) -> features (b, D)``, running ``layers`` of ``model``.
        score: ``features (b, D) -> class scores (b, C)`` (the head before its temperature).
        inputs: ``(B, ...)`` what ``run`` reads.
        labels: ``(B,)`` the class whose score is differentiated.
        layers: the attention layers ``run`` passes through, in order; the last one's block input
            gets the gradient.
        num_prefix_tokens, num_patches: the token layout.
        settings: variant, ``lamb``, sign rule.
        chunk: images per forward (the score is the mean over all ``B``, as the code's).

    Returns:
        ``(importance (B, P), grad_term (B, P))``.
    """
    s, p = int(num_prefix_tokens), int(num_patches)
    total = len(inputs)
    imps, terms = [], []
    with torch.inference_mode(False), torch.enable_grad():
        for i in range(0, total, chunk):  # every step after the backward is per image: chunking is exact
            x = inputs[i : i + chunk].detach().clone().requires_grad_(True)
            y = labels[i : i + chunk]
            with record(model, "probs", "block_in", layers=list(layers), grad=True) as rec:
                out = score(run(x))
                if out.ndim != 2 or out.shape[0] != len(x):
                    raise ValueError(f"score must give (b, C) scores, got {tuple(out.shape)}")
                chosen = out.gather(1, y.to(out.device).long().unsqueeze(1)).sum() / total
                block_in = rec.get("block_in", layers[-1])
                (g,) = torch.autograd.grad(chosen, block_in)
                g = g.detach()[:, s : s + p].float()
                ref = (g * block_in.detach()[:, s : s + p].float()).sum(-1)
                term = first_component(g.cpu(), settings.sign, ref.cpu())
                # heads reduced and prefix tokens dropped here, so only (b, P, P) per layer is kept
                fused = []
                for layer in layers:
                    a = rec.get("probs", layer).detach()[:, :, s : s + p, s : s + p].float().cpu()
                    fused.append(
                        a.amin(dim=1, keepdim=True) if settings.head_fusion == "min" else a.mean(1, True)
                    )
            imps.append(fused_rollout(fused, term, 0, "mean", settings.row_keep, settings.lamb))
            terms.append(term)
    imp, term = torch.cat(imps), torch.cat(terms)
    return imp, term


def tail_layers(model: nn.Module, start: int | None) -> list[int]:
    """Attention-layer indices a tail starting at block ``start`` runs (all when ``None``).

    Args:
        model: the backbone whose attention layers are counted
            (:func:`~focusshot.attention.record.attention_modules`; one per block, as in a ViT).
        start: the first block the tail runs (the tokens entering it are the cached prefix), or
            ``None`` when the whole tower runs from the image.

    Returns:
        ``[start, ..., L - 1]`` for ``L`` attention layers (``[0, ..., L - 1]`` for ``None``).
    """
    total = len(attention_modules(model))
    return list(range(0 if start is None else int(start), total))
