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
from focusshot.backbones.base import Backbone
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
        rgb = center_crop(resize_shorter(load_rgb(data.paths[i]), pre.resize, pre.interpolation), pre.crop)
        rgb = rgb.resize((side, side), Image.Resampling.NEAREST)
        heat = Image.fromarray(heat_rgb(cls[r].numpy())).resize((side, side), Image.Resampling.BILINEAR)
        blend = Image.blend(rgb, heat, 0.55)
        if masks is not None:
            m = transform_masks([masks[i]], pre)[0].numpy()
            edge = m ^ np.pad(m, 1)[1:-1, :-2] | m ^ np.pad(m, 1)[:-2, 1:-1]
            outline = Image.fromarray((edge * 255).astype(np.uint8)).resize(
                (side, side), Image.Resampling.NEAREST
            )
            ImageDraw.Draw(blend).bitmap((0, 0), outline, fill=(0, 255, 255))
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
    labels = [data.labels[i] for i in indices]
    picked: list[int] = []
    for i, lab in zip(indices, labels, strict=True):  # one per class first, then the rest
        if lab not in {data.labels[j] for j in picked}:
            picked.append(i)
    picked += [i for i in indices if i not in picked]
    picked = picked[:count]
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
        rgb = center_crop(resize_shorter(load_rgb(data.paths[i]), pre.resize, pre.interpolation), pre.crop)
        rgb = rgb.resize((side, side), Image.Resampling.NEAREST)
        y = head + r * (side + 4)
        sheet.paste(rgb, (0, y))
        outline = None
        if masks is not None:
            m = transform_masks([masks[i]], pre)[0].numpy()
            edge = m ^ np.pad(m, 1)[1:-1, :-2] | m ^ np.pad(m, 1)[:-2, 1:-1]
            outline = Image.fromarray((edge * 255).astype(np.uint8)).resize(
                (side, side), Image.Resampling.NEAREST
            )
        for c, (_, cls) in enumerate(maps, start=1):
            heat = Image.fromarray(heat_rgb(cls[r].numpy())).resize((side, side), Image.Resampling.BILINEAR)
            blend = Image.blend(rgb, heat, 0.55)
            if outline is not None:
                ImageDraw.Draw(blend).bitmap((0, 0), outline, fill=(0, 255, 255))
            sheet.paste(blend, (c * (side + 4), y))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return output


def _device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` runs (its first parameter's device; the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
