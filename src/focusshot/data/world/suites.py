"""FocusWorld's suites (:data:`SUITES`) and how a scene of one is drawn: :func:`sample_scene` takes all
its randomness from a numpy ``Generator``; :func:`scene_seed` gives each image of a materialised
suite its own generator and :func:`iter_batches` streams scenes from memory for pretraining.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from focusshot.data.world.classes import (
    WorldClass,
    all_classes,
    attribute_difference,
    base_classes,
    fine_classes,
    novel_classes,
)
from focusshot.data.world.draw import ObjectSpec, SceneSpec, caption_for, object_mask, render_scene_full

_MIN_TARGET_VISIBLE = 0.6  # distractors never hide more than 40% of the target
_MIN_DISTRACTOR_VISIBLE = 0.5  # and every object named in the caption stays at least half visible
_PLACEMENT_TRIES = 30


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


def resolve_suite(suite: str | SuiteConfig) -> SuiteConfig:
    """``suite`` as a :class:`SuiteConfig`: a config passes through, a name (``"clutter"`` or
    ``"world:clutter"``) is looked up in :data:`SUITES`; an unknown name raises naming the valid ones."""
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
    pool = resolve_suite(suite).pool
    if pool == "novel":
        return novel_classes()
    if pool == "base":
        return base_classes()
    if pool == "fine":
        return fine_classes()
    raise ValueError(f"unknown class pool {pool!r}; valid: novel, base, fine")


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
    every = all_classes()
    return tuple(frozenset(o.id for o in every if attribute_difference(c, o) == 1) for c in every)


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
    cfg = resolve_suite(suite)
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
    masks: list[np.ndarray] = [object_mask(tobj, size)]
    target_index = 0
    used = {tcls.id}
    for k in range(n_distractors):
        dcls = _distractor_class(rng, tcls, classes, used, cfg.similar_distractor)
        if dcls is None:
            break
        placed = False
        for _ in range(_PLACEMENT_TRIES):
            dobj = _draw_object_spec(rng, dcls, size, cfg.distractor_size)
            dmask = object_mask(dobj, size)
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
# seeds and streams


_SUITE_CODES: dict[str, int] = {"single": 1, "clutter": 2, "fine": 3, "base": 4}


def scene_seed(seed: int, suite: str | SuiteConfig, class_id: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of class ``class_id`` in a materialised ``suite``.

    Independent of how many images per class are built, so a suite built with ``per_class=3``
    holds the first three images of the one built with ``per_class=30``.
    """
    code = _SUITE_CODES.get(resolve_suite(suite).name, 0)
    return np.random.default_rng(np.random.SeedSequence([int(seed), code, int(class_id), int(index)]))


def iter_batches(
    suite: str = "world:base",
    batch_size: int = 64,
    image_size: int = 64,
    seed: int = 0,
    *,
    start: int = 0,
    backgrounds: int = 0,
) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
    """An endless stream of freshly generated scenes, never touching disk.

    Batch ``i`` depends only on ``(suite, seed, i)``; ``start`` skips to batch ``start`` (to resume).
    ``backgrounds > 0`` draws every scene's background from a fixed pool of that many (seeded by
    ``seed``) instead of a new one per scene; the objects are the same scenes as with ``0``. With
    a unique background per scene, the background tells two scenes apart better than their objects
    do, and self-supervised pretraining (world-dino) learns the background; a shared pool leaves
    the objects as what differs between scenes.

    Yields:
        ``(images, captions, labels)``: ``images`` uint8 ``(B, S, S, 3)``; ``captions`` B strings
        naming every object of each scene; ``labels`` int64 ``(B,)``, the target's index into
        :func:`suite_classes` ``(suite)``.
    """
    cfg = resolve_suite(suite)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pool = suite_classes(cfg)
    index_of = {c.id: i for i, c in enumerate(pool)}
    code = _SUITE_CODES.get(cfg.name, 0)
    if backgrounds < 0:
        raise ValueError(f"backgrounds must be >= 0, got {backgrounds}")
    shared = np.random.default_rng(np.random.SeedSequence([int(seed), code, 2_000_003]))
    bg_pool = shared.integers(0, 2**31 - 1, size=backgrounds)
    step = int(start)
    while True:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), code, 1_000_003, step]))
        bg_rng = np.random.default_rng(np.random.SeedSequence([int(seed), code, 3_000_017, step]))
        images = np.empty((batch_size, image_size, image_size, 3), dtype=np.uint8)
        captions: list[str] = []
        labels = np.empty(batch_size, dtype=np.int64)
        for b in range(batch_size):
            spec = sample_scene(rng, pool, image_size, cfg)
            if backgrounds:
                spec = replace(spec, background_seed=int(bg_pool[bg_rng.integers(backgrounds)]))
            images[b] = render_scene_full(spec).image
            captions.append(spec.caption)
            labels[b] = index_of[spec.label]
        yield images, captions, labels
        step += 1
