"""A fitted classifier: a backbone, a fitted method and class names, saved as one safetensors file.

``Classifier.save`` writes the fitted tensors (adapter weights, head, FORT's prompts) and, as JSON
metadata, what rebuilds it: the method and its config, the class names, the backbone's source and
weights hash, the preprocessing and versions. ``Classifier.load`` never unpickles: the backbone is
rebuilt from its recorded source, its weights hash checked, and the fit rebuilt by the method
(:func:`focusshot.methods.base.fitted_from_state`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.backbones.registry import create_backbone
from focusshot.data.images import ImageError, list_images
from focusshot.data.labelled import Box, LabelledImages
from focusshot.embedding import Embeddings, embed_images
from focusshot.methods.base import Fitted, fitted_from_state
from focusshot.methods.open_set import check_score, open_scores
from focusshot.methods.request import Resolved, resolve
from focusshot.versions import versions

__all__ = ["CLASSIFIER_FORMAT", "UNKNOWN", "Classifier", "Prediction", "SupportSet", "keeps_support"]

CLASSIFIER_FORMAT = "focusshot.classifier/2"
#: classifiers written before the method contract (a frozen-feature head only) still load
_OLD_FORMATS = ("focusshot.classifier/1",)


#: the label ``predict`` gives an image whose open-set score is below the rejection threshold
UNKNOWN = "unknown"

#: tensor names of the kept support set in a classifier file (never handed to the fit's loader)
_SUPPORT_KEYS = {
    "features": "classifier.support.features",
    "labels": "classifier.support.labels",
    "val_features": "classifier.val.features",
    "val_labels": "classifier.val.labels",
}


@dataclass
class SupportSet:
    """The prefix the fit read, kept in the file so that ``focusshot update`` can refit from it
    (:mod:`focusshot.update`): support features ``(N, D)`` and labels ``(N,)``, and the validation
    features and labels the fit selected on, if any."""

    features: torch.Tensor
    labels: torch.Tensor
    val_features: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors to save (features in float16 where that is exact, as the feature cache keeps them)."""
        out: dict[str, torch.Tensor] = {}
        for name, key in _SUPPORT_KEYS.items():
            t = getattr(self, name)
            if t is None:
                continue
            t = t.detach().cpu()
            if t.is_floating_point() and torch.equal(t.half().float(), t.float()):
                t = t.half()
            out[key] = t.contiguous()
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> SupportSet | None:
        """The kept support set in a file's tensors (``None`` when it keeps none)."""
        got = {
            name: state[key].float() if state[key].is_floating_point() else state[key].long()
            for name, key in _SUPPORT_KEYS.items()
            if key in state
        }
        return cls(**got) if "features" in got and "labels" in got else None


def keeps_support(recipe: Any, prefix: Prefix) -> bool:
    """Whether a classifier keeps its support set: a method that trains nothing on the images'
    pooled features (the set is small, and refitting from it is the method's own fit)."""
    return not recipe.trains and prefix.kind == "pooled"


@dataclass
class Prediction:
    """One image's prediction: the label, its probability, and the top-k (label, probability) pairs;
    with rejection, the open-set score (:mod:`focusshot.methods.open_set`) and ``label`` is
    :data:`UNKNOWN` when the score is below the threshold (``top`` still ranks the classes).

    Attributes:
        path: the image file, as the images were listed.
        label: the most probable class's name, or :data:`UNKNOWN` when rejected.
        confidence: the most probable class's probability (temperature applied), in ``[0, 1]``;
            set even when ``label`` is :data:`UNKNOWN`.
        top: the ``top_k`` most probable classes as ``(name, probability)`` pairs, most probable
            first.
        score: the open-set score (higher: more like a fitted class), or ``None`` when
            :meth:`Classifier.predict` neither rejected nor was given an ``open_score``.
    """

    path: str
    label: str
    confidence: float
    top: list[tuple[str, float]] = field(default_factory=list)
    score: float | None = None


