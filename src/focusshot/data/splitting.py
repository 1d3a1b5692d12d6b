"""Split names, and cutting an unsplit set into train/val/test class by class.

Split names are canonical across readers: ``"train"``, ``"val"`` and ``"test"``. A folder or
manifest split called ``"validation"`` (or ``"valid"``) is returned under ``"val"``, the name
CoOp split files use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from focusshot.data.labelled import LabelledImages

__all__ = ["WORLD_SPLIT_FRACTIONS", "canonical_split", "check_fractions", "split_per_class"]

_SPLIT_ALIASES: dict[str, str] = {"validation": "val", "valid": "val"}


def canonical_split(name: str) -> str:
    """``"validation"``/``"valid"`` -> ``"val"`` (any case); other names stripped, as given."""
    name = name.strip()
    return _SPLIT_ALIASES.get(name.lower(), name)


#: The train/val/test fractions of each class that ``world:<suite>?split=1`` uses.
WORLD_SPLIT_FRACTIONS: tuple[float, float, float] = (0.5, 0.2, 0.3)

_SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """``n`` images shared out by ``fractions`` with the largest-remainder rule (ties: earlier split)."""
    quotas = [f * n for f in fractions]
    counts = [math.floor(q + 1e-9) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-round(quotas[i] - counts[i], 9), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _min_class_size(fractions: Sequence[float]) -> int:
    """The smallest class size from which on every split gets at least one image."""
    n = max(len(fractions), math.ceil(1.0 / min(fractions) - 1e-9))  # every quota >= 1 from here on
    while n > 1 and min(_split_counts(n - 1, fractions)) >= 1:
        n -= 1
    return n


def check_fractions(fractions: Sequence[float], where: str) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"{where}: give three split fractions (train, val, test), got {list(fractions)}")
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: split fractions must be numbers, got {list(fractions)}") from None
    if not all(math.isfinite(f) and f > 0 for f in values):
        raise ValueError(
            f"{where}: split fractions must be positive (every class needs images in train, val and "
            f"test), got {list(values)}"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"{where}: split fractions must sum to 1, got {list(values)} (sum {sum(values):g})")
    return values[0], values[1], values[2]


def _too_few_message(where: str, class_name: str, n: int, fractions: Sequence[float]) -> str:
    shares = "/".join(f"{f:g}" for f in fractions)
    counts = "/".join(map(str, _split_counts(n, fractions)))
    return (
        f"{where}: class {class_name!r} has {n} images, too few for the train/val/test fractions {shares} "
        f"(they give {counts}); every class needs at least one image in each split, which takes "
        f"{_min_class_size(fractions)} or more per class"
    )


def split_per_class(
    data: LabelledImages,
    fractions: Sequence[float] = WORLD_SPLIT_FRACTIONS,
    *,
    where: str = "split",
) -> dict[str, LabelledImages]:
    """Cut an unsplit set into ``{"train", "val", "test"}``, class by class, in sample order.

    Each class's samples, in the order they appear in ``data`` (for a FocusWorld suite: scene
    index ``000, 001, ...``), are shared out by ``fractions`` (train, val, test; positive, summing
    to 1): the first go to train, the next to val, the rest to test. The counts follow the
    largest-remainder rule, so with 10 images and the default 0.5/0.2/0.3 a class gives 5/2/3. The
    cut is deterministic and draws no random numbers: FocusWorld scenes are independent random
    draws, so their index order is already a random order. Each split keeps the class list and the
    boxes, has ``split`` set to its name, and lists its samples class by class.

    Args:
        data: an unsplit set (``data.split`` is ``None``).
        fractions: the shares ``(train, val, test)`` of each class, positive and summing to 1
            (default :data:`WORLD_SPLIT_FRACTIONS`, 0.5/0.2/0.3).
        where: what error messages start with (e.g. the source's spec).

    Raises:
        ValueError: bad fractions, ``data`` is already a split, or a class has too few samples to
            give each split one; the message (prefixed with ``where``) names the class.
    """
    fr = check_fractions(fractions, where)
    if data.split is not None:
        raise ValueError(f"{where}: the data is already the {data.split!r} split; split an unsplit set")
    parts: dict[str, list[int]] = {name: [] for name in _SPLIT_NAMES}
    for name, idx in zip(data.class_names, data.indices_by_class(), strict=True):
        counts = _split_counts(len(idx), fr)
        if min(counts) < 1:
            raise ValueError(_too_few_message(where, name, len(idx), fr))
        start = 0
        for split, count in zip(_SPLIT_NAMES, counts, strict=True):
            parts[split].extend(idx[start : start + count])
            start += count
    out: dict[str, LabelledImages] = {}
    for split, idx in parts.items():
        subset = data.subset(idx)
        subset.split = split
        out[split] = subset
    return out
