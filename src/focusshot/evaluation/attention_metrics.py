"""Where does [CLS] look? Attention metrics against known target masks (e.g. FocusWorld's).

Given last-layer attention probabilities ``(B, H, N, N)`` of a backbone with a global [CLS] row
(``capabilities.global_cls``) and per-image target masks at the input resolution, for each image:

* ``cls_target_mass``: the share of the [CLS] row's attention over *patch* tokens (heads averaged;
  prefix tokens dropped and the row renormalised over patches) that falls on the target, each patch
  weighted by the fraction of its pixels inside the mask;
* ``target_area``: the mean of those patch weights, i.e. the fraction of patches the target
  covers: ``cls_target_mass`` of attention spread uniformly over patches, the chance level;
* ``patches_95``: how many patches, taken in order of decreasing attention, cover 95% of the
  [CLS]-to-patch mass (small: focused; the number of patches: spread out);
* ``prefix_mass``: the share of the (un-renormalised) [CLS] row spent on prefix tokens ([CLS]
  itself and registers).

Masks must be brought to the input resolution with the same geometry as the images:
:func:`resize_crop_mask` applies the evaluation transform's resize-shorter + centre-crop with
nearest-neighbour sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from focusshot.attention.record import record
from focusshot.backbones.base import Backbone
from focusshot.data.images import load_rgb
from focusshot.data.sources import LabelledImages
from focusshot.data.transforms import CropRounding, center_crop, make_transform, resize_shorter

__all__ = [
    "NoGlobalClsError",
    "cls_attention_metrics",
    "measure_attention",
    "patch_target_weights",
    "require_global_cls",
    "resize_crop_mask",
    "transform_masks",
]


class NoGlobalClsError(ValueError):
    """The backbone's attention has no global [CLS] row (windowed attention, CNNs)."""


def require_global_cls(backbone: nn.Module) -> None:
    """Raise :class:`NoGlobalClsError` unless ``backbone.capabilities.global_cls`` is true."""
    caps = getattr(backbone, "capabilities", None)
    if caps is None or not getattr(caps, "global_cls", False) or not getattr(caps, "attention", True):
        raise NoGlobalClsError(
            f"{type(backbone).__name__} has no global [CLS] attention row (capabilities: {caps}); "
            "[CLS]-mass metrics need a ViT or CLIP ViT (not Swin's windowed attention, not a CNN)"
        )


def resize_crop_mask(
    mask: np.ndarray | Tensor, resize: int, crop: int, crop_rounding: CropRounding = "round"
) -> np.ndarray:
    """A mask ``(H, W)`` bool -> ``(crop, crop)`` bool, with the evaluation transform's geometry.

    Resize the shorter side to ``resize`` (``int`` truncation of the longer side) and centre-crop
    ``crop`` (zero-padding a smaller image), exactly as :func:`focusshot.data.transforms.resize_shorter`
    and :func:`~focusshot.data.transforms.center_crop` do for images, with nearest-neighbour sampling.
    """
    arr = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {tuple(arr.shape)}")
    img = Image.fromarray(arr.astype(bool).astype(np.uint8) * 255, mode="L")
    img = center_crop(resize_shorter(img, int(resize), "nearest"), int(crop), crop_rounding)
    return np.asarray(img) >= 128


def transform_masks(
    masks: Sequence[np.ndarray | Tensor], preprocess: Any, crop_rounding: CropRounding = "round"
) -> Tensor:
    """Masks (each ``(H_i, W_i)`` bool) -> ``(B, crop, crop)`` bool tensor, with the geometry of
    ``preprocess`` (anything with ``resize`` and ``crop``, such as a backbone's ``Preprocess``)."""
    out = [resize_crop_mask(m, preprocess.resize, preprocess.crop, crop_rounding) for m in masks]
    if not out:
        raise ValueError("no masks given")
    return torch.from_numpy(np.stack(out))


