"""FocusWorld: procedurally generated scenes in which we know exactly which pixels decide the class.

No pretrained ViT or CLIP weights can be installed on our build machines, so focusshot brings its
own world. An *object class* is a combination of a shape, a colour and a surface pattern
(8 x 8 x 4 = 256 classes, see :class:`WorldClass`); a *scene* is a textured background with one
*target* object of the label class and optionally a few *distractor* objects of other classes,
which may partially occlude it. Every scene comes with the target's pixel mask, its box, the
distractors' classes and boxes, and a caption naming every object.

Everything is deterministic from a seed and needs no file: :func:`sample_scene` draws a
:class:`SceneSpec` (all that is needed to render one image) from a numpy ``Generator`` and
:func:`render_scene` turns it into pixels with numpy and PIL only (vectorised; thousands of
64 x 64 scenes per second on one core).

Class splits are fixed (they do not depend on the data seed): a quarter of the combinations is
held out as *novel* classes for few-shot and zero-shot evaluation and the rest are *base* classes
for pretraining. Every shape, colour and pattern value, and every pair of values except the
(shape, colour) pairs of the fine-grained block, still appears among base classes, so zero-shot
classification of novel classes tests compositional generalisation.

Suites (see :data:`SUITES`):

* ``world:single``: one object on a textured background, novel classes;
* ``world:clutter``: the target plus 1-4 distractors of other novel classes (often sharing a
  shape, colour or pattern with it), smaller objects, partial occlusion;
* ``world:fine``: one object, restricted to the *fine-grained block* of novel classes (two
  similar shapes x two similar colours x all patterns), where each class has five others one
  attribute away and only one pair in five differs in all three;
* ``world:base``: base classes, 0-4 distractors, for pretraining (captions name every object).

Materialised suites (:func:`build_world`, :func:`open_world`, and ``open_source("world:...")``)
are folders of PNG images, a ``<image>.mask.npy`` target mask beside each image, and a
``manifest.jsonl``; :func:`iter_batches` streams scenes from memory for pretraining.

This module knows nothing of models (``data`` never imports backbones).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from focusshot.data.sources import LabelledImages

__all__ = [
    "COLOURS",
    "FINE_COLOURS",
    "FINE_SHAPES",
    "GENERATOR_VERSION",
    "PATTERNS",
    "SHAPES",
    "SUITES",
    "ObjectSpec",
    "RenderedScene",
    "SceneSpec",
    "SuiteConfig",
    "WorldClass",
    "all_classes",
    "attribute_difference",
    "base_classes",
    "build_world",
    "caption_vocabulary",
    "class_by_name",
    "fine_classes",
    "iter_batches",
    "mask_for",
    "novel_classes",
    "open_world",
    "parse_world_spec",
    "render_scene",
    "render_scene_full",
    "sample_scene",
    "scene_seed",
    "suite_classes",
    "world_cache_root",
]

#: Bumped whenever a change to this module changes generated pixels, captions or splits; part of
#: the settings a materialised suite is checked against, so stale caches are rebuilt.
GENERATOR_VERSION = 1

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

# Appearance constants, in units of image_size / 64 pixels where they are lengths.
_SUPERSAMPLE = 2  # antialiasing: samples per pixel side
_STRIPE_PERIOD = 5.0
_DOT_PERIOD = 5.5
_DOT_RADIUS = 1.55
_CHECK_CELL = 3.5
_PATTERN_SHADE = 0.32  # the pattern's second colour is the object's colour times this
_MIN_TARGET_VISIBLE = 0.6  # distractors never hide more than 40% of the target
_MIN_DISTRACTOR_VISIBLE = 0.5  # and every object named in the caption stays at least half visible
_PLACEMENT_TRIES = 30


# --------------------------------------------------------------------------------------------
# classes


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


# --------------------------------------------------------------------------------------------
# suites


@dataclass(frozen=True)
class SuiteConfig:
    """How one suite draws its scenes.

    Attributes:
        name: the suite's name without the ``world:`` prefix.
        pool: ``"novel"``, ``"base"`` or ``"fine"``: the classes of targets and distractors.
        distractors: inclusive range of the number of distractor objects.
        target_size: range of the target's diameter, as a fraction of the image side.
        distractor_size: range of a distractor's diameter, as a fraction of the image side.
        similar_distractor: probability that a distractor's class differs from the target's in
            one attribute only (when the pool has such a class); otherwise any other class.
        help: one line for listings.
    """

    name: str
    pool: str
    distractors: tuple[int, int]
    target_size: tuple[float, float]
    distractor_size: tuple[float, float]
    similar_distractor: float = 0.0
    help: str = ""


SUITES: dict[str, SuiteConfig] = {
    "single": SuiteConfig(
        "single", "novel", (0, 0), (0.34, 0.6), (0.2, 0.3), help="one object, novel classes"
    ),
    "clutter": SuiteConfig(
        "clutter",
        "novel",
        (1, 4),
        (0.28, 0.44),
        (0.2, 0.36),
        similar_distractor=0.5,
        help="target + 1-4 distractors (often one attribute away), occlusion, novel classes",
    ),
    "fine": SuiteConfig(
        "fine",
        "fine",
        (0, 0),
        (0.34, 0.6),
        (0.2, 0.3),
        help="one object; 16 novel classes (2 similar shapes x 2 similar colours x 4 patterns)",
    ),
    "base": SuiteConfig(
        "base",
        "base",
        (0, 4),
        (0.28, 0.5),
        (0.2, 0.38),
        similar_distractor=0.3,
        help="base classes, 0-4 distractors, captions name every object (pretraining)",
    ),
}


def _suite(suite: str | SuiteConfig) -> SuiteConfig:
    if isinstance(suite, SuiteConfig):
        return suite
    name = suite[len("world:") :] if suite.startswith("world:") else suite
    try:
        return SUITES[name]
    except KeyError:
        valid = ", ".join(f"world:{k}" for k in SUITES)
        raise ValueError(f"unknown FocusWorld suite {suite!r}; valid: {valid}") from None


def suite_classes(suite: str | SuiteConfig) -> list[WorldClass]:
    """The class pool of ``suite`` in id order; a materialised suite's labels index this list."""
    pool = _suite(suite).pool
    if pool == "novel":
        return novel_classes()
    if pool == "base":
        return base_classes()
    if pool == "fine":
        return fine_classes()
    raise ValueError(f"unknown class pool {pool!r}; valid: novel, base, fine")


