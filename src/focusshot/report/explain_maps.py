"""``explain_maps.png``: what each method's prediction on a few queries rests on.

At the end of an episodic run, for every method fitted on the run's first episode
(:class:`~focusshot.evaluation.protocols.ExampleFit`), the relevance map of the class it predicts
(:func:`focusshot.evaluation.relevance.relevance_maps`: gradient-weighted attention rollout on a
ViT or CLIP ViT, Grad-CAM on Swin, CNNs and CLIP-ResNet, the kept heads' attention for SAV) on up
to six of that episode's queries (one per class first), drawn as heat over the cropped image like
the other attention figures. Unlike ``attention_methods.png`` it needs no global [CLS] row and no
adapted model: every method and every backbone gets its column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from focusshot.backbones.base import Backbone, Preprocess
from focusshot.data.images import load_rgb
from focusshot.data.sources import LabelledImages
from focusshot.data.transforms import make_transform
from focusshot.evaluation.protocols import ExampleFit
from focusshot.evaluation.relevance import Relevance, relevance_maps
from focusshot.report.attention_maps import _device, cropped_image, heat_over, mask_outline, pick_queries

__all__ = ["save_explain_figure"]

#: pixels of one line of the default font
LINE = 12
#: characters of a left-out method's note in the figure (``left_out`` in the record holds it all)
NOTE = 160


def _explain(backbone: Backbone, fit: ExampleFit, images: torch.Tensor, positions: list[int]) -> Relevance:
    """The relevance maps of ``fit``'s predicted classes on ``images`` (the queries at
    ``positions``), with the query regions the protocol handed to its ``logits``.

    Raises:
        ValueError: the method reads each query's box and none are at hand, or it cannot be
            explained (:func:`~focusshot.evaluation.relevance.relevance_maps`).
    """
    if fit.reads_boxes and fit.regions is None:
        raise ValueError("it reads each query's box, and the queries' boxes are not at hand")
    regions = None if fit.regions is None else fit.regions[positions]
    return relevance_maps(backbone, fit.fitted, fit.prefix, images, regions)


def save_explain_figure(
    backbone: Backbone,
    fits: Mapping[str, ExampleFit],
    data: LabelledImages,
    indices: Sequence[int],
    output: str | Path,
    *,
    classes: Sequence[int] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    count: int = 6,
    cell: int = 224,
) -> dict[str, Any]:
    """Save a PNG: per query, the input, then per method the relevance map of its predicted class.

    A method that cannot be explained (``relevance_maps`` raises a ``ValueError``, or a
    ``RuntimeError`` such as a fit and a backbone on different devices), or that reads each
    query's box when none are at hand, loses its column; the header names it and why.

    Args:
        backbone: the frozen backbone the methods were fitted on.
        fits: method name -> its fit on the episode (the run's ``examples["methods"]``).
        data: the pool the episode was drawn from.
        indices: the episode's query indices into ``data``, in the order the fits' ``regions``
            follow; up to ``count`` are shown, one per class first.
        output: the PNG to write.
        classes: the episode's classes (indices into ``data.class_names``) in label order: each
            cell then names the predicted class and whether it is right; ``None``: the label number.
        masks: the pool's target masks, outlined in cyan when given.
        count: at most this many queries (rows).
        cell: each image's side in the figure, in pixels.

    Returns:
        the record of the figure: ``figure`` (its file name), ``queries`` (the indices shown),
        ``methods`` (name -> ``kind`` of map, ``predicted`` class names and ``correct`` flags when
        ``classes`` is given) and ``left_out`` (name -> why it has no column).
    """
    pre = backbone.preprocess
    positions = pick_queries(data, indices, count)
    picked = [indices[p] for p in positions]
    tf = make_transform(pre)
    images = torch.stack([tf(load_rgb(data.paths[i])) for i in picked]).to(_device(backbone))
    shown: dict[str, Relevance] = {}
    left_out: dict[str, str] = {}
    for name, fit in fits.items():
        try:
            shown[name] = _explain(backbone, fit, images, positions)
        except (ValueError, RuntimeError) as err:  # a figure must not lose the run
            left_out[name] = str(err) or type(err).__name__
    methods: dict[str, dict[str, Any]] = {}
    for name, rel in shown.items():
        pred = [int(t) for t in rel.target]
        entry: dict[str, Any] = {"kind": rel.kind, "grid": list(rel.grid)}
        if classes is not None:
            entry["predicted"] = [data.class_names[classes[j]] for j in pred]
            entry["correct"] = [classes[j] == data.labels[i] for j, i in zip(pred, picked, strict=True)]
        else:
            entry["predicted"] = pred
        methods[name] = entry
    sheet = _draw(data, picked, shown, methods, left_out, masks, pre, cell)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return {"figure": output.name, "queries": list(picked), "methods": methods, "left_out": left_out}


def _draw(
    data: LabelledImages,
    picked: list[int],
    shown: dict[str, Relevance],
    methods: dict[str, dict[str, Any]],
    left_out: dict[str, str],
    masks: Sequence[np.ndarray] | None,
    pre: Preprocess,
    cell: int,
) -> Image.Image:
    """The sheet: a note per left-out method, a header row (method, map kind), one row per query."""
    notes = [f"left out {name}: {' '.join(why.split())}"[:NOTE] for name, why in left_out.items()]
    head = LINE * (len(notes) + 2) + 2
    width = (1 + len(shown)) * (cell + 4)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max([width, *(int(probe.textlength(n)) + 4 for n in notes)])
    sheet = Image.new("RGB", (width, head + len(picked) * (cell + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, note in enumerate(notes):
        draw.text((2, 1 + k * LINE), note, fill=(160, 0, 0))
    top = 1 + len(notes) * LINE
    chars = cell // 6
    titles = [("input", ""), *((n, f"map: {r.kind}") for n, r in shown.items())]
    for c, (title, kind) in enumerate(titles):
        draw.text((c * (cell + 4) + 2, top), title[:chars], fill=(0, 0, 0))
        draw.text((c * (cell + 4) + 2, top + LINE), kind[:chars], fill=(90, 90, 90))
    for r, i in enumerate(picked):
        rgb = cropped_image(data.paths[i], pre, cell)
        y = head + r * (cell + 4)
        sheet.paste(rgb, (0, y))
        outline = None if masks is None else mask_outline(masks[i], pre, cell)
        for c, (name, rel) in enumerate(shown.items(), start=1):
            v = rel.maps[r].detach().float().cpu()
            blend = heat_over(rgb, (v / v.max().clamp_min(1e-12)).reshape(rel.grid).numpy(), outline)
            _label(blend, methods[name], r, chars)
            sheet.paste(blend, (c * (cell + 4), y))
    return sheet


def _label(im: Image.Image, entry: dict[str, Any], row: int, chars: int) -> None:
    """The predicted class (and whether it is right) in the cell's top left corner."""
    text = str(entry["predicted"][row])
    colour = (0, 0, 0)
    if "correct" in entry:
        right = entry["correct"][row]
        text += " (right)" if right else " (wrong)"
        colour = (0, 110, 0) if right else (180, 0, 0)
    text = text[:chars]
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, int(draw.textlength(text)) + 4, LINE + 1), fill=(255, 255, 255))
    draw.text((2, 1), text, fill=colour)
