"""Foveal attention biases (FALIP) and attention-rollout regions.

FALIP (Zhuang et al., "Visual Prompt as Foveal Attention Boosts CLIP Zero-Shot Performance", ECCV
2024, Sec. 3.2) adds a *foveal attention mask* ``M`` of shape ``(N, N)`` to the pre-softmax logits
of CLIP's last self-attention layers. ``M`` is zero except in the [CLS] row (row 0), at the columns
of the patch tokens that a region of interest (a box) covers, where it holds a 2-D Gaussian over the
box's patch grid, min-max normalised to ``[0, 1]`` and multiplied by a strength ``alpha``. Adding a
positive bias at those columns makes the [CLS] token, which becomes the image embedding, draw more
of its value from the region, while the image itself is left untouched (unlike a drawn red circle
or a blurred background).

What the official code (``pumpkin805/FALIP``, ``executor.py``) does, and what is kept here:

* the Gaussian is built over the box's patches, centred on the box's centre patch
  ``((h - 1) / 2, (w - 1) / 2)``, with ``sigma`` in **patches** (token-grid units; the official
  value is 100, so on a 14 x 14 grid the raw Gaussian is nearly flat and its *shape* comes from the
  min-max normalisation: ``(g - min + 1e-6) / (max - min + 1e-6) * alpha``, which is ``alpha`` at
  the centre, about ``0`` at the box's far corners, and ``alpha`` everywhere for a 1-patch box);
* only row 0 ([CLS]) is biased, identically for every head;
* ``alpha = 0.2`` (the value the official code passes as ``v``).

Deliberate differences (documented in the method, :mod:`focusshot.methods.falip`): the official
code maps a box to 224 x 224 by squashing the whole image (its default ``square_size``); here a box
goes through the backbone's own resize-shorter + centre-crop geometry
(:func:`focusshot.data.transforms.box_to_crop`). The official patch range
``max(ceil(x0 / p), 1) - 1 .. max(ceil(x1 / p), 1) - 1`` also takes the patch before an edge that
falls exactly on a patch boundary; here the range is exactly the patches the box overlaps.

:func:`rollout_box` supplies the "automatic" region: attention rollout (Abnar & Zuidema,
"Quantifying Attention Flow in Transformers", ACL 2020) of the [CLS] token, turned into the
bounding box of the smallest set of patches holding a share ``keep`` of the rolled-out mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["box_patch_range", "foveal_bias", "foveal_bias_graph", "gaussian_region", "rollout_box"]

#: the epsilon of the official min-max normalisation (keeps a 1-patch or flat region at ``alpha``)
_EPS = 1e-6
#: tolerance when a box edge falls on a patch boundary (boxes are floats in [0, 1])
_EDGE_TOL = 1e-6


def gaussian_region(height: int, width: int, sigma: float, alpha: float) -> Tensor:
    """The foveal weights ``(height, width)`` of a box covering ``height x width`` patches.

    ``exp(-d^2 / (2 sigma^2))`` with ``d`` the distance (in patches) from the region's centre
    ``((height - 1) / 2, (width - 1) / 2)``, then ``(g - min + 1e-6) / (max - min + 1e-6) * alpha``
    (FALIP, Sec. 3.2; the official code's normalisation, epsilon included). Computed in float64.

    Args:
        height: rows of patches the region spans, at least 1.
        width: columns of patches the region spans, at least 1.
        sigma: the Gaussian's standard deviation, in patches; must be positive (FALIP's official
            100 makes the raw Gaussian almost flat, so the shape comes from the normalisation).
        alpha: the strength: the weight the normalisation gives the patches nearest the centre.

    Returns:
        ``(height, width)`` float64 weights, ``alpha`` nearest the centre and about 0 at the far
        corners; ``alpha`` throughout when every patch is equally far from the centre (regions of
        at most 2 x 2 patches).
    """
    if height < 1 or width < 1:
        raise ValueError(f"a region needs at least one patch, got {height} x {width}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive (in patches), got {sigma}")
    ys = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2
    g = torch.exp(-0.5 * d2 / float(sigma) ** 2)
    lo, hi = g.min(), g.max()
    return (g - lo + _EPS) / (hi - lo + _EPS) * float(alpha)


def box_patch_range(box: Sequence[float], grid: tuple[int, int]) -> tuple[int, int, int, int]:
    """The patches a box overlaps: ``(row0, col0, row1, col1)``, inclusive, on a ``(rows, cols)`` grid.

    A box thinner than a patch still covers the patch it lies in; an edge within 1e-6 of a patch
    boundary counts as on it, and the range is clamped to the grid.

    Args:
        box: ``(x0, y0, x1, y1)`` in ``[0, 1]`` coordinates of the (centre-cropped) input, ``x``
            along the columns and ``y`` along the rows.
        grid: the patch grid ``(rows, cols)``.

    Returns:
        ``(row0, col0, row1, col1)``: the first row, first column, last row and last column the
        box overlaps (inclusive).
    """
    rows, cols = (int(v) for v in grid)
    x0, y0, x1, y1 = (float(v) for v in box)
    c0 = min(max(math.floor(x0 * cols + _EDGE_TOL), 0), cols - 1)
    r0 = min(max(math.floor(y0 * rows + _EDGE_TOL), 0), rows - 1)
    c1 = min(max(math.ceil(x1 * cols - _EDGE_TOL) - 1, c0), cols - 1)
    r1 = min(max(math.ceil(y1 * rows - _EDGE_TOL) - 1, r0), rows - 1)
    return r0, c0, r1, c1


def foveal_bias(
    boxes: Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    num_tokens: int | None = None,
    alpha: float = 0.2,
    sigma: float = 100.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """FALIP's foveal attention bias for a batch of boxes: ``(B, 4) -> (B, 1, N, N)``.

    Args:
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in ``[0, 1]`` coordinates of the (centre-cropped)
            input; a row of NaN means "no region" and gives an all-zero bias for that image.
        grid: the patch grid ``(rows, cols)``; patch ``(r, c)`` is token
            ``num_prefix_tokens + r * cols + c``.
        num_prefix_tokens: tokens ahead of the patches ([CLS] plus registers); must be >= 1.
        num_tokens: ``N``, the sequence length (``num_prefix_tokens + rows * cols`` by default;
            tokens appended after the patches are never biased).
        alpha: the strength: the bias at the region's centre patch (FALIP's official 0.2).
        sigma: the Gaussian's standard deviation in patches (FALIP's official 100).
        dtype, device: of the result.

    Returns:
        ``(B, 1, N, N)``, broadcast over heads: zero except ``[b, 0, 0, prefix + patch]`` for the
        patches of box ``b`` (:func:`gaussian_region` over :func:`box_patch_range`).
    """
    rows, cols = (int(v) for v in grid)
    prefix = int(num_prefix_tokens)
    if prefix < 1:
        raise ValueError("a foveal bias needs a [CLS] token (num_prefix_tokens >= 1)")
    n = prefix + rows * cols if num_tokens is None else int(num_tokens)
    if n < prefix + rows * cols:
        raise ValueError(f"{n} tokens cannot hold {prefix} prefix tokens and a {rows}x{cols} grid")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (B, 4), got shape {tuple(boxes.shape)}")
    out = torch.zeros(boxes.shape[0], 1, n, n, dtype=dtype, device=device)
    for b, box in enumerate(boxes.detach().to("cpu", torch.float64).tolist()):
        if any(math.isnan(v) for v in box):
            continue
        r0, c0, r1, c1 = box_patch_range(box, (rows, cols))
        g = gaussian_region(r1 - r0 + 1, c1 - c0 + 1, sigma, alpha)
        row = torch.zeros(rows, cols, dtype=torch.float64)
        row[r0 : r1 + 1, c0 : c1 + 1] = g
        out[b, 0, 0, prefix : prefix + rows * cols] = row.reshape(-1).to(dtype)
    return out


def foveal_bias_graph(
    boxes: Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    num_tokens: int | None = None,
    alpha: float = 0.2,
    sigma: float = 100.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`foveal_bias` in tensor operations alone (no loop over the boxes, no value read back into
    Python), so that it traces into one graph with a symbolic batch (ONNX export): the same
    ``(B, 1, N, N)`` values, on the boxes' device.

    Per box, the patch range of :func:`box_patch_range` (floor/ceil with the same edge tolerance,
    clamped to the grid), and over it :func:`gaussian_region`'s weights: the distance of each patch
    from the range's centre, normalised by the weights' minimum (at the range's corners) and
    maximum (at the patch, or half-patch, nearest the centre). A NaN row gives zeros.

    Args:
        boxes: ``(B, 4)`` regions ``x0, y0, x1, y1`` in ``[0, 1]`` crop coordinates (NaN: none).
        grid: the patch grid ``(rows, cols)``.
        num_prefix_tokens: tokens before the patches ([CLS], registers), at least 1.
        num_tokens: the sequence length N (default: prefix + patches).
        alpha: the bias's peak.
        sigma: the Gaussian's std, in patches.
        dtype: the bias's dtype.
    """
    rows, cols = (int(v) for v in grid)
    prefix = int(num_prefix_tokens)
    n = prefix + rows * cols if num_tokens is None else int(num_tokens)
    if prefix < 1 or n < prefix + rows * cols:
        raise ValueError(f"{n} tokens cannot hold {prefix} (>= 1) prefix tokens and a {rows}x{cols} grid")
    b = boxes.to(torch.float64)
    missing = torch.isnan(b).any(dim=1)
    x0, y0, x1, y1 = torch.nan_to_num(b, nan=0.0).unbind(1)
    c0 = torch.floor(x0 * cols + _EDGE_TOL).clamp(0, cols - 1)
    r0 = torch.floor(y0 * rows + _EDGE_TOL).clamp(0, rows - 1)
    c1 = torch.maximum(torch.ceil(x1 * cols - _EDGE_TOL) - 1, c0).clamp(max=cols - 1)
    r1 = torch.maximum(torch.ceil(y1 * rows - _EDGE_TOL) - 1, r0).clamp(max=rows - 1)
    r = torch.arange(rows, dtype=torch.float64, device=b.device).view(1, rows, 1)
    c = torch.arange(cols, dtype=torch.float64, device=b.device).view(1, 1, cols)

    def per_box(t: Tensor) -> Tensor:
        return t.view(-1, 1, 1)

    d2 = (r - per_box(r0 + r1) / 2) ** 2 + (c - per_box(c0 + c1) / 2) ** 2
    h, w = r1 - r0 + 1, c1 - c0 + 1
    far = ((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2
    near = (torch.remainder(h + 1, 2) / 2) ** 2 + (torch.remainder(w + 1, 2) / 2) ** 2
    lo, hi = torch.exp(-0.5 * far / float(sigma) ** 2), torch.exp(-0.5 * near / float(sigma) ** 2)
    g = torch.exp(-0.5 * d2 / float(sigma) ** 2)
    weights = (g - per_box(lo) + _EPS) / per_box(hi - lo + _EPS) * float(alpha)
    inside = (r >= per_box(r0)) & (r <= per_box(r1)) & (c >= per_box(c0)) & (c <= per_box(c1))
    inside = inside & ~per_box(missing)
    row = torch.where(inside, weights, torch.zeros_like(weights)).reshape(-1, rows * cols).to(dtype)
    row = torch.nn.functional.pad(row, (prefix, n - prefix - rows * cols))  # (B, N): the [CLS] row
    return torch.nn.functional.pad(row[:, None, None, :], (0, 0, 0, n - 1))  # (B, 1, N, N)


def rollout_box(
    probs: Sequence[Tensor],
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    keep: float = 0.5,
) -> Tensor:
    """The "automatic" region: attention rollout of [CLS] turned into a box, ``-> (B, 4)`` in [0, 1].

    Rollout (Abnar & Zuidema, 2020): per layer, heads averaged, ``A' = (A + I) / 2`` with rows
    renormalised; the product ``A'_L ... A'_1`` (later layers on the left); its [CLS] row over the
    patch columns, renormalised to sum to one. The box is the bounding box (in crop coordinates) of
    the smallest set of patches, taken in order of decreasing mass (ties in patch order), that
    holds ``keep`` of it.

    Args:
        probs: attention probabilities of consecutive layers, each ``(B, H, N, N)`` (first layer
            first), with [CLS] at token 0 and the patches at ``num_prefix_tokens ..``.
        grid: the patch grid ``(rows, cols)``.
        num_prefix_tokens: tokens ahead of the patches.
        keep: the share of the rolled-out patch mass the box's patches must hold, in ``(0, 1]``.
    """
    if not probs:
        raise ValueError("rollout needs the attention of at least one layer")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    rows, cols = (int(v) for v in grid)
    prefix = int(num_prefix_tokens)
    first = probs[0]
    b, _, n, _ = first.shape
    if n < prefix + rows * cols:
        raise ValueError(f"{n} tokens cannot hold {prefix} prefix tokens and a {rows}x{cols} grid")
    eye = torch.eye(n, dtype=torch.float64, device=first.device)
    rolled = eye.expand(b, n, n)
    for p in probs:
        a = p.detach().to(torch.float64).mean(dim=1)
        a = 0.5 * (a + eye)
        a = a / a.sum(dim=-1, keepdim=True)
        rolled = a @ rolled
    mass = rolled[:, 0, prefix : prefix + rows * cols]
    mass = mass / mass.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    order = mass.sort(dim=-1, descending=True, stable=True).indices  # ties: patch order
    csum = mass.gather(-1, order).cumsum(dim=-1)
    count = ((csum < keep - 1e-9).sum(dim=-1) + 1).clamp(max=rows * cols)
    out = torch.empty(b, 4, dtype=torch.float32)
    for i in range(b):
        chosen = order[i, : int(count[i])].cpu()
        r, c = chosen // cols, chosen % cols
        out[i] = torch.tensor(
            [
                float(c.min()) / cols,
                float(r.min()) / rows,
                float(c.max() + 1) / cols,
                float(r.max() + 1) / rows,
            ]
        )
    return out