# --------------------------------------------------------------------------------------------
# scene specification


@dataclass(frozen=True)
class ObjectSpec:
    """One object in a scene (pixel units, origin at the image's top-left corner).

    Attributes:
        class_id: the object's :attr:`WorldClass.id`.
        cx, cy: centre in pixels.
        radius: half the object's diameter in pixels; the shape lies inside this circle.
        angle: rotation in radians (counter-clockwise on screen).
        phase: ``(du, dv)`` offset of the surface pattern, in pixels.
        tone: ``(r, g, b)`` multipliers applied to the class colour (small jitter around 1).
    """

    class_id: int
    cx: float
    cy: float
    radius: float
    angle: float
    phase: tuple[float, float]
    tone: tuple[float, float, float]

    @property
    def world_class(self) -> WorldClass:
        return _ALL[self.class_id]


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render one scene deterministically.

    Attributes:
        image_size: side of the square image in pixels.
        objects: the objects in drawing order (later ones are on top).
        target_index: position of the target in :attr:`objects`.
        background_seed: seed of the background texture and the pixel noise.
        caption: a caption naming every object, in random order.
    """

    image_size: int
    objects: tuple[ObjectSpec, ...]
    target_index: int
    background_seed: int
    caption: str

    @property
    def target(self) -> ObjectSpec:
        return self.objects[self.target_index]

    @property
    def label(self) -> int:
        """The target's class id (:attr:`WorldClass.id`)."""
        return self.target.class_id

    @property
    def distractors(self) -> list[ObjectSpec]:
        """The non-target objects, in drawing order."""
        return [o for i, o in enumerate(self.objects) if i != self.target_index]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` restores the spec exactly."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SceneSpec:
        objects = tuple(
            ObjectSpec(
                class_id=int(o["class_id"]),
                cx=float(o["cx"]),
                cy=float(o["cy"]),
                radius=float(o["radius"]),
                angle=float(o["angle"]),
                phase=(float(o["phase"][0]), float(o["phase"][1])),
                tone=(float(o["tone"][0]), float(o["tone"][1]), float(o["tone"][2])),
            )
            for o in d["objects"]
        )
        return cls(
            image_size=int(d["image_size"]),
            objects=objects,
            target_index=int(d["target_index"]),
            background_seed=int(d["background_seed"]),
            caption=str(d["caption"]),
        )


def caption_for(classes: Sequence[WorldClass]) -> str:
    """``"a red striped star and a blue plain circle"``: the classes joined with ``and`` in order."""
    return " and ".join(c.phrase() for c in classes)


# --------------------------------------------------------------------------------------------
# rasterising shapes


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of object-frame points (``v`` up, unit circle = the object's extent) -> bool."""
    if shape == "circle":
        return u * u + v * v <= 0.93**2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.68
    if shape == "diamond":
        return np.abs(u) / 0.64 + np.abs(v) / 0.98 <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.9)) | ((av <= 0.3) & (au <= 0.9))
    if shape in ("triangle", "hexagon"):
        n, circum = (3, 1.0) if shape == "triangle" else (6, 0.95)
        # Regular n-gon with a vertex at the top: distance along the nearest edge normal.
        theta = np.arctan2(v, u) - (math.pi / 2 + math.pi / n)
        step = 2 * math.pi / n
        phi = np.mod(theta + step / 2, step) - step / 2
        return np.hypot(u, v) * np.cos(phi) <= circum * math.cos(math.pi / n)
    if shape == "star":
        outer, inner = 1.0, 0.47
        step = 2 * math.pi / 5
        theta = np.arctan2(v, u) - math.pi / 2
        phi = np.abs(np.mod(theta + step / 2, step) - step / 2)
        rho = np.hypot(u, v)
        px, py = rho * np.cos(phi), rho * np.sin(phi)
        # Edge from the outer vertex (outer, 0) to the inner vertex at angle step / 2.
        bx, by = inner * math.cos(step / 2), inner * math.sin(step / 2)
        nx, ny = by, outer - bx  # normal of the edge, pointing away from the centre
        return (px - outer) * nx + py * ny <= 0.0
    if shape == "heart":
        x = u * 1.32
        y = v * 1.32 + 0.18
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _pattern_mask(pattern: str, pu: np.ndarray, pv: np.ndarray, unit: float) -> np.ndarray | None:
    """Where the pattern's second colour shows, at object-frame pixel coordinates; ``None``: nowhere."""
    if pattern == "plain":
        return None
    if pattern == "striped":
        period = _STRIPE_PERIOD * unit
        return np.mod((pu + pv) * (1 / math.sqrt(2)), period) < period / 2
    if pattern == "dotted":
        period = _DOT_PERIOD * unit
        du = np.mod(pu, period) - period / 2
        dv = np.mod(pv, period) - period / 2
        return du * du + dv * dv <= (_DOT_RADIUS * unit) ** 2
    if pattern == "checked":
        cell = _CHECK_CELL * unit
        return (np.floor(pu / cell) + np.floor(pv / cell)).astype(np.int64) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}; valid: {', '.join(PATTERNS)}")


def _region(obj: ObjectSpec, size: int) -> tuple[int, int, int, int]:
    """Pixel rows/cols ``(y0, y1, x0, x1)`` (end exclusive) that can hold ``obj``, clipped."""
    r = obj.radius + 1.0
    x0, x1 = max(0, math.floor(obj.cx - r)), min(size, math.ceil(obj.cx + r))
    y0, y1 = max(0, math.floor(obj.cy - r)), min(size, math.ceil(obj.cy + r))
    return y0, y1, x0, x1


def _object_frame(
    obj: ObjectSpec, ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image points -> object frame: unit coords ``(u, v)`` (``v`` up) and pixel coords ``(pu, pv)``."""
    dx, dy = xs - obj.cx, obj.cy - ys  # dy: up is positive
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    pu = c * dx + s * dy
    pv = -s * dx + c * dy
    inv = 1.0 / obj.radius
    return pu * inv, pv * inv, pu + obj.phase[0], pv + obj.phase[1]


def _object_mask(obj: ObjectSpec, size: int) -> np.ndarray:
    """The object's full (unoccluded) mask ``(size, size)`` bool: the pixels whose centre is inside.

    This one definition serves the occlusion checks of :func:`sample_scene` and the masks and boxes
    of :func:`render_scene_full`, so the two always agree."""
    y0, y1, x0, x1 = _region(obj, size)
    out = np.zeros((size, size), dtype=bool)
    if y1 <= y0 or x1 <= x0:
        return out
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    u, v, _, _ = _object_frame(obj, ys, xs)
    out[y0:y1, x0:x1] = _inside(obj.world_class.shape, u, v)
    return out


def _draw_object(canvas: np.ndarray, obj: ObjectSpec, unit: float) -> np.ndarray:
    """Composite ``obj`` onto ``canvas`` ``(S, S, 3)`` float32 in place (antialiased with
    ``_SUPERSAMPLE**2`` samples per pixel); returns its full mask (:func:`_object_mask`)."""
    size = canvas.shape[0]
    y0, y1, x0, x1 = _region(obj, size)
    mask = _object_mask(obj, size)
    if y1 <= y0 or x1 <= x0:
        return mask
    ss = _SUPERSAMPLE
    offsets = (np.arange(ss, dtype=np.float32) + 0.5) / ss
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + offsets[None, :]).reshape(-1, 1)
    xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + offsets[None, :]).reshape(1, -1)
    u, v, pu, pv = _object_frame(obj, ys, xs)
    cls = obj.world_class
    inside = _inside(cls.shape, u, v)
    h, w = y1 - y0, x1 - x0
    colour = np.asarray(cls.rgb, dtype=np.float32) * np.asarray(obj.tone, dtype=np.float32)
    colour = np.clip(colour, 0, 255)
    alpha = inside.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)
    pat = _pattern_mask(cls.pattern, pu, pv, unit)
    if pat is None:
        premul = alpha[..., None] * colour
    else:
        dark = (inside & pat).reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)
        premul = (alpha - dark)[..., None] * colour + dark[..., None] * (colour * _PATTERN_SHADE)
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - alpha[..., None]
    region += premul
    return mask


# --------------------------------------------------------------------------------------------
# background


@functools.lru_cache(maxsize=64)
def _upsample_matrix(n: int, size: int) -> np.ndarray:
    """``(size, n)`` bilinear interpolation weights from ``n`` grid knots to ``size`` pixels."""
    pos = (np.arange(size) + 0.5) / size * (n - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
    frac = pos - lo
    m = np.zeros((size, n), dtype=np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] += frac
    return m


def _smooth_noise(rng: np.random.Generator, knots: int, size: int) -> np.ndarray:
    """Smooth random field ``(size, size, 3)`` float32 with unit-variance knots."""
    m = _upsample_matrix(knots, size)
    k = rng.standard_normal((3, knots, knots)).astype(np.float32)
    return (m @ k @ m.T).transpose(1, 2, 0)


@functools.lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.arange(size, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(size, dtype=np.float32)[None, :] + 0.5
    return ys, xs


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background ``(size, size, 3)`` float32 in 0-255: tinted grey, a gradient, smooth
    noise at two scales, faint blobs and lines. Low saturation, so that colour belongs to objects."""
    ys, xs = _pixel_grid(size)
    unit = size / 64.0
    base = (rng.uniform(70, 185) + rng.normal(0.0, 10.0, 3)).astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    grey = (xs * math.cos(ang) + ys * math.sin(ang)) * np.float32(rng.uniform(0, 50) / size)
    for _ in range(int(rng.integers(0, 4))):  # blobs
        cy, cx = rng.uniform(0, size, 2)
        inv = np.float32(1.0 / (2 * (rng.uniform(0.06, 0.25) * size) ** 2))
        amp = np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(8, 25))
        grey = grey + amp * np.exp(-(((ys - cy) ** 2 + (xs - cx) ** 2) * inv))
    for _ in range(int(rng.integers(0, 4))):  # lines
        py, px = rng.uniform(0, size, 2)
        theta = rng.uniform(0, math.pi)
        d = np.abs((xs - px) * math.sin(theta) - (ys - py) * math.cos(theta))
        width = rng.uniform(0.5, 1.4) * unit
        amp = np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(10, 30))
        grey = grey + amp * np.clip(1.0 - d * np.float32(1.0 / width), 0.0, 1.0)
    noise = _smooth_noise(rng, 5, size) * np.float32(rng.uniform(3, 12))
    noise += _smooth_noise(rng, 17, size) * np.float32(rng.uniform(1, 6))
    noise += grey[..., None]
    noise += base
    return noise


# --------------------------------------------------------------------------------------------
# sampling scenes


def _draw_object_spec(
    rng: np.random.Generator, cls: WorldClass, size: int, diameter: tuple[float, float]
) -> ObjectSpec:
    radius = 0.5 * size * rng.uniform(*diameter)
    margin = radius + 0.5
    cx, cy = rng.uniform(margin, size - margin, 2)
    if cls.shape == "circle":
        angle = rng.uniform(-math.pi, math.pi)  # rotation only turns the pattern
    else:
        angle = rng.uniform(-0.4, 0.4)  # keep squares square and diamonds diamonds
    phase = rng.uniform(0, 16, 2)
    tone = np.clip(rng.uniform(0.86, 1.1) + rng.normal(0.0, 0.04, 3), 0.7, 1.25)
    return ObjectSpec(
        class_id=cls.id,
        cx=float(cx),
        cy=float(cy),
        radius=float(radius),
        angle=float(angle),
        phase=(float(phase[0]), float(phase[1])),
        tone=(float(tone[0]), float(tone[1]), float(tone[2])),
    )


def _visible_fractions(masks: Sequence[np.ndarray]) -> list[float]:
    """Visible fraction of each full mask under the masks drawn after it (``masks`` in draw order)."""
    out = [0.0] * len(masks)
    above = np.zeros_like(masks[0])
    for i in range(len(masks) - 1, -1, -1):
        area = int(masks[i].sum())
        out[i] = float((masks[i] & ~above).sum()) / area if area else 0.0
        above |= masks[i]
    return out


@functools.lru_cache(maxsize=1)
def _neighbours() -> tuple[frozenset[int], ...]:
    """For each class id, the ids of the classes one attribute away from it."""
    return tuple(frozenset(o.id for o in _ALL if attribute_difference(c, o) == 1) for c in _ALL)


def _distractor_class(
    rng: np.random.Generator, target: WorldClass, pool: Sequence[WorldClass], used: set[int], similar: float
) -> WorldClass | None:
    others = [c for c in pool if c.id not in used]
    if not others:
        return None
    if similar > 0 and rng.random() < similar:
        close = _neighbours()[target.id]
        near = [c for c in others if c.id in close]
        if near:
            return near[int(rng.integers(len(near)))]
    return others[int(rng.integers(len(others)))]


def sample_scene(
    rng: np.random.Generator,
    classes: Sequence[WorldClass],
    image_size: int = 64,
    suite: str | SuiteConfig = "world:single",
    *,
    target: WorldClass | int | None = None,
) -> SceneSpec:
    """Draw one scene of ``suite`` with all randomness from ``rng``.

    Args:
        rng: the source of randomness; the same generator state gives the same scene.
        classes: the class pool; distractors are drawn from it (never the target's class, and no
            class twice in one scene).
        image_size: side of the square image in pixels.
        suite: a suite name (``"world:clutter"``) or a :class:`SuiteConfig`; sets the number of
            distractors, the object sizes and how often a distractor is one attribute away from
            the target.
        target: the target's class (or class id); drawn uniformly from ``classes`` when ``None``.

    The target is at least 60% visible, every distractor at least 50% (a distractor that cannot be
    placed so after a few tries is left out; the suite's minimum count is kept when possible).
    """
    cfg = _suite(suite)
    size = int(image_size)
    if size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if not classes:
        raise ValueError("classes is empty")
    if target is None:
        tcls = classes[int(rng.integers(len(classes)))]
    else:
        tcls = target if isinstance(target, WorldClass) else WorldClass.from_id(target)
    bg_seed = int(rng.integers(0, 2**31 - 1))
    lo, hi = cfg.distractors
    n_distractors = int(rng.integers(lo, hi + 1))

    tobj = _draw_object_spec(rng, tcls, size, cfg.target_size)
    objects: list[ObjectSpec] = [tobj]
    masks: list[np.ndarray] = [_object_mask(tobj, size)]
    target_index = 0
    used = {tcls.id}
    for k in range(n_distractors):
        dcls = _distractor_class(rng, tcls, classes, used, cfg.similar_distractor)
        if dcls is None:
            break
        placed = False
        for _ in range(_PLACEMENT_TRIES):
            dobj = _draw_object_spec(rng, dcls, size, cfg.distractor_size)
            dmask = _object_mask(dobj, size)
            pos = int(rng.integers(0, len(objects) + 1))  # drawing order
            trial_masks = [*masks[:pos], dmask, *masks[pos:]]
            t_idx = target_index + (1 if pos <= target_index else 0)
            vis = _visible_fractions(trial_masks)
            if vis[t_idx] >= _MIN_TARGET_VISIBLE and all(
                f >= _MIN_DISTRACTOR_VISIBLE for i, f in enumerate(vis) if i != t_idx
            ):
                objects.insert(pos, dobj)
                masks = trial_masks
                target_index = t_idx
                used.add(dcls.id)
                placed = True
                break
        if not placed and k >= lo:
            break
    named = [o.world_class for o in objects]
    order = rng.permutation(len(named))
    caption = caption_for([named[i] for i in order])
    return SceneSpec(
        image_size=size,
        objects=tuple(objects),
        target_index=target_index,
        background_seed=bg_seed,
        caption=caption,
    )


# --------------------------------------------------------------------------------------------
# rendering


@dataclass
class RenderedScene:
    """A rendered scene and its annotations.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB.
        target_mask: ``(S, S)`` bool, the visible pixels of the target.
        masks: ``(len(objects), S, S)`` bool, the visible pixels of each object (spec order).
        boxes: one box ``(x0, y0, x1, y1)`` per object (spec order): the tight box of its visible
            pixels, in pixel coordinates with exclusive ends (a pixel ``(x, y)`` spans
            ``[x, x + 1) x [y, y + 1)``).
        visible: the visible fraction of each object (spec order).
    """

    image: np.ndarray
    target_mask: np.ndarray
    masks: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    visible: list[float]


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def render_scene_full(spec: SceneSpec) -> RenderedScene:
    """Render ``spec`` (deterministic) with masks, boxes and visible fractions of every object."""
    size = spec.image_size
    rng = np.random.default_rng(spec.background_seed)
    canvas = _background(rng, size)
    unit = size / 64.0
    full = [_draw_object(canvas, obj, unit) for obj in spec.objects]
    noise_sigma = rng.uniform(1.5, 5.0)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(noise_sigma)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    visible = np.zeros((len(full), size, size), dtype=bool)
    above = np.zeros((size, size), dtype=bool)
    fractions = [0.0] * len(full)
    for i in range(len(full) - 1, -1, -1):
        visible[i] = full[i] & ~above
        area = int(full[i].sum())
        fractions[i] = float(visible[i].sum()) / area if area else 0.0
        above |= full[i]
    boxes = [_mask_box(m) for m in visible]
    return RenderedScene(image, visible[spec.target_index].copy(), visible, boxes, fractions)


def render_scene(spec: SceneSpec) -> tuple[Image.Image, np.ndarray]:
    """Render ``spec``: the RGB image and the target's visible-pixel mask ``(S, S)`` bool."""
    out = render_scene_full(spec)
    return Image.fromarray(out.image, "RGB"), out.target_mask


# --------------------------------------------------------------------------------------------
# seeds and streams


_SUITE_CODES: dict[str, int] = {"single": 1, "clutter": 2, "fine": 3, "base": 4}


def scene_seed(seed: int, suite: str | SuiteConfig, class_id: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of class ``class_id`` in a materialised ``suite``.

    Independent of how many images per class are built, so a suite built with ``per_class=3``
    holds the first three images of the one built with ``per_class=30``.
    """
    code = _SUITE_CODES.get(_suite(suite).name, 0)
    return np.random.default_rng(np.random.SeedSequence([int(seed), code, int(class_id), int(index)]))


def iter_batches(
    suite: str = "world:base",
    batch_size: int = 64,
    image_size: int = 64,
    seed: int = 0,
    *,
    start: int = 0,
) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
    """An endless stream of freshly generated scenes, never touching disk.

    Batch ``i`` depends only on ``(suite, seed, i)``; ``start`` skips to batch ``start`` (to resume).

    Yields:
        ``(images, captions, labels)``: ``images`` uint8 ``(B, S, S, 3)``; ``captions`` B strings
        naming every object of each scene; ``labels`` int64 ``(B,)``, the target's index into
        :func:`suite_classes` ``(suite)``.
    """
    cfg = _suite(suite)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pool = suite_classes(cfg)
    index_of = {c.id: i for i, c in enumerate(pool)}
    code = _SUITE_CODES.get(cfg.name, 0)
    step = int(start)
    while True:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), code, 1_000_003, step]))
        images = np.empty((batch_size, image_size, image_size, 3), dtype=np.uint8)
        captions: list[str] = []
        labels = np.empty(batch_size, dtype=np.int64)
        for b in range(batch_size):
            spec = sample_scene(rng, pool, image_size, cfg)
            images[b] = render_scene_full(spec).image
            captions.append(spec.caption)
            labels[b] = index_of[spec.label]
        yield images, captions, labels
        step += 1


# --------------------------------------------------------------------------------------------
# materialised suites


_MANIFEST = "manifest.jsonl"
_SETTINGS = "world.json"
_MASK_SUFFIX = ".mask.npy"
_MARKER = ".focusshot-world"  # marks a folder whose images/ this module may replace


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def mask_for(path: str | os.PathLike[str]) -> np.ndarray:
    """The target mask ``(H, W)`` bool of a generated image (stored beside it as ``<stem>.mask.npy``)."""
    p = Path(os.fspath(path))
    mpath = p.with_name(p.stem + _MASK_SUFFIX)
    if not mpath.is_file():
        raise FileNotFoundError(f"{p}: no target mask {mpath.name} beside it (not a FocusWorld image?)")
    return np.load(mpath, allow_pickle=False).astype(bool, copy=False)


def _settings(suite: SuiteConfig, image_size: int, per_class: int, seed: int) -> dict[str, Any]:
    return {
        "suite": f"world:{suite.name}",
        "image_size": int(image_size),
        "per_class": int(per_class),
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
        "suite_config": asdict(suite),
    }


def _read_built(root: Path, settings: Mapping[str, Any]) -> LabelledImages | None:
    """The materialised suite in ``root`` when it is complete and built with ``settings``."""
    spath, mpath = root / _SETTINGS, root / _MANIFEST
    if not (spath.is_file() and mpath.is_file()):
        return None
    try:
        stored = json.loads(spath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("settings") != json.loads(json.dumps(settings)):
        return None
    pool = suite_classes(str(settings["suite"]))
    names = [c.name for c in pool]
    index = {n: i for i, n in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    boxes: list[tuple[float, float, float, float] | None] = []
    with open(mpath, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            full = root / row["path"]
            if row["label"] not in index or not full.is_file():
                return None
            paths.append(str(full))
            labels.append(index[row["label"]])
            boxes.append(tuple(float(v) for v in row["box"]))  # type: ignore[arg-type]
    if len(paths) != stored.get("count"):
        return None
    return LabelledImages(paths=paths, labels=labels, class_names=names, boxes=boxes, split=None)


def build_world(
    suite: str,
    root: str | os.PathLike[str],
    image_size: int = 64,
    per_class: int = 30,
    seed: int = 0,
) -> LabelledImages:
    """Materialise ``suite`` into the folder ``root`` and return it as :class:`LabelledImages`.

    Writes ``root/images/<class_name>/<index>.png``, the target mask beside each image as
    ``<index>.mask.npy`` (``(S, S)`` bool; read it with :func:`mask_for`), ``root/manifest.jsonl``
    (one JSON object per image: ``path`` relative to ``root``, ``label`` (the class name),
    ``class_id``, ``box`` of the target, ``caption``, ``distractors`` (class id, name and box of
    each), ``mask``, ``scene`` (the :class:`SceneSpec` as a dict)) and ``root/world.json`` (the
    settings, written last) and a marker file ``.focusshot-world``. A folder already holding a
    complete build with the same settings is reused as it is; a build with other settings (or an
    interrupted one) is replaced.

    The returned set's ``class_names`` are the suite's class names in id order
    (:func:`suite_classes`), ``labels`` index them, and ``boxes`` are the target boxes.

    Raises:
        FileExistsError: ``root`` has an ``images`` folder that this function did not make.
    """
    cfg = _suite(suite)
    if isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be an integer of at least 16, got {image_size!r}")
    root = Path(os.path.abspath(os.fspath(root)))
    settings = _settings(cfg, int(image_size), int(per_class), int(seed))
    found = _read_built(root, settings)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):  # processes (ranks of one job) asking for one suite: one builds it
        found = _read_built(root, settings)
        if found is not None:
            return found
        return _build(cfg, root, settings, int(image_size), int(per_class), int(seed))


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``root/.lock`` (POSIX; held until the block ends)."""
    import fcntl

    with open(root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    cfg: SuiteConfig, root: Path, settings: dict[str, Any], image_size: int, per_class: int, seed: int
) -> LabelledImages:
    """Write the suite into ``root`` (the caller holds the build lock)."""
    images_dir = root / "images"
    marker = root / _MARKER
    if images_dir.exists() and not marker.is_file():
        raise FileExistsError(
            f"{root}: holds an 'images' folder that no FocusWorld build made; "
            "choose an empty or FocusWorld-only folder"
        )
    marker.touch()
    (root / _SETTINGS).unlink(missing_ok=True)  # incomplete until the settings are written again
    (root / _MANIFEST).unlink(missing_ok=True)
    if images_dir.is_dir():
        shutil.rmtree(images_dir)
    pool = suite_classes(cfg)
    width = max(3, len(str(per_class - 1)))
    rows: list[str] = []
    for cls in pool:
        folder = images_dir / _slug(cls.name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(int(per_class)):
            spec = sample_scene(scene_seed(seed, cfg, cls.id, i), pool, int(image_size), cfg, target=cls)
            out = render_scene_full(spec)
            stem = f"{i:0{width}d}"
            Image.fromarray(out.image, "RGB").save(folder / f"{stem}.png", compress_level=1)
            np.save(folder / f"{stem}{_MASK_SUFFIX}", out.target_mask, allow_pickle=False)
            rel = f"images/{_slug(cls.name)}/{stem}"
            distractors = [
                {"class_id": o.class_id, "name": o.world_class.name, "box": list(out.boxes[j])}
                for j, o in enumerate(spec.objects)
                if j != spec.target_index
            ]
            row = {
                "path": f"{rel}.png",
                "label": cls.name,
                "class_id": cls.id,
                "box": list(out.boxes[spec.target_index]),
                "caption": spec.caption,
                "distractors": distractors,
                "mask": f"{rel}{_MASK_SUFFIX}",
                "scene": spec.to_dict(),
            }
            rows.append(json.dumps(row, separators=(",", ":")))
    tmp = root / (_MANIFEST + ".tmp")
    tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    os.replace(tmp, root / _MANIFEST)
    stmp = root / (_SETTINGS + ".tmp")
    stmp.write_text(json.dumps({"settings": settings, "count": len(rows)}, indent=2) + "\n", encoding="utf-8")
    os.replace(stmp, root / _SETTINGS)
    found = _read_built(root, settings)
    if found is None:  # pragma: no cover - would mean a bug in the writer above
        raise RuntimeError(f"{root}: the suite just built could not be read back")
    return found


# --------------------------------------------------------------------------------------------
# specs and the cache


_OPTION_ALIASES: dict[str, str] = {"size": "image_size", "image_size": "image_size"}
_OPTIONS: tuple[str, ...] = ("size", "image_size", "per_class", "seed")


def parse_world_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``"world:clutter?size=64&per_class=30&seed=0"`` -> ``("world:clutter", {"image_size": 64,
    "per_class": 30, "seed": 0})`` (defaults filled in). Unknown suites or options raise
    ``ValueError`` naming the valid ones."""
    if not isinstance(spec, str) or not spec.startswith("world:"):
        raise ValueError(f"a FocusWorld spec starts with 'world:', got {spec!r}")
    name, _, query = spec.partition("?")
    cfg = _suite(name)
    options = {"image_size": 64, "per_class": 30, "seed": 0}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in _OPTIONS:
            raise ValueError(f"{spec}: unknown option {key!r}; valid options: {', '.join(_OPTIONS)}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{spec}: option {key!r} needs an integer, got {value!r}") from None
        options[_OPTION_ALIASES.get(key, key)] = number
    return f"world:{cfg.name}", options


def world_cache_root() -> Path:
    """``$FOCUSSHOT_CACHE/world`` when the variable is set, else ``~/.cache/focusshot/world``."""
    env = os.environ.get("FOCUSSHOT_CACHE")
    base = Path(env).expanduser() if env else Path("~/.cache/focusshot").expanduser()
    return base / "world"


def open_world(spec: str, cache_root: str | os.PathLike[str] | None = None) -> LabelledImages:
    """Open a FocusWorld suite by spec, building it into the cache on first use.

    ``spec`` is ``world:<suite>`` with optional options ``?size=64&per_class=30&seed=0``. The suite
    lives in ``<cache_root>/<suite>-s<size>-n<per_class>-seed<seed>`` (default cache root:
    :func:`world_cache_root`).
    """
    suite, opts = parse_world_spec(spec)
    root = Path(os.fspath(cache_root)).expanduser() if cache_root is not None else world_cache_root()
    folder = root / f"{suite[len('world:') :]}-s{opts['image_size']}-n{opts['per_class']}-seed{opts['seed']}"
    return build_world(
        suite, folder, image_size=opts["image_size"], per_class=opts["per_class"], seed=opts["seed"]
    )