def patch_target_weights(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Per-patch target coverage: masks ``(B, H_img, W_img)`` -> ``(B, rows * cols)`` in [0, 1].

    Patch ``(r, c)`` covers pixel rows ``r*p_h .. (r+1)*p_h`` and columns ``c*p_w .. (c+1)*p_w`` with
    ``p_h = H_img // rows`` and ``p_w = W_img // cols`` (the patch embedding's stride; pixels beyond
    the last whole patch, which it drops, are ignored). Patches are in row-major order.
    """
    rows, cols = (int(v) for v in grid)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {tuple(masks.shape)}")
    b, h, w = masks.shape
    if rows < 1 or cols < 1 or h < rows or w < cols:
        raise ValueError(f"a {h}x{w} mask cannot be split into a {rows}x{cols} patch grid")
    ph, pw = h // rows, w // cols
    m = masks[:, : rows * ph, : cols * pw].to(torch.float32)
    return m.reshape(b, rows, ph, cols, pw).mean(dim=(2, 4)).reshape(b, rows * cols)


def cls_attention_metrics(
    probs: Tensor,
    masks: Tensor | np.ndarray,
    num_prefix_tokens: int,
    grid: tuple[int, int],
    coverage: float = 0.95,
    trailing_tokens: int = 0,
) -> dict[str, Tensor]:
    """[CLS]-attention metrics per image (see the module docstring).

    Args:
        probs: attention probabilities ``(B, H, N, N)`` of one layer with a global [CLS] row
            (token 0), ``N = num_prefix_tokens + rows * cols``.
        masks: target masks ``(B, H_img, W_img)`` bool at the input resolution.
        num_prefix_tokens: tokens ahead of the patches ([CLS] plus registers).
        grid: the patch grid ``(rows, cols)``.
        coverage: the mass that ``patches_95`` covers (0.95).
        trailing_tokens: tokens after the patches (VPT's prompts, appended at the end); their
            columns are left out, so the metrics describe [CLS]-to-patch attention only.

    Returns:
        a dict of float32 ``(B,)`` tensors ``cls_target_mass``, ``target_area``, ``prefix_mass``
        and the int64 ``(B,)`` tensor ``patches_95``. An image whose [CLS] row puts exactly no
        attention on any patch (all of it on prefix tokens) has no patch distribution: its
        ``cls_target_mass`` is NaN, its ``patches_95`` 0 and its ``prefix_mass`` 1.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    if probs.ndim != 4 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"probs must be (B, heads, N, N), got shape {tuple(probs.shape)}")
    rows, cols = (int(v) for v in grid)
    prefix = int(num_prefix_tokens)
    if prefix < 1:
        raise NoGlobalClsError("num_prefix_tokens is 0: there is no [CLS] token whose row could be measured")
    n = probs.shape[-1]
    if n > prefix + rows * cols and trailing_tokens == n - prefix - rows * cols:
        probs = probs[..., : prefix + rows * cols]  # tokens appended after the patches (VPT prompts)
        n = probs.shape[-1]
    if n != prefix + rows * cols:
        raise ValueError(
            f"probs have {n} tokens but {prefix} prefix tokens + a {rows}x{cols} grid make "
            f"{prefix + rows * cols}; windowed attention (Swin) has no global [CLS] row, and the grid "
            "must be that of the recorded input size"
        )
    m = torch.as_tensor(masks)
    if m.ndim != 3 or m.shape[0] != probs.shape[0]:
        raise ValueError(
            f"masks must be (B, H, W) with B = {probs.shape[0]} images, got shape {tuple(m.shape)}"
        )
    weights = patch_target_weights(m.to(probs.device), (rows, cols))  # (B, P)
    row = probs[:, :, 0, :].detach().to(torch.float32).mean(dim=1)  # (B, N)
    patch = row[:, prefix:]
    total = patch.sum(dim=1, keepdim=True)
    # a row whose every head gives the patches exactly 0 (softmax underflow: [CLS] attends only to
    # prefix tokens, seen after LoRA at lr 5e-2) has no patch distribution to measure
    none = total[:, 0] <= 0
    attn = patch / total.masked_fill(none[:, None], 1.0)  # (B, P), sums to 1 (0 where none)
    mass = torch.where(none, torch.full_like(total[:, 0], float("nan")), (attn * weights).sum(dim=1))
    sorted_attn = attn.sort(dim=1, descending=True).values
    csum = sorted_attn.cumsum(dim=1)
    count = (csum < coverage - 1e-6).sum(dim=1) + 1
    count = count.clamp(max=attn.shape[1]).to(torch.int64).masked_fill(none, 0)
    return {
        "cls_target_mass": mass,
        "patches_95": count,
        "target_area": weights.mean(dim=1),
        "prefix_mass": row[:, :prefix].sum(dim=1) / row.sum(dim=1),
    }


