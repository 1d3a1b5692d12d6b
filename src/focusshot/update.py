"""Add classes to a fitted classifier, or remove them, without refitting from every image
(``focusshot update clf.safetensors --add NEW_CLASS_DIR... [--remove NAME]``).

A classifier whose method trains nothing over pooled features (nearest neighbour, ProtoNet, the
solver heads ridge, R2D2, SVM, MetaOptNet and logistic regression, zero-shot CLIP, Tip-Adapter(-F),
LP++) keeps the features its fit read in its file (:class:`~focusshot.classifier.SupportSet`).
``update`` computes the new classes' features (through the same feature cache as ``fit``), drops
the removed classes' rows, and runs the method's own ``fit`` on the union with the options, seed
and validation set of the first fit: the result is the classifier a fresh ``fit`` on the union
gives (within float rounding; the new classes come after the old ones). Nothing is trained by
gradient except what the method's fit itself does (Tip-Adapter-F tunes its cache keys).

A method that trains the backbone, prompts or a head by gradient descent on the support images
(FT, LoRA, SSF, VPT and their FORT variants, CoOp, CLIP-LoRA, SAFE, APT) refuses: adding a class
changes what that training saw, so only a new ``fit`` gives its classifier. A method that reads
more than the pooled features per image (SAV's per-head outputs, FALIP's tokens, the drawn prompts'
images) refuses too: its file does not keep that prefix. The reason is
:func:`update_refusal`'s.

The file records each update (``info["updates"]``: classes added and removed, image counts, when).
A temperature fitted on validation images is refitted on them; a stored rejection threshold is
dropped (it was chosen for the old classes) and the record says so.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from focusshot.api import default_cache_dir
from focusshot.classifier import Classifier, SupportSet
from focusshot.data.images import list_images
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.prepare import class_text
from focusshot.methods.base import FitContext, Method, create_method

__all__ = ["update_classifier", "update_file", "update_refusal"]


def _recipe(clf: Classifier) -> Method[Any]:
    """The method ``clf`` was fitted with, with the options of that fit (a head's fit records its
    settings, not its method's options: ``fit`` records those in ``info["fitted_on"]``)."""
    fitted_on = clf.info.get("fitted_on") or {}
    options = fitted_on["options"] if "options" in fitted_on else clf.fitted.config().get("options")
    return create_method(clf.method, options)


def update_refusal(clf: Classifier) -> str:
    """Why ``clf`` cannot take new classes in place (``""`` when it can)."""
    if _recipe(clf).trains:
        return (
            "it trains on the support images (its backbone, prompts or head by gradient descent), and "
            "a new class changes that training: fit it again on the union (focusshot fit)"
        )
    if clf.prefix.kind != "pooled":
        return (
            f"it reads the {clf.prefix.key()!r} prefix of each image, which the classifier file does "
            "not keep (only pooled features are kept): fit it again on the union (focusshot fit)"
        )
    if clf.support is None:
        return (
            "the classifier file keeps no support features (it was written before focusshot kept "
            "them): fit it again on the union (focusshot fit)"
        )
    return ""


def _new_classes(
    add: Sequence[str | os.PathLike[str]], present: Sequence[str]
) -> list[tuple[str, list[str]]]:
    """``(class name, image paths)`` of each folder to add (the folder's name is the class's)."""
    out: list[tuple[str, list[str]]] = []
    for folder in add:
        path = Path(folder)
        if not path.is_dir():
            raise ValueError(f"{path}: not a folder (--add takes one folder of images per new class)")
        name = path.resolve().name
        if name in present or name in [n for n, _ in out]:
            raise ValueError(
                f"class {name!r} ({path}) is already in the classifier; remove it first "
                f"(--remove {name}) to replace it, or rename the folder"
            )
        paths = [str(p) for p in list_images(path)]
        if not paths:
            raise ValueError(f"{path}: no image files for the new class {name!r}")
        out.append((name, paths))
    return out


def update_classifier(
    clf: Classifier,
    add: Sequence[str | os.PathLike[str]] = (),
    remove: Sequence[str] = (),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> Classifier:
    """``clf`` with the classes of the folders ``add`` (each folder one class, named as the folder)
    and without the classes ``remove``, refitted from the kept support features.

    Raises:
        ValueError: the method cannot update (:func:`update_refusal`), a class to add is already
            present, a class to remove is not, fewer than 2 classes would remain, a folder has no
            images, or nothing to do.
        focusshot.data.images.ImageErrors: images that fail to decode (every one named).
    """
    why = update_refusal(clf)
    if why:
        raise ValueError(f"method {clf.method!r} cannot be updated in place: {why}")
    assert clf.support is not None  # update_refusal checked it
    if not add and not remove:
        raise ValueError("nothing to update: give --add NEW_CLASS_DIR and/or --remove NAME")
    unknown = [n for n in remove if n not in clf.class_names]
    if unknown:
        raise ValueError(f"cannot remove {unknown}: not classes of this classifier ({clf.class_names})")
    kept = [i for i, n in enumerate(clf.class_names) if n not in remove]
    names = [clf.class_names[i] for i in kept]
    new = _new_classes(add, names)
    if len(names) + len(new) < 2:
        raise ValueError(f"a classifier needs 2 classes; {len(names) + len(new)} would remain")
    sup = clf.support
    relabel = torch.full((len(clf.class_names),), -1, dtype=torch.long)
    relabel[kept] = torch.arange(len(kept))
    keep_rows = relabel[sup.labels] >= 0
    feats, labels = [sup.features[keep_rows]], [relabel[sup.labels[keep_rows]]]
    cache = FeatureCache(cache_dir or default_cache_dir())
    paths = [p for _, ps in new for p in ps]
    if paths:  # every unreadable image named at once (ImageErrors); the fit's prefix, resolved
        got = cache.get_resolved(clf.backbone, paths, clf.prefix, batch_size=batch_size, progress=progress)
        feats.append(got.float())
    for j, (_, ps) in enumerate(new):
        labels.append(torch.full((len(ps),), len(names) + j, dtype=torch.long))
    names += [n for n, _ in new]
    features, y = torch.cat(feats), torch.cat(labels)
    val = None
    if sup.val_features is not None and sup.val_labels is not None:
        vrows = relabel[sup.val_labels] >= 0
        val = (sup.val_features[vrows], relabel[sup.val_labels[vrows]])
    recipe = _recipe(clf)
    seed = int((clf.info.get("fitted_on") or {}).get("seed", 0))
    ctx = FitContext(
        clf.backbone,
        len(names),
        names,
        class_text(clf.backbone, [recipe], names) if recipe.needs_text else None,
        val,
        seed=seed,
        progress=progress,
    )
    fitted = recipe.fit(features, y, ctx)
    fitted.method = clf.method
    info = {k: v for k, v in clf.info.items() if k not in ("reject", "calibration")}
    notes: list[str] = []
    if "calibration" in clf.info:
        if val is not None and len(val[1]):
            info["calibration"] = _calibration(fitted, val)
            notes.append("temperature refitted on the kept validation images")
        else:
            notes.append("temperature dropped: no validation images of the remaining classes")
    if "reject" in clf.info:
        notes.append("rejection threshold dropped (chosen for the old classes): fit again with --reject")
    record = {
        "added": {n: len(ps) for n, ps in new},
        "removed": list(remove),
        "classes": len(names),
        "images": len(y),
        "previous": {"classes": len(clf.class_names), "images": len(sup.labels)},
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
    }
    info["updates"] = [*clf.info.get("updates", []), record]
    support = SupportSet(features, y, *(val if val is not None else (None, None)))
    return Classifier(clf.backbone, fitted, names, clf.method, clf.backbone_spec, info, support)


def _calibration(fitted: Any, val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The temperature of the updated fit on the kept validation images (as ``fit(calibrate=True)``)."""
    from focusshot.evaluation.metrics import fit_temperature, nll

    with torch.inference_mode():
        logits = fitted.logits(val[0]).double()
    t = fit_temperature(logits, val[1])
    return {
        "temperature": t,
        "fitted_on": "validation",
        "validation_nll_before": nll(logits, val[1], from_logits=True),
        "validation_nll_after": nll(logits / t, val[1], from_logits=True),
    }


def update_file(
    path: str | os.PathLike[str],
    add: Sequence[str | os.PathLike[str]] = (),
    remove: Sequence[str] = (),
    *,
    output: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[Path, Classifier]:
    """Update the classifier file ``path`` (:func:`update_classifier`) and write it to ``output``
    (default: ``path`` itself). The file is written to a temporary name and renamed, so a failure
    leaves the old file as it was."""
    clf = Classifier.load(path)
    updated = update_classifier(
        clf, add, remove, cache_dir=cache_dir, batch_size=batch_size, progress=progress
    )
    return updated.save(Path(output) if output is not None else Path(path)), updated
