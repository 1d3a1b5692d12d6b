"""FocusWorld's class universe: 8 shapes x 8 colours x 4 patterns = 256 object classes, and the
fixed base/novel split.

Class splits do not depend on any data seed: a quarter of the combinations is held out as *novel*
classes for few-shot and zero-shot evaluation and the rest are *base* classes for pretraining.
Every shape, colour and pattern value, and every pair of values except the (shape, colour) pairs
of the fine-grained block, still appears among base classes, so zero-shot classification of novel
classes tests compositional generalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart")
#: Colour names and their RGB values (0-255): hue-distinct, with red / orange / pink and
#: blue / cyan / purple as the near neighbours.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (40, 165, 55),
    "cyan": (35, 200, 215),
    "blue": (40, 75, 220),
    "purple": (140, 55, 195),
    "pink": (250, 125, 195),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checked")
_COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

#: The fine-grained block: every combination of these shapes and colours (with every pattern) is
#: a novel class, and ``world:fine`` draws from these classes only.
FINE_SHAPES: tuple[str, ...] = ("circle", "hexagon")
FINE_COLOURS: tuple[str, ...] = ("red", "orange")

#: Fraction of all classes held out as novel.
NOVEL_FRACTION = 0.25
#: Seed of the (fixed) base/novel split; independent of every data seed.
SPLIT_SEED = 20240917


@dataclass(frozen=True, order=True)
class WorldClass:
    """One object class: a shape, a colour and a surface pattern.

    Attributes:
        shape: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS`.
        pattern: one of :data:`PATTERNS`.
    """

    shape: str
    colour: str
    pattern: str
    #: Stable integer id in ``0 .. 255``: ``(shape * 8 + colour) * 4 + pattern`` (value indices).
    id: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.shape, SHAPES, "shape"),
            (self.colour, _COLOUR_NAMES, "colour"),
            (self.pattern, PATTERNS, "pattern"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(allowed)}")
        s, c = SHAPES.index(self.shape), _COLOUR_NAMES.index(self.colour)
        object.__setattr__(
            self, "id", (s * len(_COLOUR_NAMES) + c) * len(PATTERNS) + PATTERNS.index(self.pattern)
        )

    @property
    def name(self) -> str:
        """``"<colour> <pattern> <shape>"``, e.g. ``"red striped star"``."""
        return f"{self.colour} {self.pattern} {self.shape}"

    @classmethod
    def from_id(cls, class_id: int) -> WorldClass:
        """Inverse of :attr:`id`."""
        return _ALL[_check_class_id(class_id)]

    @property
    def attributes(self) -> tuple[str, str, str]:
        """``(shape, colour, pattern)``."""
        return (self.shape, self.colour, self.pattern)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The nominal RGB colour (objects are rendered with a little jitter around it)."""
        return COLOURS[self.colour]

    def phrase(self) -> str:
        """The class with its indefinite article: ``"a red striped star"``, ``"an orange ..."``."""
        article = "an" if self.name[0] in "aeiou" else "a"
        return f"{article} {self.name}"


_ALL: tuple[WorldClass, ...] = tuple(
    WorldClass(s, c, p) for s in SHAPES for c in _COLOUR_NAMES for p in PATTERNS
)
_BY_NAME: dict[str, WorldClass] = {c.name: c for c in _ALL}


def _check_class_id(class_id: int) -> int:
    if isinstance(class_id, bool) or int(class_id) != class_id or not 0 <= class_id < len(_ALL):
        raise ValueError(f"class id must be an integer in 0..{len(_ALL) - 1}, got {class_id!r}")
    return int(class_id)


def all_classes() -> list[WorldClass]:
    """All 256 classes, in id order (``all_classes()[i].id == i``)."""
    return list(_ALL)


def class_by_name(name: str) -> WorldClass:
    """The class called ``name`` (``"red striped star"``)."""
    try:
        return _BY_NAME[" ".join(name.split()).lower()]
    except KeyError:
        raise ValueError(
            f"no FocusWorld class {name!r}; a name is '<colour> <pattern> <shape>' with colour in "
            f"{list(_COLOUR_NAMES)}, pattern in {list(PATTERNS)}, shape in {list(SHAPES)}"
        ) from None


def attribute_difference(a: WorldClass, b: WorldClass) -> int:
    """How many of shape, colour and pattern differ between ``a`` and ``b`` (0-3)."""
    return sum(x != y for x, y in zip(a.attributes, b.attributes, strict=True))


def _covers_pairs(base: Sequence[WorldClass], skip_shape_colour: set[tuple[str, str]]) -> bool:
    """Every attribute value and every pair of values (bar ``skip_shape_colour``) occurs in ``base``."""
    sc = {(c.shape, c.colour) for c in base}
    sp = {(c.shape, c.pattern) for c in base}
    cp = {(c.colour, c.pattern) for c in base}
    if {c.shape for c in base} != set(SHAPES) or {c.colour for c in base} != set(_COLOUR_NAMES):
        return False
    if {c.pattern for c in base} != set(PATTERNS):
        return False
    want_sc = {(s, c) for s in SHAPES for c in _COLOUR_NAMES} - skip_shape_colour
    want_sp = {(s, p) for s in SHAPES for p in PATTERNS}
    want_cp = {(c, p) for c in _COLOUR_NAMES for p in PATTERNS}
    return want_sc <= sc and want_sp <= sp and want_cp <= cp


def _balanced_draw(
    rng: np.random.Generator, candidates: Sequence[WorldClass], quota: Mapping[str, int], n: int
) -> list[WorldClass] | None:
    """``n`` distinct random candidates with at most ``quota[value]`` of each attribute value; ``None``
    when the random greedy draw runs into a dead end."""
    left = dict(quota)
    chosen: list[WorldClass] = []
    pool = list(candidates)
    while len(chosen) < n:
        ok = [c for c in pool if all(left[a] > 0 for a in c.attributes)]
        if not ok:
            return None
        pick = ok[int(rng.integers(len(ok)))]
        chosen.append(pick)
        pool.remove(pick)
        for a in pick.attributes:
            left[a] -= 1
    return chosen


@functools.lru_cache(maxsize=1)
def _split() -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(base ids, novel ids, fine ids), sorted; fixed by :data:`SPLIT_SEED`.

    The novel set is the fine-grained block plus a random draw from the other shapes and colours,
    balanced so that every shape and every colour has 8 novel classes and every pattern 16.
    """
    fine = [c for c in _ALL if c.shape in FINE_SHAPES and c.colour in FINE_COLOURS]
    n_novel = round(NOVEL_FRACTION * len(_ALL))
    quota: dict[str, int] = {}
    for values in (SHAPES, _COLOUR_NAMES, PATTERNS):
        for v in values:
            quota[v] = n_novel // len(values)
    for c in fine:
        for a in c.attributes:
            quota[a] -= 1
    candidates = [c for c in _ALL if c not in fine]
    skip = {(s, c) for s in FINE_SHAPES for c in FINE_COLOURS}
    rng = np.random.default_rng(SPLIT_SEED)
    for _ in range(1000):
        extra = _balanced_draw(rng, candidates, quota, n_novel - len(fine))
        if extra is None:
            continue
        novel = {c.id for c in fine} | {c.id for c in extra}
        base = [c for c in _ALL if c.id not in novel]
        if _covers_pairs(base, skip):
            return tuple(c.id for c in base), tuple(sorted(novel)), tuple(c.id for c in fine)
    raise RuntimeError("could not draw a balanced base/novel split that keeps every attribute pair in base")


def base_classes() -> list[WorldClass]:
    """The 192 base classes (pretraining), in id order."""
    return [_ALL[i] for i in _split()[0]]


def novel_classes() -> list[WorldClass]:
    """The 64 novel classes (few-shot and zero-shot evaluation), in id order."""
    return [_ALL[i] for i in _split()[1]]


def fine_classes() -> list[WorldClass]:
    """The 16 novel classes of the fine-grained block (:data:`FINE_SHAPES` x :data:`FINE_COLOURS`
    x every pattern), in id order. Each has 1 + 1 + 3 = 5 others in the block that differ from it in
    one attribute only."""
    return [_ALL[i] for i in _split()[2]]


def caption_vocabulary() -> list[str]:
    """Every word a FocusWorld caption can contain, sorted."""
    return sorted({"a", "an", "and", *SHAPES, *_COLOUR_NAMES, *PATTERNS})
