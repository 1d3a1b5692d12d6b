"""The fixed K-shot protocol of CoOp and its successors: K training images per class.

CoOp (Zhou et al., 2022) trains on K images per class drawn from the train split with a seeded
generator, validates on ``min(K, 4)`` images per class from the val split, and tests on the whole
test split. :func:`few_shot_subset` makes the K-shot draw reproducible; :func:`validation_shots`
gives the validation K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from focusshot.data.sources import LabelledImages

__all__ = ["few_shot_indices", "few_shot_subset", "validation_shots"]


def few_shot_indices(
    labels: Sequence[int] | np.ndarray,
    shots: int,
    seed: int,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    allow_fewer: bool = False,
) -> list[int]:
    """Indices of ``shots`` samples per class, drawn reproducibly.

    Each class ``c`` gets its own generator seeded from ``(seed, c)``, which shuffles that class's
    samples; the first ``shots`` of the shuffle are kept. So a class's draw does not depend on the
    other classes, and the K-shot set is contained in the (K+1)-shot set for the same seed.

    Args:
        labels: integer class id of each sample.
        shots: K, images per class (>= 1).
        seed: the draw's seed (a non-negative integer).
        num_classes: number of classes (default ``max(labels) + 1``); a class with no samples
            counts as having fewer than K.
        class_names: names used in error messages (default: the class ids).
        allow_fewer: take every sample of a class that has fewer than K instead of raising.

    Returns:
        indices grouped by class (class 0 first), ascending within each class.

    Raises:
        ValueError: ``shots < 1``, a negative seed, or (without ``allow_fewer``) a class with fewer
            than ``shots`` samples; the message names every such class and its count.
    """
    if isinstance(shots, bool) or int(shots) != shots or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    shots, seed = int(shots), int(seed)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be non-negative, found {int(y.min())}")
    n_classes = int(num_classes) if num_classes is not None else (int(y.max()) + 1 if y.size else 0)
    if y.size and int(y.max()) >= n_classes:
        raise ValueError(f"label {int(y.max())} is out of range for {n_classes} classes")
    if n_classes == 0:
        raise ValueError("no classes to draw from")

    def name(c: int) -> str:
        return repr(class_names[c]) if class_names is not None else f"class {c}"

    per_class = [np.flatnonzero(y == c) for c in range(n_classes)]
    short = [(c, len(idx)) for c, idx in enumerate(per_class) if len(idx) < shots]
    if short and not allow_fewer:
        listing = ", ".join(f"{name(c)} has {n}" for c, n in short)
        raise ValueError(
            f"{shots}-shot subset: {len(short)} class(es) have fewer than {shots} images ({listing}); "
            "pass allow_fewer=True to take all of their images"
        )
    chosen: list[int] = []
    for c, idx in enumerate(per_class):
        rng = np.random.default_rng(np.random.SeedSequence([seed, c]))
        picked = idx[rng.permutation(len(idx))[:shots]]
        chosen.extend(int(i) for i in np.sort(picked))
    return chosen


def few_shot_subset(
    data: LabelledImages,
    shots: int,
    seed: int,
    *,
    allow_fewer: bool = False,
) -> LabelledImages:
    """A K-shot training set: ``shots`` images per class of ``data`` (normally the train split).

    The draw is :func:`few_shot_indices` over ``data.labels``: reproducible from ``seed``, one
    independent shuffle per class, samples grouped by class. Class list and split name are kept.

    Raises:
        ValueError: a class with fewer than ``shots`` images (unless ``allow_fewer``), named with
            its count.
    """
    idx = few_shot_indices(
        data.labels,
        shots,
        seed,
        num_classes=data.num_classes,
        class_names=data.class_names,
        allow_fewer=allow_fewer,
    )
    return data.subset(idx)


def validation_shots(shots: int) -> int:
    """Images per class for validation under K-shot training: ``min(K, 4)``, as CoOp does."""
    if isinstance(shots, bool) or int(shots) != shots or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    return min(int(shots), 4)
