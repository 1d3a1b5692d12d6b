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

The file records each update (``info["updates"]``: classes added and removed, image counts, when,
and notes on the temperature and the rejection threshold). A temperature fitted on validation
images is refitted on them.

**Rejection.** A threshold that ``fit --reject auto`` chose by leave-one-class-out is chosen again
on the updated support set, from its kept features (no image is read again): the same open-set
score, rule (``balanced``, or ``tpr`` with its target rate) and seed, after the refitted
temperature, through :func:`~focusshot.evaluation.open_set.fit_rejection` on a
:meth:`PreparedImages.of_features <focusshot.evaluation.prepare.PreparedImages.of_features>` set.
Which image each fold holds out depends on the fold's place in the class order
(:func:`fold_order`): a classifier whose classes were in name order (``fit`` on a folder) folds
over the updated classes by name, so the threshold is the one ``fit --reject auto`` gives on a
folder of all the images (within float rounding), though the updated classifier lists the new
classes last; one fitted in another class order folds in its own, the new classes after the old.
``info["reject"]`` is that fit's record with ``"rechosen_by": "update"``. It is
dropped, with a note that says why (:func:`rejection_refusal`), where that cannot be done from the
features alone: every class of the updated set has one image (leave-one-class-out then plays the
known images with augmented views of the images themselves) or fewer than 3 classes remain. A
threshold set by hand (``fit --reject VALUE``,
``"chosen_by": "given"``) is dropped too, with its value in the note: the record holds no rule to
choose it again by, and a score's scale can move with the classes (the softmax probability falls
as classes are added), so keeping the number would reject by a different criterion.

``update --reject auto|THRESHOLD`` (``reject=``, with ``reject_tpr`` and ``open_score`` as ``fit``
takes them) sets the threshold instead, with or without classes added or removed: ``auto``
chooses it from the kept features as above (refused, with the reason, where they are not
enough), a number sets it by hand. A classifier fitted without ``--reject`` gains one this way
without a new fit.
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
from focusshot.evaluation.open_set import check_reject, fit_rejection, loco_refusal, one_image_per_class
from focusshot.evaluation.prepare import PreparedImages, class_text
from focusshot.methods.base import FitContext, Fitted, Method, create_method

__all__ = [
    "features_refusal",
    "fold_order",
    "rejection_refusal",
    "update_classifier",
    "update_file",
    "update_refusal",
]

#: how ``info["reject"]["chosen_by"]`` begins when ``fit --reject auto`` chose the threshold
#: (:func:`~focusshot.evaluation.open_set.choose_threshold`)
_LOCO = "leave-one-class-out"


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
    reject: float | str | None = None,
    reject_tpr: float | None = None,
    open_score: str | None = None,
) -> Classifier:
    """``clf`` with the classes of the folders ``add`` (each folder one class, named as the folder)
    and without the classes ``remove``, refitted from the kept support features.

    Args:
        clf: a classifier whose method updates (:func:`update_refusal`).
        add: folders of new classes.
        remove: names of classes to remove.
        cache_dir: the feature cache the new images go through (default: ``fit``'s).
        batch_size: images per forward pass.
        progress: progress bars.
        reject: a new rejection threshold for the updated classifier, as ``fit(reject=)`` takes
            it: ``"auto"`` chooses it by leave-one-class-out on the updated support set, from the
            kept features (as ``fit --reject auto`` on all the images would); a number sets it.
            ``None`` keeps the stored one's rule (chosen again, or dropped with the reason).
        reject_tpr: with ``reject="auto"``, the rate of known images to keep (else balanced).
        open_score: the score ``reject`` thresholds (default: the stored threshold's, else the
            method's).

    Raises:
        ValueError: the method cannot update (:func:`update_refusal`), a class to add is already
            present, a class to remove is not, fewer than 2 classes would remain, a folder has no
            images, nothing to do, or ``reject`` that cannot be met (the reason).
        focusshot.data.images.ImageErrors: images that fail to decode (every one named).
    """
    why = update_refusal(clf)
    if why:
        raise ValueError(f"method {clf.method!r} cannot be updated in place: {why}")
    assert clf.support is not None  # update_refusal checked it
    if reject is None and (reject_tpr is not None or open_score is not None):
        raise ValueError(
            "reject_tpr (--reject-tpr) and open_score (--open-score) say how to reject: give reject "
            "too (--reject auto|THRESHOLD)"
        )
    if not add and not remove and reject is None:
        raise ValueError(
            "nothing to update: give --add NEW_CLASS_DIR, --remove NAME and/or --reject auto|THRESHOLD"
        )
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
    for j, (_, ps) in enumerate(new):
        labels.append(torch.full((len(ps),), len(names) + j, dtype=torch.long))
    y = torch.cat(labels)
    recipe = _recipe(clf)
    if (reject, reject_tpr, open_score) != (None, None, None):  # checked before any image is read
        _check_reject(recipe, y, reject, reject_tpr, open_score)
    cache = FeatureCache(cache_dir or default_cache_dir())
    paths = [p for _, ps in new for p in ps]
    if paths:  # every unreadable image named at once (ImageErrors); the fit's prefix, resolved
        got = cache.get_resolved(clf.backbone, paths, clf.prefix, batch_size=batch_size, progress=progress)
        feats.append(got.float())
    names += [n for n, _ in new]
    features = torch.cat(feats)
    val = None
    if sup.val_features is not None and sup.val_labels is not None:
        vrows = relabel[sup.val_labels] >= 0
        val = (sup.val_features[vrows], relabel[sup.val_labels[vrows]])
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
    if "reject" in clf.info or reject is not None:
        prepared = PreparedImages.of_features(
            clf.backbone, cache, recipe, clf.prefix, features, y, names, text=ctx.text
        )
        temperature = float(info.get("calibration", {}).get("temperature", 1.0))
        folds = fold_order(clf.class_names, names)
        if reject is None:
            record, note = _rejection(clf.info["reject"], recipe, fitted, prepared, temperature, seed, folds)
        else:
            record, note = _requested(
                clf, recipe, fitted, prepared, temperature, seed, folds, reject, reject_tpr, open_score
            )
        if record is not None:
            info["reject"] = record
        notes.append(note)
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


