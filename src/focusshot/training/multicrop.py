"""DINO's multi-crop views of a batch of images, in torch and drawn from a seeded generator.

Caron et al., *Emerging Properties in Self-Supervised Vision Transformers* (ICCV 2021), Sec. 3.1:
two *global* views (a large random-resized crop at full resolution) and several *local* views (a
small crop at a lower resolution) of every image; the teacher sees the global views only, the
student every view, which teaches local-to-global correspondence.

Each view is a random resized crop (area fraction from ``scale``, aspect ratio from [3/4, 4/3], ten
tries as torchvision's ``RandomResizedCrop``, then the whole image), a horizontal flip with
probability 1/2, and a light colour jitter (brightness, contrast and saturation, with probability
0.8, in that fixed order). DINO also jitters hue, turns images grey, blurs and solarises; those are
left out here because colour and fine surface patterns (stripes, dots) are what FocusWorld classes
are made of, and invariance to them would erase the classes. Crops are sampled continuously and
resampled bilinearly with one ``grid_sample`` per group, so a batch costs a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Rec. 601 luma weights, as torchvision's ``rgb_to_grayscale``.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class CropSpec:
    """The views of :func:`multi_crop`.

    Attributes:
        global_size / local_size: output side of global / local views (pixels).
        n_local: local views per image.
        global_scale / local_scale: ``(min, max)`` area fraction of the image a view crops.
        jitter_p: probability of the colour jitter per view.
        brightness / contrast / saturation: jitter strengths (factors drawn in ``[1-s, 1+s]``).
    """

    global_size: int = 64
    local_size: int = 32
    n_local: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, step, stream)``."""
    state = np.random.SeedSequence([int(seed), int(stream), 0x5EED, int(step)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_boxes(n: int, scale: tuple[float, float], gen: torch.Generator, tries: int = 10) -> Tensor:
    """Random-resized-crop boxes on a square image, as fractions of its side.

    Returns:
        ``(n, 4)``: ``(x0, y0, w, h)`` with ``0 <= x0 <= x0 + w <= 1`` (and the same for ``y``).
    """
    area = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=gen)
    log_ratio = torch.empty(n, tries).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = log_ratio.exp()
    w, h = (area * ratio).sqrt(), (area / ratio).sqrt()
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    w = torch.where(first >= 0, w[rows, pick], torch.ones(n))
    h = torch.where(first >= 0, h[rows, pick], torch.ones(n))
    u = torch.rand(n, 2, generator=gen)
    return torch.stack([u[:, 0] * (1 - w), u[:, 1] * (1 - h), w, h], dim=1)


def resized_crops(images: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop ``boxes`` out of ``images`` and resample each to ``size`` x ``size`` (bilinear).

    Args:
        images: ``(B, 3, H, W)`` float.
        boxes: ``(B, 4)`` from :func:`sample_boxes`.
        flip: ``(B,)`` bool, mirror the crop left-right.
        size: output side.

    Returns:
        ``(B, 3, size, size)``.
    """
    x0, y0, w, h = boxes.unbind(1)
    sign = 1.0 - 2.0 * flip.float()
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = 2 * x0 + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * y0 + h - 1
    grid = F.affine_grid(theta, [len(images), 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: Tensor, spec: CropSpec, gen: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation jitter of ``x`` ``(B, 3, S, S)`` in [0, 1], per view."""
    b = len(x)
    apply = torch.rand(b, generator=gen) < spec.jitter_p
    factors = torch.rand(b, 3, generator=gen) * 2 - 1
    strength = torch.tensor([spec.brightness, spec.contrast, spec.saturation])
    factors = torch.where(apply[:, None], 1 + factors * strength, torch.ones(b, 3)).view(b, 3, 1, 1, 1)
    luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
    x = (x * factors[:, 0]).clamp(0, 1)
    mean = (x * luma).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * factors[:, 1] + mean).clamp(0, 1)
    grey = (x * luma).sum(1, keepdim=True)
    return ((x - grey) * factors[:, 2] + grey).clamp(0, 1)


def _views(images: Tensor, n: int, size: int, scale: tuple[float, float], spec: CropSpec, gen) -> Tensor:
    """``n`` views of each image, view-major: ``(n * B, 3, size, size)`` in [0, 1]."""
    rep = images.repeat(n, 1, 1, 1)
    boxes = sample_boxes(len(rep), scale, gen)
    flip = torch.rand(len(rep), generator=gen) < 0.5
    return colour_jitter(resized_crops(rep, boxes, flip, size), spec, gen)


def multi_crop(
    images: np.ndarray | Tensor,
    spec: CropSpec,
    gen: torch.Generator,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[Tensor, Tensor]:
    """DINO's global and local views of uint8 images, normalised by ``mean`` / ``std``.

    Args:
        images: uint8 ``(B, H, W, 3)`` (FocusWorld's :func:`~focusshot.data.world.iter_batches`).
        spec: the views.
        gen: the generator every random choice is drawn from.

    Returns:
        ``(globals, locals)``: ``(2 * B, 3, G, G)`` and ``(n_local * B, 3, L, L)``, view-major (rows
        ``v * B .. (v + 1) * B - 1`` are view ``v`` of every image), so ``chunk`` splits views.
    """
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    g = _views(x, 2, spec.global_size, spec.global_scale, spec, gen)
    if spec.n_local:
        loc = _views(x, spec.n_local, spec.local_size, spec.local_scale, spec, gen)
    else:
        loc = x.new_zeros(0, 3, spec.local_size, spec.local_size)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (g - m) / s, (loc - m) / s
