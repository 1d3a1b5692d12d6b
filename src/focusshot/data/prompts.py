"""Image-space visual prompts: mark a region by editing the pixels (the baselines FALIP replaces).

* :func:`red_ellipse` draws a red ellipse outline inscribed in the box: the "red circle" prompt
  (Shtedritski et al., "What does CLIP know about a red circle?", ICCV 2023), which the FALIP paper
  (Zhuang et al., ECCV 2024, Sec. 2 and Tab. 1) compares against.
* :func:`blur_outside` blurs everything outside the box with a Gaussian (the "blur" prompt of
  ReCLIP, Subramanian et al., ACL 2022, and Fine-Grained Visual Prompting, Yang et al., NeurIPS
  2023; also compared in FALIP).

Both work on batches of images already in the backbone's geometry, as float tensors
``(B, 3, H, W)`` with values in ``[0, 1]`` (de-normalised), with boxes ``(B, 4)`` given as
``(x0, y0, x1, y1)`` in ``[0, 1]`` coordinates of that image; a NaN box leaves its image unchanged.
Drawing after the centre crop (rather than on the original image, as the papers do) lets a
method read the cached preprocessed crop; line width and blur are therefore in crop pixels.
Nothing here knows of models (DESIGN: ``data`` does not import ``backbones``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blur_outside", "box_pixel_mask", "gaussian_blur", "red_ellipse"]

#: the prompt colour, RGB in [0, 1]
RED: tuple[float, float, float] = (1.0, 0.0, 0.0)


def _check(images: Tensor, boxes: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if boxes.shape != (images.shape[0], 4):
        raise ValueError(f"boxes must be (B, 4) = ({images.shape[0]}, 4), got {tuple(boxes.shape)}")


def _grid(h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``(H, 1)`` and ``(1, W)`` in pixels."""
    ys = torch.arange(h, dtype=torch.float32, device=like.device)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=like.device)[None, :] + 0.5
    return ys, xs


def box_pixel_mask(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, H, W)`` bool: pixels whose centre lies inside the box (all False for a NaN box)."""
    h, w = size
    ys, xs = _grid(h, w, boxes)
    b = boxes.to(torch.float32)[:, :, None, None]
    inside = (xs >= b[:, 0] * w) & (xs < b[:, 2] * w) & (ys >= b[:, 1] * h) & (ys < b[:, 3] * h)
    return inside & ~torch.isnan(boxes).any(dim=1)[:, None, None]


def red_ellipse(images: Tensor, boxes: Tensor, width: float = 2.0) -> Tensor:
    """Draw a red ellipse outline of ``width`` pixels inscribed in each box: ``(B, 3, H, W)`` in [0, 1].

    A pixel is on the outline when its centre lies inside the ellipse of the box and outside the
    ellipse shrunk by ``width`` on each semi-axis (PIL's ``ellipse(outline=..., width=...)``).
    """
    _check(images, boxes)
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    h, w = images.shape[-2:]
    ys, xs = _grid(h, w, images)
    b = boxes.to(torch.float32)[:, :, None, None]
    cx, cy = (b[:, 0] + b[:, 2]) * w / 2, (b[:, 1] + b[:, 3]) * h / 2
    rx, ry = (b[:, 2] - b[:, 0]) * w / 2, (b[:, 3] - b[:, 1]) * h / 2
    outer = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    irx, iry = (rx - width).clamp_min(1e-6), (ry - width).clamp_min(1e-6)
    inner = ((xs - cx) / irx) ** 2 + ((ys - cy) / iry) ** 2 < 1.0
    thin = ((rx - width) <= 0) | ((ry - width) <= 0)  # no hole: the whole ellipse is outline
    line = outer & (~inner | thin)
    line = line & ~torch.isnan(boxes).any(dim=1)[:, None, None]  # (B, H, W)
    red = torch.tensor(RED, dtype=images.dtype, device=images.device)[None, :, None, None]
    return torch.where(line[:, None], red, images)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels (edges replicated).

    The kernel spans ``+-ceil(3 sigma)`` pixels (at most the image's size); ``sigma <= 0`` returns
    the images unchanged.
    """
    if sigma <= 0:
        return images
    h, w = images.shape[-2:]
    radius = min(int(math.ceil(3.0 * sigma)), max(h, w))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur_outside(images: Tensor, boxes: Tensor, sigma: float) -> Tensor:
    """Blur everything outside each box (``sigma`` pixels), keep the box sharp: ``(B, 3, H, W)``.

    An image with a NaN box is returned unchanged (there is no region to keep sharp).
    """
    _check(images, boxes)
    keep = box_pixel_mask(boxes, (images.shape[-2], images.shape[-1]))  # (B, H, W)
    none = torch.isnan(boxes).any(dim=1)[:, None, None]
    blurred = gaussian_blur(images, sigma)
    return torch.where((keep | none)[:, None], images, blurred)
