"""``focusshot explain``: where a trained classifier looks in new images, before and after adapting.

Per image, one PNG of three panels over the preprocessed (resized, centre-cropped) image:

1. **prompts**: FORT's position prompts (:mod:`focusshot.attention.grad_rollout`) for the predicted
   class: Grad-Rollout over all attention layers of the *frozen* backbone, scored by the tuned linear
   head before its temperature, with FORT's ``top``/``variant``/``lamb``/``sign`` for a FORT classifier
   (defaults otherwise). This approximates the training-time prompts (solver-initialised head, true label).
2. **before**: the fewest patches covering ``coverage`` of the frozen backbone's last-layer [CLS]->patch
   attention (heads averaged, prefix tokens dropped, renormalised over patches);
3. **after**: the same for the adapted model, recorded while the fitted method scores the image's prefix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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
from focusshot.evaluation.attention_metrics import require_global_cls
from focusshot.heads.trainable import LinearHead
from focusshot.report.attention_maps import heat_rgb
from focusshot.versions import versions

__all__ = ["coverage_patches", "explain"]

FORT_KEYS = ("top", "variant", "sign", "lamb")


def coverage_patches(
    probs: Tensor, num_prefix_tokens: int, num_patches: int, coverage: float = 0.95
) -> tuple[Tensor, list[list[int]]]:
    """``probs (B, H, N, N)`` (one layer; patches at ``s .. s + P``, ``s = num_prefix_tokens``, later
    columns such as VPT prompts dropped) -> ``(attn (B, P), sets)``: the [CLS]->patch attention,
    heads averaged and renormalised over patches, and per image the fewest patches covering
    ``coverage`` of it, most attended first (as many as ``cls_attention_metrics``' ``patches_95``)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    s, p = int(num_prefix_tokens), int(num_patches)
    if probs.ndim != 4 or probs.shape[-1] < s + p:
        raise ValueError(f"attention {tuple(probs.shape)} does not hold {s} prefix tokens + {p} patches")
    row = probs[:, :, 0, s : s + p].detach().float().mean(dim=1)  # (B, P)
    attn = row / row.sum(dim=1, keepdim=True).clamp_min(1e-12)
    order = attn.sort(dim=1, descending=True, stable=True)
    count = ((order.values.cumsum(dim=1) < coverage - 1e-6).sum(dim=1) + 1).clamp(max=p)
    return attn, [order.indices[i, : int(n)].tolist() for i, n in enumerate(count)]


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


def _sheet(clf: Classifier, path: str, title: str, panels: list[tuple[str, Tensor, Tensor]]) -> Image.Image:
    """``(name, values (P,), keep (P,) bool)`` panels side by side over the cropped image: ``values``
    as heat on the ``keep`` patches (scaled by their maximum there), the other patches dimmed."""
    b, pre = clf.backbone, clf.backbone.preprocess
    crop = int(pre.crop)
    (rows, cols), side, top = b.grid_size(crop), max(2 * crop, 224), 30

    def pixels(a: Tensor) -> np.ndarray:  # (P,) -> (crop, crop), patches as the patch stride cuts them
        up = a.float().numpy().reshape(rows, cols).repeat(crop // rows, axis=0).repeat(crop // cols, axis=1)
        return np.pad(up, ((0, crop - up.shape[0]), (0, crop - up.shape[1])))

    rgb = center_crop(resize_shorter(load_rgb(path), pre.resize, pre.interpolation), crop)
    img = np.asarray(rgb, dtype=np.float32)  # (crop, crop, 3)
    sheet = Image.new("RGB", (len(panels) * (side + 4), top + side), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), title, fill=(0, 0, 0))
    for c, (name, values, keep) in enumerate(panels):
        v = torch.where(keep, values.float(), torch.zeros(()))
        heat = heat_rgb(pixels(v / v.max().clamp_min(1e-12))).astype(np.float32)
        out = np.where(pixels(keep)[..., None] > 0, 0.45 * img + 0.55 * heat, 0.25 * img).astype(np.uint8)
        draw.text((c * (side + 4) + 2, 15), name, fill=(0, 0, 0))
        sheet.paste(
            Image.fromarray(out).resize((side, side), Image.Resampling.NEAREST), (c * (side + 4), top)
        )
    return sheet


def explain(
    classifier: str | os.PathLike[str] | Classifier,
    images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output: str | os.PathLike[str],
    coverage: float = 0.95,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Write one PNG per image (prompts, before, after: see the module docstring) and ``explain.json``
    (returned) to the folder ``output``. ``classifier`` is a file (or a loaded
    :class:`~focusshot.classifier.Classifier`) of a method that adapts the backbone; ``images`` are files or
    folders (an undecodable file raises :class:`ImageError`)."""
    name = "the classifier" if isinstance(classifier, Classifier) else str(classifier)
    clf = classifier if isinstance(classifier, Classifier) else Classifier.load(classifier)
    fitted, b = clf.fitted, clf.backbone
    model = fitted.attention_model()
    if model is None or not isinstance(getattr(fitted, "head", None), LinearHead):
        raise ValueError(
            f"{name}: method {clf.method!r} has no adapted backbone with a linear head (it trains "
            "nothing); explain needs a classifier of a method that trains, such as lora or lora+fort"
        )
    try:
        require_global_cls(b)
    except ValueError as err:
        raise ValueError(f"{name}: explain needs a global [CLS] attention row; {err}") from None
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no image files in {images}")
    pixels, query = clf.embed(paths, batch_size, progress, Prefix.images()), clf.embed(paths, batch_size)
    if pixels.bad or query.bad:
        raise (pixels.bad or query.bad)[0]
    x = pixels.features.clone()  # (B, 3, crop, crop), a normal tensor (autograd needs one)
    grid = b.grid_size(b.preprocess.crop)
    s, p = int(b.num_prefix_tokens), grid[0] * grid[1]
    with torch.inference_mode():
        with record(b, "probs", layers=[-1]) as rec:
            b.forward_features(x)
        frozen = rec.get("probs", -1)  # (B, H, N, N)
        with record(model, "probs", layers=[-1]) as rec:
            logits = fitted.logits(query.features)  # (B, C)
        adapted = rec.get("probs", -1)  # (B, H, N', N'), N' >= N (VPT appends prompts)
    pred = logits.argmax(dim=-1)
    attn = {k: coverage_patches(a, s, p, coverage) for k, a in (("before", frozen), ("after", adapted))}
    prompts, used = _prompts(clf, x, pred)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows, every = [], torch.arange(p)
    for i, path in enumerate(query.paths):
        label, q = clf.class_names[int(pred[i])], prompts[i]
        kept = (q > 0).nonzero().flatten()
        chosen = kept[q[kept].argsort(descending=True, stable=True)].tolist()
        sets = {k: a[1][i] for k, a in attn.items()}
        panels = [(f"prompts: top {used['top']}", q, q > 0)]
        for k, v in sets.items():
            panels.append((f"{k}: {len(v)} patches", attn[k][0][i], torch.isin(every, torch.tensor(v))))
        png = f"{i:03d}_{Path(path).stem}.png"
        _sheet(clf, path, f"{Path(path).name}: predicted {label}", panels).save(out / png)
        rows.append(
            {
                "path": path,
                "png": png,
                "predicted": label,
                "confidence": float(logits[i].softmax(-1)[pred[i]]),
                "patches_before": len(sets["before"]),
                "patches_after": len(sets["after"]),
                "before_patches": sets["before"],
                "after_patches": sets["after"],
                "prompt_patches": chosen,
                "prompt_weights": [round(float(q[j]), 6) for j in chosen],
            }
        )
    config = fitted.config()
    info = {
        "classifier": name,
        "method": clf.method,
        "seed": config.get("seed"),
        "config": config,
        "fitted_on": clf.info.get("fitted_on"),
        "coverage": coverage,
        "grid": list(grid),
        "prompts": {**used, "head": "tuned, on the frozen backbone", "label": "predicted"},
        "versions": versions(),
        "images": rows,
    }
    (out / "explain.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
