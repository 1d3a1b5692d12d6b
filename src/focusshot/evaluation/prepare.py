"""Fit preparation: what a method's ``fit`` reads, made the same way for every caller.

The episodic and split protocols (:mod:`focusshot.evaluation.protocols`), :func:`focusshot.fit`
and ``fit --method auto`` (:mod:`focusshot.auto`) all prepare a fit here, in two steps:

1. :func:`prepare_images` makes an image set ready for some method requests
   (:class:`~focusshot.methods.request.Resolved`, :class:`PreparedImages`): each request's prefix
   of every image (resolved once, when the request was, and read here as it is), through the
   shared cache and once per distinct prefix; the class text embeddings when a method needs
   text; the images' regions when a method reads the data's boxes (an image without one stops
   here, naming it, unless the method's ``missing_box`` is ``"whole"``). A protocol pays for each
   image once, then cuts every fit out.
2. :func:`prepare_fit` cuts one fit out of it: the support prefix, its labels, and the
   :class:`~focusshot.methods.base.FitContext` -- the classes' names and text (text only for a
   method that needs it), the validation prefix and labels, the augmented views when the method
   asks for them (:meth:`~focusshot.methods.base.Method.augment_views`; of the prefix the set
   was prepared with), and the support and validation regions for a method that reads regions.

A set whose prefixes were computed before, without its images (a classifier file's kept support
set, which ``focusshot update`` chooses a rejection threshold on), is
:meth:`PreparedImages.of_features`: fits are cut out of it the same way.

What a method needs is read from the method *instance* (``needs_text``, ``needs_regions``,
``uses_boxes()``, ``augment_views()``): FORT's ``needs_regions`` depends on its ``prompts`` option.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.data.images import ImageError, ImageErrors
from focusshot.data.sources import LabelledImages
from focusshot.data.transforms import AugmentTransform, box_to_crop, box_to_view
from focusshot.distributed import Context, current
from focusshot.evaluation.cache import FeatureCache
from focusshot.methods.base import FitContext, Method
from focusshot.methods.request import Resolved

__all__ = [
    "PreparedImages",
    "class_text",
    "drop_unreadable",
    "prepare_fit",
    "prepare_images",
    "region_tensor",
    "sharded_get",
    "view_regions",
]


def sharded_get(
    cache: FeatureCache,
    backbone: Backbone,
    paths: Sequence[str],
    prefix: Prefix,
    progress: bool,
    ctx: Context | None = None,
    batch_size: int = 32,
) -> Tensor:
    """``cache.get`` of every path for a resolved ``prefix``, the computing split across the job's
    ranks.

    In a multi-process job rank ``r`` first fills the cache entries of images ``r, r + W, ...``
    (its progress bar only on rank 0), all ranks meet at a barrier, and then every rank reads the
    whole set (from disk: the others' entries). Unreadable images are left to that second read,
    which raises the same :class:`~focusshot.data.images.ImageErrors` on every rank.
    """
    ctx = ctx or current()
    if ctx.active:
        try:
            mine = list(paths)[ctx.rank :: ctx.world]
            cache.get_resolved(
                backbone,
                mine,
                prefix,
                batch_size=batch_size,
                progress=progress and ctx.main,
                request_images=len(paths),
            )
        except ImageErrors:
            pass
        ctx.barrier()
    return cache.get_resolved(backbone, paths, prefix, batch_size=batch_size, progress=progress and ctx.main)


def class_text(backbone: Backbone, methods: Sequence[Method], class_names: list[str]) -> Tensor | None:
    """Class text embeddings ``(C, T, D)`` of ``class_names`` when one of ``methods`` needs text
    (on the CPU, beside the cached features), else ``None``.

    Raises:
        ValueError: a method needs text and the backbone has no text tower (naming them).
    """
    if not any(m.needs_text for m in methods):
        return None
    if not backbone.capabilities.text:
        bad = [m.name for m in methods if m.needs_text]
        raise ValueError(
            f"method(s) {bad} need class text embeddings, but backbone "
            f"{backbone.identity.name!r} has no text tower"
        )
    from focusshot.methods.text import class_text_embeddings

    return class_text_embeddings(backbone, class_names).cpu()


def region_tensor(backbone: Backbone, data: LabelledImages) -> Tensor:
    """Every image's box in ``[0, 1]`` coordinates of the backbone's evaluation crop: ``(N, 4)``.

    ``data.boxes`` (original pixels) go through the backbone's resize + centre crop
    (:func:`~focusshot.data.transforms.box_to_crop`; each image's size is read from its header,
    turned upright by its EXIF orientation as the image is loaded: boxes are in upright pixels).
    A row of NaN marks an image without a box.

    Raises:
        ValueError: a box is empty or falls outside the crop (naming the image).
    """
    out = torch.full((len(data.paths), 4), float("nan"))
    if data.boxes is None:
        return out
    from focusshot.data.images import upright_size

    for i, (path, box) in enumerate(zip(data.paths, data.boxes, strict=True)):
        if box is None:
            continue
        size = upright_size(path)  # the pixels the model sees: turned upright by EXIF, as loaded
        try:
            out[i] = torch.tensor(box_to_crop(box, size, backbone.preprocess))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return out


def view_regions(
    backbone: Backbone, data: LabelledImages, index: Sequence[int], views: int, seed: int
) -> tuple[Tensor, Tensor]:
    """The boxes of images ``index`` in their seeded augmented views ``1..views`` (the views
    :meth:`Prefix.with_view(v, seed) <focusshot.backbones.prefix.Prefix.with_view>` caches), in
    ``[0, 1]`` coordinates of each view: ``(regions (V, N, 4), shown (V, N))``.

    Each view's crop box and flip come from
    :meth:`~focusshot.data.transforms.AugmentTransform.geometry` of the image as the cache loads
    it, and the box goes through :func:`~focusshot.data.transforms.box_to_view`. A NaN row marks
    an image without a box (``shown`` true: there was nothing to show) or a view that shows less
    than :data:`~focusshot.data.transforms.VIEW_MIN_VISIBLE` of its image's box (``shown``
    false); the caller decides what such a view gets.

    Raises:
        ValueError: a box is empty or lies outside its image (naming the image).
    """
    from focusshot.data.images import load_rgb

    rows = [int(i) for i in index]
    regions = torch.full((views, len(rows), 4), float("nan"))
    shown = torch.ones(views, len(rows), dtype=torch.bool)
    if data.boxes is None:
        return regions, shown
    transforms = [AugmentTransform(backbone.preprocess, v, seed) for v in range(1, views + 1)]
    for j, i in enumerate(rows):
        box = data.boxes[i]
        if box is None:
            continue
        img = load_rgb(data.paths[i])
        for v, t in enumerate(transforms):
            try:
                mapped = box_to_view(box, t.geometry(img))
            except ValueError as exc:
                raise ValueError(f"{data.paths[i]}: {exc}") from None
            if mapped is None:
                shown[v, j] = False
            else:
                regions[v, j] = torch.tensor(mapped)
    return regions, shown


def _check_boxes(data: LabelledImages, regions: Tensor, users: Sequence[Method]) -> None:
    """Stop, naming the first image without a box, for a method that reads boxes and has no
    fallback for them (``missing_box`` other than ``"whole"``)."""
    missing = torch.isnan(regions).any(dim=1).nonzero().flatten().tolist()
    for m in users:
        if missing and m.missing_box() != "whole":
            raise ValueError(
                f"method {m.name!r} reads each image's box, but {data.paths[missing[0]]} has none "
                f"({len(missing)} of {len(data.paths)} images lack one); give the data boxes, or set the "
                f"method's option missing_box='whole' to use the whole image for them"
            )


@dataclass
class PreparedImages:
    """An image set made ready for fitting and scoring methods (:func:`prepare_images`).

    Attributes:
        backbone: the frozen backbone the prefixes come from.
        cache: the shared feature cache they go through.
        data: the images, their labels, class names and boxes.
        progress: progress bars while computing prefixes.
        batch_size: images per forward pass when a prefix is computed.
        labels: ``torch.tensor(data.labels)``, ``(N,)``.
        features: method name -> its prefix of every image ``(N, *prefix)`` (methods with the same
            prefix share one tensor).
        prefixes: method name -> the prefix (resolved) ``features`` holds, which its augmented
            views are of.
        text: class text embeddings ``(C, T, D)`` of ``data.class_names`` when a method added
            with ``text=True`` needs text, else ``None``.
        regions: the images' regions ``(N, 4)`` (:func:`region_tensor`) when a method added reads
            the data's boxes, else ``None``.
    """

    backbone: Backbone
    cache: FeatureCache
    data: LabelledImages
    progress: bool = False
    batch_size: int = 32
    labels: Tensor = field(init=False)
    features: dict[str, Tensor] = field(default_factory=dict)
    prefixes: dict[str, Prefix] = field(default_factory=dict)
    text: Tensor | None = None
    regions: Tensor | None = None
    _by_key: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.labels = torch.tensor(self.data.labels)

    def add(self, requests: Sequence[Resolved], *, text: bool = True) -> PreparedImages:
        """Make the set ready for ``requests`` too (what is already here is reused); returns it.

        Computes the prefixes not yet computed (each request's own, resolved when the request
        was: :func:`sharded_get`; in a multi-process job every rank must add the same methods in
        the same order), then, with ``text``, the class text embeddings if a method needs them and
        they are not here yet, then the regions if a method reads the data's boxes (checked per
        method: an image without a box raises, naming it, unless the method's ``missing_box`` is
        ``"whole"``).
        """
        for r in requests:
            key = r.prefix.key()
            if key not in self._by_key:
                paths = self.data.paths
                self._by_key[key] = sharded_get(
                    self.cache, self.backbone, paths, r.prefix, self.progress, batch_size=self.batch_size
                )
            self.features[r.name] = self._by_key[key]
            self.prefixes[r.name] = r.prefix
        methods = [r.method for r in requests]
        if text and self.text is None:
            self.text = class_text(self.backbone, methods, self.data.class_names)
        users = [m for m in methods if m.needs_regions and m.uses_boxes()]
        if users:
            if self.regions is None:
                self.regions = region_tensor(self.backbone, self.data)
            _check_boxes(self.data, self.regions, users)
        return self

    @classmethod
    def of_features(
        cls,
        backbone: Backbone,
        cache: FeatureCache,
        method: Method,
        prefix: Prefix,
        features: Tensor,
        labels: Tensor,
        class_names: Sequence[str],
        *,
        text: Tensor | None = None,
    ) -> PreparedImages:
        """A set made of prefixes computed before, without their images: ``features``
        ``(N, *prefix)``, ``method``'s resolved ``prefix`` of N images, and their ``labels`` ``(N,)``
        in ``0..C-1`` of ``class_names`` (a classifier file's kept support set:
        :mod:`focusshot.update`), with ``text`` ``(C, T, D)`` for a method that needs it.

        What reads the features alone runs on it as on the images it came from (:func:`prepare_fit`,
        :meth:`rows`, leave-one-class-out's held-out-image rule). It has no boxes, and its paths
        only name the rows (``<row i>``): what reads the images themselves (a method's augmented
        views, regions, leave-one-class-out's views with one image per class) cannot run on it.

        Raises:
            ValueError: ``features`` and ``labels`` differ in length, or a label is outside
                ``class_names`` (naming the argument).
        """
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"features has {features.shape[0]} rows but labels {labels.shape[0]}")
        data = LabelledImages(
            [f"<row {i}>" for i in range(labels.shape[0])], labels.tolist(), list(class_names)
        )
        return cls(
            backbone,
            cache,
            data,
            features={method.name: features},
            prefixes={method.name: prefix},
            text=text if method.needs_text else None,
        )

    def rows(self, method: Method, index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``method``'s prefix of images ``index`` (every image when ``None``) and their regions
        (``None`` for a method that reads no regions, or when no method added reads boxes)."""
        feats = self.features[method.name]
        regions = self.regions if method.needs_regions else None
        if index is None:
            return feats, regions
        return feats[index], None if regions is None else regions[index]


def prepare_images(
    backbone: Backbone,
    cache: FeatureCache,
    data: LabelledImages,
    requests: Sequence[Resolved],
    *,
    text: bool = True,
    progress: bool = False,
    batch_size: int = 32,
) -> PreparedImages:
    """``data`` made ready for the method ``requests`` (:meth:`PreparedImages.add`); ``text=False``
    for sets that are only scored or validated on (their classes' text is never read)."""
    return PreparedImages(backbone, cache, data, progress=progress, batch_size=batch_size).add(
        requests, text=text
    )


def prepare_fit(
    method: Method,
    support: PreparedImages,
    index: Tensor | None = None,
    *,
    classes: Sequence[int] | None = None,
    val: PreparedImages | None = None,
    val_index: Tensor | None = None,
    seed: int = 0,
    view_seed: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[Tensor, Tensor, FitContext]:
    """What ``method.fit`` reads for one fit: ``(support prefix (N, *prefix), labels (N,), ctx)``.

    Args:
        method: the method to fit (its instance says what it needs).
        support: the set the support images come from, prepared for ``method``.
        index: the support images' indices in ``support`` (``None``: all of them).
        classes: the support's classes as ``support.data`` numbers them, in the fit's order (an
            episode's N classes): labels become ``0..N-1`` in this order and the class names and
            text are those classes'; ``None``: every class, labels as they are.
        val: the set validation images come from, prepared for ``method`` (``None``: no
            validation); ``val_index`` picks its images (``None``: all).
        seed: the fit's seed (``FitContext.seed``).
        view_seed: the seed of the augmented views (default ``seed``).
        device: where training runs.
        progress: progress bars in the fit and while computing augmented views.
    """
    feats, regions = support.rows(method, index)
    labels = support.labels if index is None else support.labels[index]
    names = support.data.class_names
    text = support.text if method.needs_text else None
    if classes is not None:
        position = {int(c): j for j, c in enumerate(classes)}
        labels = torch.tensor([position[int(y)] for y in labels.tolist()])
        names = [names[c] for c in classes]
        text = None if text is None else text[list(classes)]
    vals = val_regions = None
    if val is not None:
        val_feats, val_regions = val.rows(method, val_index)
        vals = (val_feats, val.labels if val_index is None else val.labels[val_index])
    paths = support.data.paths if index is None else [support.data.paths[i] for i in index.tolist()]
    ctx = FitContext(
        support.backbone,
        len(names),
        names,
        text,
        vals,
        views=_views(support, method, paths, seed if view_seed is None else view_seed, progress),
        seed=seed,
        device=device,
        progress=progress,
        regions=regions,
        val_regions=val_regions,
    )
    return feats, labels, ctx


def _views(
    images: PreparedImages, m: Method, paths: Sequence[str], seed: int, progress: bool
) -> Tensor | None:
    """The ``(V, N, *prefix)`` augmented views of ``paths`` a method asks for (cached per image and
    view), of the prefix ``images`` holds for it."""
    v = m.augment_views()
    if not v:
        return None
    prefix = images.prefixes[m.name]
    return torch.stack(
        [
            images.cache.get_resolved(
                images.backbone,
                paths,
                prefix.with_view(i, seed),
                batch_size=images.batch_size,
                progress=progress,
            )
            for i in range(1, v + 1)
        ]
    )


def drop_unreadable(
    backbone: Backbone,
    cache: FeatureCache,
    train: LabelledImages,
    val: LabelledImages | None,
    prefix: Prefix,
    skip_bad: bool,
    batch_size: int,
) -> tuple[LabelledImages, LabelledImages | None, list[str]]:
    """Compute (and cache) ``prefix`` (resolved) of every readable image of a user's support (and
    validation) set; the unreadable ones fail the fit, all listed, or with ``skip_bad`` are left
    out and returned (their paths, sorted)."""
    bad: list[ImageError] = []
    for part in [train] + ([val] if val is not None else []):
        try:
            cache.get_resolved(backbone, part.paths, prefix, batch_size=batch_size, progress=False)
        except ImageErrors as exc:
            bad += exc.errors
    if bad and not skip_bad:
        hint = "; pass skip_bad=True (CLI: --skip-bad) to fit without them"
        raise ImageErrors(bad) from ValueError(f"{len(bad)} support image(s) cannot be read{hint}")
    if not bad:
        return train, val, []
    gone = {os.fspath(e.path) for e in bad}
    return _without(train, gone), (None if val is None else _without(val, gone)), sorted(gone)


def _without(data: LabelledImages, gone: set[str]) -> LabelledImages:
    """``data`` less the samples whose path is in ``gone``."""
    keep = [i for i, p in enumerate(data.paths) if os.fspath(p) not in gone]
    if not keep:
        raise ValueError(f"every image of the {data.split or 'support'} set is unreadable")
    return dataclasses.replace(
        data,
        paths=[data.paths[i] for i in keep],
        labels=[data.labels[i] for i in keep],
        boxes=None if data.boxes is None else [data.boxes[i] for i in keep],
    )
