"""``focusshot explain``: where a classifier's prediction comes from, for every method.

Per image, one PNG: the preprocessed (resized, centre-cropped) image, then panels over it:

1. **relevance**: the class-specific map of the predicted class
   (:mod:`focusshot.evaluation.relevance`): gradient-weighted attention rollout (Chefer et al.,
   ICCV 2021) through the model the method runs and its own head on a ViT or CLIP ViT; Grad-CAM on
   Swin, CNNs and CLIP-ResNet; the kept heads' attention for SAV. The cells holding ``coverage`` of
   its mass are drawn, the rest dimmed.

A classifier whose method tunes the backbone under a linear head (FT, LoRA, SSF, VPT and their FORT
variants) on a backbone with a global [CLS] row gets three more panels:

2. **prompts**: FORT's position prompts (:mod:`focusshot.attention.grad_rollout`) for the predicted
   class: Grad-Rollout over all attention layers of the *frozen* backbone, scored by the tuned linear
   head before its temperature, with FORT's ``top``/``variant``/``lamb``/``sign`` for a FORT classifier
   (defaults otherwise). This approximates the training-time prompts (solver-initialised head, true label).
3. **before**: the fewest patches covering ``coverage`` of the frozen backbone's last-layer [CLS]->patch
   attention (heads averaged, prefix tokens dropped, renormalised over patches);
4. **after**: the same for the adapted model, recorded while the fitted method scores the image's prefix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from focusshot.attention import grad_rollout as gr
from focusshot.attention.record import record
from focusshot.backbones.prefix import Prefix
from focusshot.classifier import Classifier
from focusshot.data.images import list_images, load_rgb
from focusshot.data.transforms import center_crop, resize_shorter
from focusshot.evaluation.relevance import Relevance, relevance_maps
from focusshot.heads.trainable import LinearHead
from focusshot.report.attention_maps import heat_rgb
from focusshot.versions import versions

__all__ = ["coverage_patches", "covering", "explain"]

FORT_KEYS = ("top", "variant", "sign", "lamb")

#: what each relevance rule is, for the record and the figure
RULES = {
    "gradient_rollout": "gradient-weighted attention rollout (Chefer, Gur and Wolf, ICCV 2021)",
    "grad_cam": "Grad-CAM on the last stage (Selvaraju et al., ICCV 2017)",
    "sav_heads": "[CLS] attention of SAV's kept heads that voted for the class",
}

Box = tuple[float, float, float, float]


def covering(values: Tensor, coverage: float = 0.95) -> list[list[int]]:
    """Per row of ``values (B, P)`` (non-negative), the fewest entries holding ``coverage`` of the
    row's sum, largest first (ties in index order); a row that sums to zero covers nothing.

    Args:
        values: ``(B, P)`` non-negative scores (attention, relevance).
        coverage: the share of each row's sum to cover, in ``(0, 1]``.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    total = values.sum(dim=1, keepdim=True)
    share = values / total.clamp_min(1e-12)
    order = share.sort(dim=1, descending=True, stable=True)
    count = ((order.values.cumsum(dim=1) < coverage - 1e-6).sum(dim=1) + 1).clamp(max=values.shape[1])
    count = torch.where(total.squeeze(1) > 0, count, torch.zeros_like(count))
    return [order.indices[i, : int(n)].tolist() for i, n in enumerate(count)]


