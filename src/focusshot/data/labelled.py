"""A labelled set of image files (:class:`LabelledImages`): what every data source gives.

Plain paths, integer labels, one class list, optional boxes; nothing here opens an image. The
readers of :mod:`focusshot.data.sources` and FocusWorld (:mod:`focusshot.data.world`) both return
it, so it lives below both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Box", "LabelledImages", "check_box"]

#: A bounding box ``(x0, y0, x1, y1)`` in pixel coordinates of the original image, ``x0 < x1``,
#: ``y0 < y1``.
Box = tuple[float, float, float, float]


@dataclass
class LabelledImages:
    """A labelled set of image files: the output of every data source.

    Attributes:
        paths: image file paths, one per sample.
        labels: integer class ids in ``0 .. len(class_names) - 1``, one per sample.
        class_names: the class list; ``class_names[label]`` names a sample's class. All splits
            returned by one reader share the same list.
        boxes: ``None`` when the source has no boxes, else one entry per sample: a box
            ``(x0, y0, x1, y1)`` in pixels, or ``None`` for a sample without one.
        split: the split this set belongs to (``"train"``, ``"val"``, ``"test"``, ...) or ``None``.
    """

    paths: list[str]
    labels: list[int]
    class_names: list[str]
    boxes: list[Box | None] | None = None
    split: str | None = field(default=None)

    def __post_init__(self) -> None:
        self.paths = [str(p) for p in self.paths]
        self.labels = [int(v) for v in self.labels]
        self.class_names = [str(c) for c in self.class_names]
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if len(set(self.class_names)) != len(self.class_names):
            dupes = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
            raise ValueError(f"class_names has duplicates: {dupes}")
        bad = [v for v in self.labels if not 0 <= v < len(self.class_names)]
        if bad:
            raise ValueError(
                f"labels must lie in 0..{len(self.class_names) - 1} "
                f"({len(self.class_names)} classes); found {sorted(set(bad))[:10]}"
            )
        if self.boxes is not None:
            if len(self.boxes) != len(self.paths):
                raise ValueError(f"{len(self.paths)} paths but {len(self.boxes)} boxes")
            self.boxes = [
                None if b is None else check_box(b, f"sample {i}") for i, b in enumerate(self.boxes)
            ]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """Number of classes in :attr:`class_names` (some may have no samples in this split)."""
        return len(self.class_names)

    def indices_by_class(self) -> list[list[int]]:
        """Sample indices of each class, in sample order; ``result[c]`` lists class ``c``."""
        out: list[list[int]] = [[] for _ in self.class_names]
        for i, label in enumerate(self.labels):
            out[label].append(i)
        return out

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name (classes with none included, as 0)."""
        return {name: len(idx) for name, idx in zip(self.class_names, self.indices_by_class(), strict=True)}

    def subset(self, indices: Iterable[int]) -> LabelledImages:
        """The samples at ``indices`` (in that order), keeping the class list and the split name.

        Args:
            indices: sample positions in this set; negative ones count from the end, and a
                position may repeat.

        Raises:
            IndexError: a position out of range.
        """
        idx = [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} samples")
        return LabelledImages(
            paths=[self.paths[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            class_names=list(self.class_names),
            boxes=None if self.boxes is None else [self.boxes[i] for i in idx],
            split=self.split,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of this set."""
        return {
            "paths": list(self.paths),
            "labels": list(self.labels),
            "class_names": list(self.class_names),
            "boxes": None if self.boxes is None else [None if b is None else list(b) for b in self.boxes],
            "split": self.split,
        }


def check_box(box: Sequence[Any], where: str) -> Box:
    """Validate and normalise one box, raising ``ValueError`` naming ``where``."""
    if isinstance(box, (str, bytes)) or len(box) != 4:
        raise ValueError(f"{where}: a box needs 4 numbers (x0, y0, x1, y1), got {box!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: box values must be numbers, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{where}: box values must be finite, got {box!r}")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"{where}: a box needs x0 < x1 and y0 < y1, got {box!r}")
    return (x0, y0, x1, y1)