def rejection_refusal(stored: dict[str, Any], recipe: Method[Any], labels: torch.Tensor) -> str:
    """Why the rejection threshold a classifier file stores (``stored``: its ``info["reject"]``)
    cannot be chosen again for ``recipe`` on an updated support set with ``labels`` ``(N,)`` from
    its features alone; ``""`` when it can (then :func:`~focusshot.evaluation.open_set.fit_rejection`
    chooses it as ``fit --reject auto`` did)."""
    old = f"{stored['score']} = {float(stored['threshold']):.6g}"
    if stored.get("chosen_by") == "given":
        return (
            f"it was set by hand ({old}), and a score's scale can move with the classes, so the same "
            "number would reject by another criterion: give one again (update or predict --reject "
            "VALUE), or fit again with --reject"
        )
    if not str(stored.get("chosen_by", "")).startswith(_LOCO) or stored.get("rule") is None:
        return f"its record ({old}) does not say that leave-one-class-out chose it, nor by which rule"
    return features_refusal(recipe, labels)


def features_refusal(recipe: Method[Any], labels: torch.Tensor) -> str:
    """Why leave-one-class-out cannot choose a threshold for ``recipe`` from a classifier file's
    kept features with ``labels`` ``(N,)`` (no images: no augmented views, no boxes); ``""`` when
    it can."""
    if recipe.augment_views():
        return (
            f"method {recipe.name!r} fits on augmented views of the images, which the classifier "
            "file does not keep: fit again with --reject auto"
        )
    if recipe.needs_regions and recipe.uses_boxes():
        return (
            f"method {recipe.name!r} reads each image's box, which the classifier file does not "
            "keep: fit again with --reject auto"
        )
    why = loco_refusal(recipe, labels.tolist())
    if why:
        return f"{why}; set one by hand (update or predict --reject VALUE)"
    if one_image_per_class(labels.tolist()):
        return (
            "every class of the updated support set has one image, and leave-one-class-out then "
            "plays the known images with augmented views of the images themselves, which the "
            "classifier file does not keep: give a class a second image (--remove NAME --add "
            "FOLDER), or fit again with --reject auto"
        )
    return ""


def _rejection(
    stored: dict[str, Any],
    recipe: Method[Any],
    fitted: Fitted,
    support: PreparedImages,
    temperature: float,
    seed: int,
    folds: list[int] | None,
) -> tuple[dict[str, Any] | None, str]:
    """The updated file's ``info["reject"]`` (``None``: dropped) and the update's note on it: the
    stored record's score and rule chosen again by leave-one-class-out, its folds in ``folds``'
    order (:func:`fold_order`), or why not (:func:`rejection_refusal`).

    Args:
        stored: the old file's ``info["reject"]``.
        recipe: the method, with the first fit's options.
        fitted: the updated fit (it must still give the stored score).
        support: the updated support set (:meth:`PreparedImages.of_features`).
        temperature: the updated classifier's temperature (1 without one), as ``fit`` passes it.
        seed: the first fit's seed.
        folds: the folds' class order (:func:`fold_order`).
    """
    score = str(stored["score"])
    why = rejection_refusal(stored, recipe, support.labels)
    if not why and fitted.open_scores().get(score, ""):
        why = f"the updated fit cannot give the open-set score {score!r}: {fitted.open_scores()[score]}"
    if why:
        return None, f"rejection threshold dropped: {why}"
    rule = str(stored["rule"])
    tpr = float(stored.get("target_tpr", 0.95)) if rule == "tpr" else None
    out = _chosen_by_update(recipe, fitted, support, "auto", tpr, score, temperature, seed, folds)
    how = f"{rule} rule" + (f" at {tpr:g}" if tpr is not None else "")
    note = (
        f"rejection threshold re-chosen by leave-one-class-out on the updated support set ({how}, "
        f"as fit --reject auto): {score} = {out['threshold']:.6g} (was {float(stored['threshold']):.6g})"
    )
    return out, note