class Classifier:
    """A backbone plus a fitted method plus class names; saved as one safetensors file.

    :func:`focusshot.fit` and :meth:`load` make one; building one by hand is for code that fits a
    method itself.

    Args:
        backbone: the frozen backbone that computes the method's prefix of each image.
        fitted: the fitted method; it must score ``len(class_names)`` classes (else ``ValueError``).
        class_names: the class names in label order: ``class_names[i]`` names the fit's class ``i``.
        method: the request ``fitted`` came from (:func:`~focusshot.methods.request.resolve`), or
            its name (or alias ``METHOD@LABEL``), which is resolved again with the options the fit
            records in its config.
        backbone_spec: what :meth:`load` rebuilds the backbone from: ``{"source", "pretrained",
            "seed"}`` as passed to :func:`~focusshot.backbones.registry.create_backbone`
            (``pretrained`` is ``None`` for an in-memory backbone, which :meth:`load` must then be
            given).
        info: facts written into the file: ``fitted_on`` (what the fit read), ``calibration`` (the
            temperature, :attr:`temperature`), ``reject`` (the stored threshold and its score),
            ``auto`` (what ``--method auto`` chose) and ``updates`` (``focusshot update``'s record);
            :meth:`load` reads back only these keys. ``None``: none.
        support: the prefix the fit read (:func:`keeps_support`), saved so that ``focusshot update``
            can refit from it; ``None``: not kept.
    """

    def __init__(
        self,
        backbone: Backbone,
        fitted: Fitted,
        class_names: list[str],
        method: Resolved | str,
        backbone_spec: dict[str, Any],
        info: dict[str, Any] | None = None,
        support: SupportSet | None = None,
    ) -> None:
        if fitted.num_classes != len(class_names):
            raise ValueError(
                f"the method scores {fitted.num_classes} classes but {len(class_names)} are named"
            )
        self.backbone = backbone
        self.fitted = fitted
        self.class_names = list(class_names)
        if isinstance(method, str):
            method = resolve(method, fitted.config().get("options"), backbone)
        #: the request the fit came from: the method with its options and the prefix it reads
        self.request = method
        #: the method's name (or alias) and the method itself, with the options it was fitted with
        self.method = method.name
        self.recipe = method.method
        self.backbone_spec = backbone_spec
        self.info = info or {}
        self.support = support
        recipe = self.recipe
        #: the prefix the method reads, resolved on the backbone (what :meth:`embed` computes)
        self.prefix = method.prefix
        #: the fit reads a region per image (FALIP, drawn prompts, FORT with box prompts)
        self.needs_regions = recipe.needs_regions
        #: ... and takes it from a box per image (``predict(..., boxes=)``); else it finds its own
        self.uses_boxes = recipe.needs_regions and recipe.uses_boxes()

    def embed(
        self,
        images: Sequence[str | os.PathLike[str]],
        batch_size: int = 32,
        progress: bool = False,
        prefix: Prefix | None = None,
    ) -> Embeddings:
        """What the method reads for each image file (its prefix, ``(N, *prefix)``), or another
        ``prefix`` of the same images (``Prefix.images()``: the preprocessed ``(N, 3, crop, crop)``).

        Args:
            images: image files (not folders); the rows follow their order.
            batch_size: images per forward pass of the backbone.
            progress: show a progress bar on stderr.
            prefix: a prefix to compute instead of the method's own (``None``, the default).

        Returns:
            :class:`~focusshot.embedding.Embeddings`: ``features`` of the images that decoded,
            their ``paths``, and one ``ImageError`` per file that did not (``bad``).
        """
        return embed_images(
            self.backbone,
            [str(p) for p in images],
            batch_size=batch_size,
            progress=progress,
            prefix=self.prefix if prefix is None else prefix,
        )

    @property
    def temperature(self) -> float:
        """Temperature the logits are divided by before the softmax (1: uncalibrated; ``fit(...,
        calibrate=True)`` fits it on the validation images, Guo et al., 2017)."""
        return float(self.info.get("calibration", {}).get("temperature", 1.0))

    def rejection(
        self, reject: float | bool | None = None, open_score: str | None = None
    ) -> tuple[str, float | None]:
        """The open-set score ``predict`` reads and the threshold below which it writes ``unknown``.

        Args:
            reject: ``None`` or ``True``: the threshold stored by ``fit(..., reject=...)``
                (``None`` when none is stored; ``True`` then raises); ``False``: no rejection; a
                number: that threshold.
            open_score: a score name (default: the one the stored threshold is for, else the
                method's default, :attr:`~focusshot.methods.base.Method.open_score`).

        Returns:
            ``(score name, threshold or None)``.

        Raises:
            ValueError: an unknown score (listing the valid ones), one the method cannot give (the
                reason), or a stored threshold asked for with another score.
        """
        stored = self.info.get("reject") or {}
        score = check_score(open_score or stored.get("score") or self.recipe.open_score)
        threshold: float | None = None
        if reject is True and not stored:
            raise ValueError("this classifier stores no rejection threshold: give one (reject=0.4)")
        if reject is None or reject is True:
            if stored and stored["score"] != score:
                raise ValueError(
                    f"the stored threshold is for the score {stored['score']!r}, not {score!r}: give a "
                    f"threshold for {score!r} by hand"
                )
            threshold = float(stored["threshold"]) if stored else None
        elif reject is not False:
            threshold = float(reject)
        why = self.fitted.open_scores().get(score, "")
        if why and (threshold is not None or open_score is not None):
            raise ValueError(f"method {self.method!r} cannot reject by the open-set score {score!r}: {why}")
        return score, threshold

    def open_scores(
        self, features: torch.Tensor, names: Sequence[str], regions: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Open-set scores ``names`` ``(N,)`` of the method's prefix (higher: more like a fitted
        class; ``msp`` after the temperature): :func:`~focusshot.methods.open_set.open_scores`.

        Args:
            features: the method's prefix of the images ``(N, ...)`` (:meth:`embed`).
            names: score names (:data:`focusshot.methods.open_set.SCORES`).
            regions: ``(N, 4)`` regions, for a method that reads them (:meth:`regions`).

        Raises:
            ValueError: an unknown score (listing the valid ones) or one the method cannot give.
        """
        with torch.inference_mode():
            return open_scores(
                self.fitted,
                features,
                names,
                regions if self.needs_regions else None,
                temperature=self.temperature,
            )

    def probabilities(self, features: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities ``(N, C)`` of the method's prefix ``(N, ...)`` (temperature applied).

        Args:
            features: the method's prefix of ``N`` images, ``(N, *prefix)`` (:meth:`embed`).
            regions: ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in ``[0, 1]`` coordinates of the
                backbone's crop, a NaN row for an image without one (:meth:`regions`); read only by
                a method that reads regions, ignored by the others.
        """
        kw = {"regions": regions} if self.needs_regions else {}
        with torch.inference_mode():
            return (self.fitted.logits(features, **kw).double() / self.temperature).softmax(-1).float()

    def regions(
        self, paths: Sequence[str], boxes: Sequence[Box | None] | Mapping[str, Box | None] | None
    ) -> torch.Tensor | None:
        """The boxes of the images ``paths`` (original pixels ``x0, y0, x1, y1``; one per path, or a
        mapping path -> box) in ``[0, 1]`` coordinates of the backbone's crop: ``(N, 4)``, a NaN row
        where an image has none; ``None`` when the method reads no boxes or none are given.

        Args:
            paths: the image files, in the order of the result's rows.
            boxes: one box per path (``None`` for an image without one), or a mapping path -> box
                (a path missing from it has none); ``None``: no boxes at all.

        Raises:
            ValueError: the method reads boxes and ``boxes`` is ``None`` (unless its
                ``missing_box`` lets an image go without), or their count differs from the paths'.
        """
        if not self.uses_boxes:
            return None
        if boxes is None:
            if self.recipe.missing_box() == "whole":
                return None
            raise ValueError(
                f"method {self.method!r} reads a box per image: pass boxes (focusshot predict --boxes "
                "MANIFEST), or fit it with missing_box='whole'"
            )
        if isinstance(boxes, Mapping):
            boxes = [boxes.get(p) for p in paths]
        if len(boxes) != len(paths):
            raise ValueError(f"{len(paths)} images but {len(boxes)} boxes")
        from focusshot.evaluation.prepare import region_tensor

        named = LabelledImages(list(paths), [0] * len(paths), ["?"], list(boxes), None)
        return region_tensor(self.backbone, named)

    def uncertainty(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image uncertainty ``(N,)`` the method offers beyond its probabilities (APT's MC
        dropout: ``entropy`` and ``mutual_information``); ``{}`` for the others.

        Args:
            features: the method's prefix of ``N`` images, ``(N, *prefix)`` (:meth:`embed`).
        """
        fn = getattr(self.fitted, "uncertainty", None)
        return dict(fn(features)) if callable(fn) else {}

    def predict_proba(
        self,
        images: Sequence[str | os.PathLike[str]],
        batch_size: int = 32,
        progress: bool = False,
        boxes: Sequence[Box | None] | Mapping[str, Box | None] | None = None,
    ) -> tuple[torch.Tensor, list[str], list[ImageError]]:
        """Class probabilities ``(N, C)`` of the images that decode, their paths, and the bad files.

        Args:
            images: image files (not folders).
            batch_size: images per forward pass of the backbone.
            progress: show a progress bar on stderr.
            boxes: one box ``(x0, y0, x1, y1)`` in pixels of the original image per image, in the
                order of ``images`` (``None`` for an image without one), or a mapping path -> box;
                for a method that reads regions (:meth:`regions`), ignored by the others.

        Returns:
            ``(probabilities, paths, bad)``: ``(N, C)`` probabilities (temperature applied) of the
            ``N`` images that decoded, their paths in row order, and one ``ImageError`` per file
            that did not.
        """
        if boxes is not None and not isinstance(boxes, Mapping):
            if len(boxes) != len(images):
                raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
            boxes = {str(p): b for p, b in zip(images, boxes, strict=True)}
        emb = self.embed(images, batch_size, progress)
        return self.probabilities(emb.features, self.regions(emb.paths, boxes)), emb.paths, emb.bad

    def predict(
        self,
        images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        top_k: int = 5,
        batch_size: int = 32,
        progress: bool = False,
        boxes: Mapping[str, Box | None] | None = None,
        reject: float | bool | None = None,
        open_score: str | None = None,
    ) -> list[Prediction]:
        """Predictions for image files or folders (undecodable files raise :class:`ImageError`).

        With a rejection threshold (by default the one ``fit(..., reject=...)`` stored), each
        prediction carries its open-set ``score`` and is labelled :data:`UNKNOWN` below the
        threshold (:meth:`rejection`).

        Args:
            images: an image file, a folder (searched recursively), a text file listing image paths
                one per line, or a sequence of these (:func:`~focusshot.data.images.list_images`).
            top_k: how many ``(label, probability)`` pairs each prediction's ``top`` holds (at most
                the number of classes).
            batch_size: images per forward pass of the backbone.
            progress: show a progress bar on stderr.
            boxes: image path (as the images are listed) -> box ``(x0, y0, x1, y1)`` in pixels of
                the original image, or ``None`` for an image without one; for a method that reads
                regions (:meth:`regions`), ignored by the others.
            reject: ``None`` (the default): the stored threshold if there is one, else no
                rejection; ``True``: the stored threshold (an error when none is stored);
                ``False``: no rejection; a number: that threshold.
            open_score: the open-set score to reject by
                (:data:`focusshot.methods.open_set.SCORES`); default: the stored threshold's score,
                else the method's own. Giving one also fills each prediction's ``score``.

        Returns:
            one :class:`Prediction` per image, in the order the images are listed.
        """
        score, threshold = self.rejection(reject, open_score)
        paths = list_images(images)
        if not paths:
            raise ValueError(f"no image files in {images}")
        emb = self.embed(paths, batch_size, progress)
        if emb.bad:
            raise emb.bad[0]
        regions = self.regions(emb.paths, boxes)
        probs = self.probabilities(emb.features, regions)
        scores = None
        if threshold is not None or open_score is not None:
            scores = self.open_scores(emb.features, [score], regions)[score].tolist()
        k = min(top_k, len(self.class_names))
        values, idx = probs.topk(k, dim=-1)
        out = []
        for row, (p, v, i) in enumerate(zip(emb.paths, values, idx, strict=True)):
            s = None if scores is None else float(scores[row])
            rejected = threshold is not None and s is not None and s < threshold
            label = UNKNOWN if rejected else self.class_names[int(i[0])]
            top = [(self.class_names[int(c)], float(pv)) for c, pv in zip(i, v, strict=True)]
            out.append(Prediction(p, label, float(v[0]), top, s))
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted tensors (adapter weights, head) and, as JSON metadata, everything needed
        to rebuild the classifier: method and its config, class names, the backbone's source and
        weights hash, preprocessing and versions.

        Args:
            path: the file to write; its folder is created, and an existing file is replaced (the
                new one is written beside it as ``<name>.tmp`` and then renamed).

        Returns:
            ``path`` as a :class:`~pathlib.Path`.
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CLASSIFIER_FORMAT,
            "method": self.method,
            "class_names": self.class_names,
            "backbone_spec": self.backbone_spec,
            "backbone": self.backbone.identity.to_dict(),
            "preprocess": self.backbone.preprocess.to_dict(),
            "prefix": self.request.declared.key(),
            "fitted": self.fitted.config(),
            "fit_info": self.fitted.info(),
            "versions": versions(),
            **self.info,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.fitted.state_dict().items()}
        if self.support is not None:
            state.update(self.support.state_dict())
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp), metadata={"focusshot": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], backbone: Backbone | None = None) -> Classifier:
        """Read a classifier; the backbone is rebuilt from its recorded source and its weights checked.

        Args:
            path: a file written by :meth:`save`.
            backbone: a backbone to use instead of rebuilding one from the recorded source (needed
                for a classifier fitted with an in-memory backbone); its weights hash must equal
                the recorded one either way.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not a classifier file; the backbone's weights cannot be found or differ
                from those the classifier was fitted with; the fit does not load.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such classifier file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("focusshot", "{}"))
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ValueError(f"{path}: not a readable classifier file ({exc})") from exc
        fmt = meta.get("format")
        if fmt != CLASSIFIER_FORMAT and fmt not in _OLD_FORMATS:
            raise ValueError(f"{path}: not a focusshot classifier (format {fmt!r})")
        spec = meta["backbone_spec"]
        if backbone is None:
            if spec.get("pretrained") is None:
                raise ValueError(f"{path}: fitted with an in-memory backbone; pass backbone= to load it")
            try:
                backbone = create_backbone(spec["source"], pretrained=spec["pretrained"], seed=spec["seed"])
            except (ValueError, OSError) as exc:
                raise ValueError(
                    f"{path}: the backbone's weights cannot be found or read (source "
                    f"{spec['source']!r}): {exc}"
                ) from exc
        want = meta["backbone"]["weights_sha256"]
        if backbone.identity.weights_sha256 != want:
            raise ValueError(
                f"{path}: the backbone's weights ({backbone.identity.weights_sha256[:12]}) differ from those "
                f"the classifier was fitted with ({want[:12]}, source {spec['source']!r})"
            )
        config = (
            meta["fitted"] if fmt == CLASSIFIER_FORMAT else {"method": meta["method"], "head": meta["head"]}
        )
        support = SupportSet.from_state(state)
        state = {k: v for k, v in state.items() if k not in _SUPPORT_KEYS.values()}
        try:
            fitted = fitted_from_state(state, config, backbone)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{path}: the fitted {meta['method']!r} does not load: {exc}") from exc
        return cls(
            backbone,
            fitted,
            meta["class_names"],
            meta["method"],
            spec,
            {k: v for k, v in meta.items() if k in ("fitted_on", "calibration", "auto", "reject", "updates")},
            support,
        )