def measure_attention(
    backbone: Backbone, images: Tensor, masks: Tensor | np.ndarray, coverage: float = 0.95
) -> dict[str, Tensor]:
    """Run ``backbone`` on ``images`` and measure its last layer's [CLS] attention against ``masks``.

    Args:
        backbone: a focusshot backbone with ``capabilities.global_cls`` (ViT, CLIP ViT, CLIP
            ResNet's attention pool), ``num_prefix_tokens`` and ``grid_size``.
        images: the transformed input ``(B, 3, H, W)``.
        masks: target masks ``(B, H, W)`` bool at the same resolution as ``images`` (see
            :func:`transform_masks`).
        coverage: the mass ``patches_95`` covers.

    Returns:
        :func:`cls_attention_metrics` of the last attention layer: ``(B,)`` tensors.

    Raises:
        NoGlobalClsError: the backbone has no global [CLS] row (Swin, CNNs).
    """
    require_global_cls(backbone)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    m = torch.as_tensor(masks)
    if tuple(m.shape) != (images.shape[0], images.shape[2], images.shape[3]):
        raise ValueError(
            f"masks must be (B, H, W) = {(images.shape[0], images.shape[2], images.shape[3])} to match "
            f"the images, got {tuple(m.shape)}; bring them to the input resolution with transform_masks"
        )
    grid = backbone.grid_size((int(images.shape[2]), int(images.shape[3])))
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), record(backbone, "probs", layers=[-1]) as rec:
            backbone.forward_features(images)
    finally:
        backbone.train(was_training)
    probs = rec.get("probs", -1)
    return cls_attention_metrics(probs, m, int(backbone.num_prefix_tokens), grid, coverage)


def _mask_file(path: str) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".mask.npy")


def target_masks(data: LabelledImages) -> list[np.ndarray] | None:
    """One boolean mask ``(H, W)`` per image at its stored size, or ``None`` if the data have none."""
    masks: list[np.ndarray] = []
    for i, path in enumerate(data.paths):
        f = _mask_file(path)
        if f.is_file():
            masks.append(np.load(f, allow_pickle=False).astype(bool))
            continue
        box = data.boxes[i] if data.boxes is not None else None
        if box is None:
            return None
        with Image.open(path) as im:
            w, h = im.size
        m = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        m[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] = True
        masks.append(m)
    return masks


@torch.inference_mode()
def attention_report(
    backbone: Backbone, data: LabelledImages, masks: Sequence[np.ndarray], batch_size: int = 64
) -> dict[str, float]:
    """Mean last-layer [CLS] attention metrics over ``data`` (every image once).

    Returns:
        ``cls_target_mass`` (mean share of [CLS]->patch attention on the target), ``target_area``
        (its chance level: the target's share of patches), ``patches_95`` (mean number of patches
        holding 95% of the mass), ``images``, and ``images_without_patch_attention``: images whose
        [CLS] row puts no attention on any patch, which the three means leave out.
    """
    require_global_cls(backbone)
    from focusshot.distributed import current

    ctx = current()
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    tf = make_transform(backbone.preprocess)
    keys = ("cls_target_mass", "target_area", "patches_95", "measured")
    per_batch: dict[int, list[float]] = {}
    for i, s in enumerate(range(0, len(data.paths), batch_size)):
        if not ctx.owns(i):  # in a multi-process job each rank measures every W-th batch
            continue
        paths = data.paths[s : s + batch_size]
        images = torch.stack([tf(load_rgb(p)) for p in paths]).to(device)
        m = transform_masks(list(masks[s : s + batch_size]), backbone.preprocess).to(device)
        res = measure_attention(backbone, images, m)
        ok = ~res["cls_target_mass"].isnan()  # images whose [CLS] row reaches the patches
        res["measured"] = ok
        per_batch[i] = [float(res[k][ok].double().sum()) for k in keys]
    if ctx.active:
        import torch.distributed as dist

        parts: list[dict[int, list[float]] | None] = [None] * ctx.world
        dist.all_gather_object(parts, per_batch)
        per_batch = {i: v for part in parts for i, v in (part or {}).items()}
    sums = dict.fromkeys(keys, 0.0)
    for i in sorted(per_batch):  # batch order, so every job size adds the same floats in the same order
        for k, v in zip(keys, per_batch[i], strict=True):
            sums[k] += v
    n, measured = len(data.paths), int(sums.pop("measured"))
    out = {k: v / measured if measured else float("nan") for k, v in sums.items()}
    return {**out, "images": n, "images_without_patch_attention": n - measured}