def fold_order(old_names: Sequence[str], names: Sequence[str]) -> list[int] | None:
    """The order of leave-one-class-out's folds over the updated classes ``names`` (``None``: their
    own order). A classifier whose classes were in name order (a folder or a manifest, as ``fit``
    reads them) folds by name, as ``fit`` does on a folder of the union; one fitted in another order
    (from Python) keeps its own, the new classes after the old, as its first fit folded."""
    if list(old_names) != sorted(old_names):
        return None
    return sorted(range(len(names)), key=list(names).__getitem__)


def _check_reject(
    recipe: Method[Any],
    labels: torch.Tensor,
    reject: float | str | None,
    tpr: float | None,
    open_score: str | None,
) -> None:
    """``update(reject=...)`` checked on the updated support set's ``labels`` ``(N,)`` before any
    image is read: what ``fit(reject=)`` checks, and for ``"auto"`` what the kept features alone
    cannot give (:func:`rejection_refusal`'s reasons).

    Raises:
        ValueError: the reason, naming the argument.
    """
    check_reject(recipe, reject, labels.tolist(), tpr=tpr, open_score=open_score)
    if reject == "auto":
        why = features_refusal(recipe, labels)
        if why:
            raise ValueError(f"reject='auto' (--reject auto): {why}")


def _chosen_by_update(
    recipe: Method[Any],
    fitted: Fitted,
    support: PreparedImages,
    reject: float | str,
    tpr: float | None,
    score: str,
    temperature: float,
    seed: int,
    folds: list[int] | None,
) -> dict[str, Any]:
    """:func:`~focusshot.evaluation.open_set.fit_rejection`'s record on the updated support set,
    ``"rechosen_by": "update"`` after its ``chosen_by``."""
    chosen = fit_rejection(
        recipe,
        fitted,
        support,
        reject,
        tpr=tpr,
        open_score=score,
        temperature=temperature,
        seed=seed,
        classes=folds,
    )
    out: dict[str, Any] = {}
    for k, v in chosen.items():
        out[k] = v
        if k == "chosen_by":
            out["rechosen_by"] = "update"
    return out


def _requested(
    clf: Classifier,
    recipe: Method[Any],
    fitted: Fitted,
    support: PreparedImages,
    temperature: float,
    seed: int,
    folds: list[int] | None,
    reject: float | str,
    tpr: float | None,
    open_score: str | None,
) -> tuple[dict[str, Any], str]:
    """The threshold ``update(reject=...)`` asks for (:func:`_check_reject` passed), as
    ``fit(reject=...)`` stores it on the updated support set (the rule as ``fit`` takes it:
    ``tpr`` with a rate, else balanced), with ``rechosen_by``; and the note."""
    score = open_score or (clf.info.get("reject") or {}).get("score") or recipe.open_score
    out = _chosen_by_update(recipe, fitted, support, reject, tpr, score, temperature, seed, folds)
    was = clf.info.get("reject")
    before = f" (was {was['score']} = {float(was['threshold']):.6g})" if was else " (there was none)"
    if reject == "auto":
        rule = "balanced rule" if tpr is None else f"tpr rule at {tpr:g}"
        how = f"chosen by leave-one-class-out on the updated support set ({rule}, --reject auto)"
    else:
        how = f"set by hand (--reject {reject})"
    return out, f"rejection threshold {how}: {score} = {out['threshold']:.6g}{before}"


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
    reject: float | str | None = None,
    reject_tpr: float | None = None,
    open_score: str | None = None,
) -> tuple[Path, Classifier]:
    """Update the classifier file ``path`` (:func:`update_classifier`, whose arguments the others
    are) and write it to ``output`` (default: ``path`` itself). The file is written to a temporary
    name and renamed, so a failure leaves the old file as it was."""
    clf = Classifier.load(path)
    updated = update_classifier(
        clf,
        add,
        remove,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        reject=reject,
        reject_tpr=reject_tpr,
        open_score=open_score,
    )
    return updated.save(Path(output) if output is not None else Path(path)), updated
