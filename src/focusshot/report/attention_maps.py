"""Where the model looked: [CLS] attention over a labelled set with target masks, and a figure.

:func:`target_masks` finds each image's target mask: FocusWorld's per-pixel ``<image>.mask.npy``
when present, else the image's box as a rectangle, else none. :func:`attention_report` measures
the last layer's [CLS] attention against them (``cls_target_mass``, ``patches_95``,
``target_area``; see :mod:`focusshot.evaluation.attention_metrics`) and
:func:`save_attention_figure` draws images, heat maps and mask outlines into one PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from focusshot.attention.record import record
from focusshot.backbones.base import Backbone, Preprocess
from focusshot.data.images import load_rgb
from focusshot.data.sources import LabelledImages
from focusshot.data.transforms import center_crop, make_transform, resize_shorter
from focusshot.evaluation.attention_metrics import (  # noqa: F401 (re-exported)
    attention_report,
    require_global_cls,
    target_masks,
    transform_masks,
)


def heat_rgb(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``(H, W)`` -> RGB uint8 ``(H, W, 3)`` heat colours (black -> red -> yellow ->
    white), for drawing attention over an image (here and in :mod:`focusshot.explain`)."""
    v = np.clip(values, 0.0, 1.0)
    r = np.clip(3 * v, 0, 1)
    g = np.clip(3 * v - 1, 0, 1)
    b = np.clip(3 * v - 2, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def pick_queries(data: LabelledImages, indices: Sequence[int], count: int) -> list[int]:
    """Positions in ``indices`` of up to ``count`` images to show: the first of each class (in the
    order they come), then the rest in order."""
    positions: list[int] = []
    seen: set[int] = set()
    for p, i in enumerate(indices):  # one per class first
        if data.labels[i] not in seen:
            seen.add(data.labels[i])
            positions.append(p)
    positions += [p for p in range(len(indices)) if p not in positions]
    return positions[:count]


def cropped_image(path: str, pre: Preprocess, side: int) -> Image.Image:
    """The image at ``path`` as the backbone sees it (resized, centre-cropped), drawn ``side`` pixels
    square (each pixel a block)."""
    rgb = center_crop(resize_shorter(load_rgb(path), pre.resize, pre.interpolation), pre.crop)
    return rgb.resize((side, side), Image.Resampling.NEAREST)


def mask_outline(mask: np.ndarray, pre: Preprocess, side: int) -> Image.Image:
    """The outline of a target ``mask`` (original pixels) in the crop, ``side`` pixels square, as a
    bitmap for :meth:`PIL.ImageDraw.ImageDraw.bitmap`."""
    m = transform_masks([mask], pre)[0].numpy()
    edge = m ^ np.pad(m, 1)[1:-1, :-2] | m ^ np.pad(m, 1)[:-2, 1:-1]
    return Image.fromarray((edge * 255).astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)


def heat_over(rgb: Image.Image, values: np.ndarray, outline: Image.Image | None = None) -> Image.Image:
    """``values (rows, cols)`` in [0, 1] as heat stretched over ``rgb`` (blended 0.55), with the
    target's ``outline`` (:func:`mask_outline`) in cyan when given."""
    heat = Image.fromarray(heat_rgb(values)).resize(rgb.size, Image.Resampling.BILINEAR)
    blend = Image.blend(rgb, heat, 0.55)
    if outline is not None:
        ImageDraw.Draw(blend).bitmap((0, 0), outline, fill=(0, 255, 255))
    return blend


@torch.inference_mode()
def save_attention_figure(
    backbone: Backbone,
    data: LabelledImages,
    masks: Sequence[np.ndarray] | None,
    output: str | Path,
    count: int = 8,
    scale: int = 2,
) -> Path:
    """Save a PNG: per image, the input, its [CLS] attention heat map, and the map over the input.

    Images are the first of each class (up to ``count``); the target mask's outline is drawn in
    cyan when masks are given.
    """
    require_global_cls(backbone)
    pre = backbone.preprocess
    picked: list[int] = []
    for idx in data.indices_by_class():
        if idx and len(picked) < count:
            picked.append(idx[0])
    tf = make_transform(pre)
    images = torch.stack([tf(load_rgb(data.paths[i])) for i in picked])
    with record(backbone, "probs", layers=[-1]) as rec:
        backbone.forward_features(images.to(_device(backbone)))
    probs = rec.get("probs").cpu()  # (B, H, N, N)
    rows, cols = backbone.grid_size((images.shape[2], images.shape[3]))
    cls = probs[:, :, 0, backbone.num_prefix_tokens :].mean(1).reshape(len(picked), rows, cols)
    lo = cls.amin(dim=(1, 2), keepdim=True)
    cls = (cls - lo) / (cls.amax(dim=(1, 2), keepdim=True) - lo).clamp_min(1e-12)
    side = pre.crop * scale
    sheet = Image.new("RGB", (3 * side + 8, len(picked) * (side + 4)), (255, 255, 255))
    for r, i in enumerate(picked):
        rgb = cropped_image(data.paths[i], pre, side)
        heat = Image.fromarray(heat_rgb(cls[r].numpy())).resize((side, side), Image.Resampling.BILINEAR)
        blend = heat_over(rgb, cls[r].numpy(), None if masks is None else mask_outline(masks[i], pre, side))
        y = r * (side + 4)
        for c, im in enumerate((rgb, heat, blend)):
            sheet.paste(im, (c * (side + 4), y))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return output


@torch.inference_mode()
def save_method_attention_figure(
    backbone: Backbone,
    models: dict[str, Backbone],
    data: LabelledImages,
    indices: Sequence[int],
    masks: Sequence[np.ndarray] | None,
    output: str | Path,
    count: int = 6,
    scale: int = 2,
) -> Path:
    """Save a PNG: per image, the input, then the last-layer [CLS] attention of the frozen backbone
    and of every adapted model in ``models`` (one column each, named in the header row).

    ``models`` are full backbones (a fitted method's ``attention_model()``); ``indices`` are the
    images to show (e.g. one episode's queries, one per class first). Tokens a model appends after
    the patches (VPT's prompts) are left out of its map.
    """
    require_global_cls(backbone)
    pre = backbone.preprocess
    picked = [indices[p] for p in pick_queries(data, indices, count)]
    tf = make_transform(pre)
    images = torch.stack([tf(load_rgb(data.paths[i])) for i in picked])
    rows, cols = backbone.grid_size((images.shape[2], images.shape[3]))
    p0 = backbone.num_prefix_tokens
    maps: list[tuple[str, torch.Tensor]] = []
    for name, model in [("frozen", backbone), *models.items()]:
        was = model.training
        model.eval()
        with record(model, "probs", layers=[-1]) as rec:
            model.forward_features(images.to(_device(model)))
        model.train(was)
        cls = rec.get("probs").cpu()[:, :, 0, p0 : p0 + rows * cols].mean(1).reshape(len(picked), rows, cols)
        lo = cls.amin(dim=(1, 2), keepdim=True)
        maps.append((name, (cls - lo) / (cls.amax(dim=(1, 2), keepdim=True) - lo).clamp_min(1e-12)))
    side, head = pre.crop * scale, 14
    ncol = 1 + len(maps)
    sheet = Image.new("RGB", (ncol * (side + 4), head + len(picked) * (side + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(["input", *[n for n, _ in maps]]):
        draw.text((c * (side + 4) + 2, 1), title[: side // 6], fill=(0, 0, 0))
    for r, i in enumerate(picked):
        rgb = cropped_image(data.paths[i], pre, side)
        y = head + r * (side + 4)
        sheet.paste(rgb, (0, y))
        outline = None if masks is None else mask_outline(masks[i], pre, side)
        for c, (_, cls) in enumerate(maps, start=1):
            sheet.paste(heat_over(rgb, cls[r].numpy(), outline), (c * (side + 4), y))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return output


def _device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` runs (its first parameter's device; the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