def coverage_patches(
    probs: Tensor, num_prefix_tokens: int, num_patches: int, coverage: float = 0.95
) -> tuple[Tensor, list[list[int]]]:
    """``probs (B, H, N, N)`` (one layer; patches at ``s .. s + P``, ``s = num_prefix_tokens``, later
    columns such as VPT prompts dropped) -> ``(attn (B, P), sets)``: the [CLS]->patch attention,
    heads averaged and renormalised over patches, and per image the fewest patches covering
    ``coverage`` of it, most attended first (as many as ``cls_attention_metrics``' ``patches_95``).

    Args:
        probs: one layer's attention probabilities.
        num_prefix_tokens: tokens ahead of the patches ([CLS] first).
        num_patches: ``P``.
        coverage: the share of the attention the sets cover, in ``(0, 1]``.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    s, p = int(num_prefix_tokens), int(num_patches)
    if probs.ndim != 4 or probs.shape[-1] < s + p:
        raise ValueError(f"attention {tuple(probs.shape)} does not hold {s} prefix tokens + {p} patches")
    row = probs[:, :, 0, s : s + p].detach().float().mean(dim=1)  # (B, P)
    attn = row / row.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return attn, covering(attn, coverage)


def _prompts(clf: Classifier, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """FORT's position prompts ``(B, P)`` of images ``x (B, 3, crop, crop)`` for ``labels (B,)`` on
    the frozen backbone with the tuned head, and the settings used. Each image is rolled out alone
    (the gradient of its own score, whatever else is explained with it)."""
    b, head = clf.backbone, clf.fitted.head  # type: ignore[attr-defined]  # FORT's fit holds its head
    opts = clf.fitted.config().get("options") or {}
    fort = all(k in opts for k in FORT_KEYS)
    settings = gr.RolloutSettings(**{k: opts[k] for k in ("variant", "lamb", "sign")} if fort else {})
    grid = b.grid_size(b.preprocess.crop)
    top = gr.prompt_count(grid, int(opts["top"]) if fort else 0)
    layout = (gr.tail_layers(b, None), int(b.num_prefix_tokens), grid[0] * grid[1], settings)

    def score(f: Tensor) -> Tensor:  # (b, D) -> (b, C), before the temperature (as FORT's code)
        return head(f) * head.temperature

    imp = [
        gr.grad_rollout_importance(b, b.forward_features, score, x[i : i + 1], labels[i : i + 1], *layout)[0]
        for i in range(len(x))
    ]
    used = {"top": top, "variant": settings.variant, "lamb": settings.lamb, "sign": settings.sign}
    return gr.position_prompts(torch.cat(imp), top), {**used, "from_fort_options": fort}


Panel = tuple[str, Tensor, Tensor, tuple[int, int]]


def _sheet(clf: Classifier, path: str, title: str, panels: list[Panel]) -> Image.Image:
    """The cropped image, then ``(name, values (P,), keep (P,) bool, grid)`` panels beside it over the
    same image: ``values`` as heat on the ``keep`` cells (scaled by their maximum there), the others
    dimmed."""
    pre = clf.backbone.preprocess
    crop = int(pre.crop)
    side, top = max(2 * crop, 224), 30

    def pixels(a: Tensor, grid: tuple[int, int]) -> np.ndarray:  # (P,) -> (crop, crop), cells as cut
        rows, cols = grid
        up = a.float().numpy().reshape(rows, cols).repeat(crop // rows, axis=0).repeat(crop // cols, axis=1)
        return np.pad(up, ((0, crop - up.shape[0]), (0, crop - up.shape[1])))

    rgb = center_crop(resize_shorter(load_rgb(path), pre.resize, pre.interpolation), crop)
    img = np.asarray(rgb, dtype=np.float32)  # (crop, crop, 3)
    sheet = Image.new("RGB", ((1 + len(panels)) * (side + 4), top + side), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), title, fill=(0, 0, 0))
    draw.text((2, 15), "image", fill=(0, 0, 0))
    sheet.paste(rgb.resize((side, side), Image.Resampling.NEAREST), (0, top))
    for c, (name, values, keep, grid) in enumerate(panels, start=1):
        v = torch.where(keep, values.float(), torch.zeros(()))
        heat = heat_rgb(pixels(v / v.max().clamp_min(1e-12), grid)).astype(np.float32)
        out = np.where(pixels(keep, grid)[..., None] > 0, 0.45 * img + 0.55 * heat, 0.25 * img).astype(
            np.uint8
        )
        draw.text((c * (side + 4) + 2, 15), name, fill=(0, 0, 0))
        sheet.paste(
            Image.fromarray(out).resize((side, side), Image.Resampling.NEAREST), (c * (side + 4), top)
        )
    return sheet


def _adapts(clf: Classifier) -> bool:
    """A method that tunes the backbone under a linear head, on a backbone with a global [CLS] row:
    the prompts / before / after panels apply."""
    caps = clf.backbone.capabilities
    return (
        clf.fitted.attention_model() is not None
        and isinstance(getattr(clf.fitted, "head", None), LinearHead)
        and bool(caps.attention and caps.global_cls)
    )


def _adapted_panels(
    clf: Classifier, x: Tensor, query: Tensor, pred: Tensor, coverage: float
) -> tuple[list[list[Panel]], list[dict[str, Any]], dict[str, Any]]:
    """Per image the prompts, before and after panels and their JSON fields, and the prompt settings."""
    b, fitted = clf.backbone, clf.fitted
    model = fitted.attention_model()
    assert model is not None  # _adapts chose these panels because the method adapts the backbone
    grid = b.grid_size(b.preprocess.crop)
    s, p = int(b.num_prefix_tokens), grid[0] * grid[1]
    with torch.inference_mode():
        with record(b, "probs", layers=[-1]) as rec:
            b.forward_features(x)
        frozen = rec.get("probs", -1)  # (B, H, N, N)
        with record(model, "probs", layers=[-1]) as rec:
            fitted.logits(query)
        adapted = rec.get("probs", -1)  # (B, H, N', N'), N' >= N (VPT appends prompts)
    attn = {k: coverage_patches(a, s, p, coverage) for k, a in (("before", frozen), ("after", adapted))}
    prompts, used = _prompts(clf, x, pred)
    every = torch.arange(p)
    panels, fields = [], []
    for i in range(len(x)):
        q = prompts[i]
        kept = (q > 0).nonzero().flatten()
        chosen = kept[q[kept].argsort(descending=True, stable=True)].tolist()
        sets = {k: a[1][i] for k, a in attn.items()}
        row: list[Panel] = [(f"prompts: top {used['top']}", q, q > 0, grid)]
        for k, v in sets.items():
            row.append((f"{k}: {len(v)} patches", attn[k][0][i], torch.isin(every, torch.tensor(v)), grid))
        panels.append(row)
        fields.append(
            {
                "patches_before": len(sets["before"]),
                "patches_after": len(sets["after"]),
                "before_patches": sets["before"],
                "after_patches": sets["after"],
                "prompt_patches": chosen,
                "prompt_weights": [round(float(q[j]), 6) for j in chosen],
            }
        )
    return panels, fields, {**used, "head": "tuned, on the frozen backbone", "label": "predicted"}


def explain(
    classifier: str | os.PathLike[str] | Classifier,
    images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output: str | os.PathLike[str],
    coverage: float = 0.95,
    batch_size: int = 32,
    progress: bool = False,
    boxes: Sequence[Box | None] | Mapping[str, Box | None] | None = None,
) -> dict[str, Any]:
    """Write one PNG per image (see the module docstring) and ``explain.json`` (returned) to the
    folder ``output``.

    Args:
        classifier: a classifier file written by ``focusshot fit``, or a loaded
            :class:`~focusshot.classifier.Classifier`, of any method.
        images: image files or folders (an undecodable file raises
            :class:`~focusshot.data.images.ImageError` naming it, before anything is written).
        output: the folder for the figures and ``explain.json`` (created).
        coverage: the share of each map's mass the drawn cells cover, in ``(0, 1]``.
        batch_size: images per forward pass while embedding.
        progress: show progress bars.
        boxes: one box per image (original pixels ``x0, y0, x1, y1``), or a mapping path -> box,
            for a method that reads boxes (FALIP, the drawn prompts), as
            :meth:`~focusshot.classifier.Classifier.regions` takes them.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    name = "the classifier" if isinstance(classifier, Classifier) else str(classifier)
    clf = classifier if isinstance(classifier, Classifier) else Classifier.load(classifier)
    b = clf.backbone
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no image files in {images}")
    pixels, query = clf.embed(paths, batch_size, progress, Prefix.images()), clf.embed(paths, batch_size)
    if pixels.bad or query.bad:
        raise (pixels.bad or query.bad)[0]
    regions = clf.regions(query.paths, boxes)
    x = pixels.features.clone()  # (B, 3, crop, crop), a normal tensor (autograd needs one)
    probs = clf.probabilities(query.features, regions)  # (B, C), what `predict` gives
    pred = probs.argmax(dim=-1)
    try:
        relevance = relevance_maps(b, clf.fitted, clf.prefix, x, regions, target=pred)
    except ValueError as err:
        raise ValueError(f"{name}: method {clf.method!r} cannot be explained: {err}") from None
    extra = _adapted_panels(clf, x, query.features, pred, coverage) if _adapts(clf) else None
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        _write_image(clf, i, path, relevance, pred, probs, coverage, extra, out)
        for i, path in enumerate(query.paths)
    ]
    config = clf.fitted.config()
    info = {
        "classifier": name,
        "method": clf.method,
        "seed": config.get("seed"),
        "config": config,
        "fitted_on": clf.info.get("fitted_on"),
        "coverage": coverage,
        "relevance": {"kind": relevance.kind, "rule": RULES[relevance.kind], "grid": list(relevance.grid)},
        "grid": list(b.grid_size(b.preprocess.crop)),
        "versions": versions(),
        "images": rows,
    }
    if extra is not None:
        info["prompts"] = extra[2]
    (out / "explain.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _write_image(
    clf: Classifier,
    i: int,
    path: str,
    relevance: Relevance,
    pred: Tensor,
    probs: Tensor,
    coverage: float,
    extra: tuple[list[list[Panel]], list[dict[str, Any]], dict[str, Any]] | None,
    out: Path,
) -> dict[str, Any]:
    """Draw image ``i``'s PNG into ``out`` and return its ``explain.json`` row."""
    values = relevance.maps[i]
    cells = covering(values.unsqueeze(0), coverage)[0]
    keep = torch.isin(torch.arange(len(values)), torch.tensor(cells, dtype=torch.long))
    label = clf.class_names[int(pred[i])]
    panels: list[Panel] = [
        (f"relevance ({relevance.kind}): {len(cells)} cells", values, keep, relevance.grid)
    ]
    if extra is not None:
        panels += extra[0][i]
    png = f"{i:03d}_{Path(path).stem}.png"
    _sheet(clf, path, f"{Path(path).name}: predicted {label}", panels).save(out / png)
    total = float(values.sum())
    row = {
        "path": path,
        "png": png,
        "predicted": label,
        "confidence": float(probs[i, pred[i]]),
        "relevance_cells": cells,
        "relevance": [round(float(v) / total, 6) if total > 0 else 0.0 for v in values],
    }
    return {**row, **(extra[1][i] if extra is not None else {})}
