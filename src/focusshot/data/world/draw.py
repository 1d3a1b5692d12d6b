"""Scenes as data and as pixels: :class:`ObjectSpec` and :class:`SceneSpec` say everything needed to
render one image, and :func:`render_scene_full` turns a spec into pixels (numpy and PIL only,
vectorised) with the mask, box and visible fraction of every object.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from focusshot.data.world.classes import PATTERNS, SHAPES, WorldClass

# Appearance constants, in units of image_size / 64 pixels where they are lengths.
_SUPERSAMPLE = 2  # antialiasing: samples per pixel side
_STRIPE_PERIOD = 5.0
_DOT_PERIOD = 5.5
_DOT_RADIUS = 1.55
_CHECK_CELL = 3.5
_PATTERN_SHADE = 0.32  # the pattern's second colour is the object's colour times this


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
        return WorldClass.from_id(self.class_id)


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


def object_mask(obj: ObjectSpec, size: int) -> np.ndarray:
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
    ``_SUPERSAMPLE**2`` samples per pixel); returns its full mask (:func:`object_mask`)."""
    size = canvas.shape[0]
    y0, y1, x0, x1 = _region(obj, size)
    mask = object_mask(obj, size)
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
