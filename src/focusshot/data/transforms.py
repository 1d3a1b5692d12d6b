"""Evaluation transforms: PIL image -> normalised float tensor, without torchvision.

``make_transform(preprocess)`` reproduces the standard evaluation pipeline of CLIP (Radford et
al., 2021) and timm/torchvision ImageNet models: resize the shorter side with PIL, centre crop,
scale to [0, 1], normalise per channel. It is pinned against Hugging Face's
``CLIPImageProcessor`` in ``tests/data/test_transforms.py``.

``data`` knows nothing of models (DESIGN): the settings come from any object with ``resize``,
``crop``, ``mean``, ``std`` and ``interpolation`` attributes (``PreprocessLike``), such as a
backbone's ``Preprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from focusshot.data.images import to_rgb

__all__ = [
    "INTERPOLATIONS",
    "VIEW_MIN_VISIBLE",
    "AugmentTransform",
    "ImageTransform",
    "PreprocessLike",
    "ViewGeometry",
    "box_to_crop",
    "box_to_view",
    "center_crop",
    "make_transform",
    "make_view_transform",
    "normalize",
    "resize_shorter",
    "to_tensor",
]

CropRounding = Literal["round", "floor"]

#: the least fraction of a box's area (inside its image) an augmented view must show for
#: :func:`box_to_view` to map the box into it
VIEW_MIN_VISIBLE = 0.25

#: Names accepted for ``interpolation`` and the PIL filter each selects.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@runtime_checkable
class PreprocessLike(Protocol):
    """What ``make_transform`` reads: any object with these attributes (duck-typed)."""

    @property
    def resize(self) -> int: ...
    @property
    def crop(self) -> int: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...
    @property
    def interpolation(self) -> str: ...


def _resample(interpolation: str) -> Image.Resampling:
    try:
        return INTERPOLATIONS[interpolation.lower()]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; valid: {', '.join(sorted(INTERPOLATIONS))}"
        ) from None


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``size``; the longer becomes ``int(size * long / short)``.

    This is torchvision's ``Resize(size)`` and Hugging Face's ``{"shortest_edge": size}`` rule
    (truncation, not rounding), done with PIL's antialiased filters.
    """
    if size <= 0:
        raise ValueError(f"resize must be positive, got {size}")
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample=_resample(interpolation))


def _offset(excess: int, rounding: CropRounding) -> int:
    if rounding == "round":
        return int(round(excess / 2.0))  # Python rounds half to even, as torchvision does
    if rounding == "floor":
        return excess // 2
    raise ValueError(f"crop_rounding must be 'round' or 'floor', got {rounding!r}")


def center_crop(img: Image.Image, size: int, rounding: CropRounding = "round") -> Image.Image:
    """Centre ``size x size`` crop; zero-pads (black) first if the image is smaller.

    ``rounding="round"`` places the window at ``top = int(round((h - size) / 2.0))`` like
    torchvision's ``CenterCrop`` (and so OpenAI CLIP's and timm's evaluation transforms);
    ``"floor"`` uses ``(h - size) // 2`` like Hugging Face image processors. The two differ by one
    pixel exactly when ``h - size`` (or ``w - size``) is 3 modulo 4.
    """
    w, h = img.size
    if w < size or h < size:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        canvas = Image.new(img.mode, (w + pad_w, h + pad_h))
        canvas.paste(img, (pad_w // 2, pad_h // 2))
        img, (w, h) = canvas, canvas.size
    top, left = _offset(h - size, rounding), _offset(w - size, rounding)
    if (w, h) == (size, size):
        return img
    return img.crop((left, top, left + size, top + size))


def box_to_crop(
    box: Sequence[float],
    image_size: tuple[int, int],
    preprocess: PreprocessLike,
    crop_rounding: CropRounding = "round",
) -> tuple[float, float, float, float]:
    """A box in an image's pixels -> the same box in ``[0, 1]`` coordinates of the evaluation crop.

    Follows the geometry of :class:`ImageTransform`: :func:`resize_shorter` to ``preprocess.resize``
    (each axis scaled by ``new / old``, the longer side truncated as there), zero-padding when the
    resized image is smaller than the crop, then :func:`center_crop` to ``preprocess.crop``. The
    result is clamped to the crop.

    Args:
        box: ``(x0, y0, x1, y1)`` in the original image's pixel coordinates (``x`` to the right).
        image_size: the original image's ``(width, height)``.
        preprocess: anything with ``resize`` and ``crop`` (a backbone's ``Preprocess``).
        crop_rounding: as in :func:`center_crop`.

    Returns:
        ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``.

    Raises:
        ValueError: the box is empty or reversed, or it lies entirely outside the crop (the
            message gives the box; callers add the image's path).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = (int(v) for v in image_size)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} is empty or reversed (it needs x0 < x1 and y0 < y1)")
    size, crop = int(preprocess.resize), int(preprocess.crop)
    if size <= 0 or crop <= 0:
        raise ValueError(f"resize and crop must be positive, got {size} and {crop}")
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    sx, sy = new_w / w, new_h / h
    pad_x, pad_y = max(crop - new_w, 0) // 2, max(crop - new_h, 0) // 2
    left = _offset(max(new_w, crop) - crop, crop_rounding)
    top = _offset(max(new_h, crop) - crop, crop_rounding)

    def fx(x: float) -> float:
        return min(max((x * sx + pad_x - left) / crop, 0.0), 1.0)

    def fy(y: float) -> float:
        return min(max((y * sy + pad_y - top) / crop, 0.0), 1.0)

    out = (fx(x0), fy(y0), fx(x1), fy(y1))
    if not (out[2] > out[0] and out[3] > out[1]):
        raise ValueError(
            f"box {tuple(box)} lies outside the {crop}x{crop} centre crop of a {w}x{h} image "
            f"(resized to {new_w}x{new_h})"
        )
    return out


@dataclass(frozen=True)
class ViewGeometry:
    """Where an augmented view (:class:`AugmentTransform`) comes from in its image.

    Attributes:
        box: the crop ``(left, top, right, bottom)`` in the image's pixels (``right`` and
            ``bottom`` exclusive, as ``PIL.Image.crop`` takes them).
        flipped: whether the crop, once resized, is mirrored left to right.
        image_size: the image's ``(width, height)``, as the view saw it (after EXIF orientation
            when it was loaded with :func:`~focusshot.data.images.load_rgb`).
    """

    box: tuple[int, int, int, int]
    flipped: bool
    image_size: tuple[int, int]


def box_to_view(
    box: Sequence[float], geometry: ViewGeometry, min_visible: float = VIEW_MIN_VISIBLE
) -> tuple[float, float, float, float] | None:
    """A box in an image's pixels -> the same box in ``[0, 1]`` coordinates of one augmented view.

    The counterpart of :func:`box_to_crop` for a view of :class:`AugmentTransform`
    (:meth:`AugmentTransform.geometry` gives ``geometry``): the box is clipped to the image and
    then to the view's crop box, scaled to the crop (which the view resizes to a square), and
    mirrored in ``x`` when the view is flipped.

    Args:
        box: ``(x0, y0, x1, y1)`` in the image's pixel coordinates (``x`` to the right).
        geometry: the view's crop box, flip and image size.
        min_visible: the least fraction of the box's area (its part inside the image) the crop
            must show, in ``[0, 1]``.

    Returns:
        ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``, or ``None``
        when the crop shows less than ``min_visible`` of the box, or none of it (the view does
        not show the object: the caller decides what that view gets).

    Raises:
        ValueError: the box is empty or reversed, lies outside the image, or ``min_visible`` is
            outside ``[0, 1]``.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} is empty or reversed (it needs x0 < x1 and y0 < y1)")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    w, h = geometry.image_size
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
    left, top, right, bottom = (float(v) for v in geometry.box)
    cx0, cy0, cx1, cy1 = max(x0, left), max(y0, top), min(x1, right), min(y1, bottom)
    if not (cx1 > cx0 and cy1 > cy0):
        return None
    if (cx1 - cx0) * (cy1 - cy0) < min_visible * (x1 - x0) * (y1 - y0):
        return None
    cw, ch = right - left, bottom - top
    vx0, vx1 = (cx0 - left) / cw, (cx1 - left) / cw
    if geometry.flipped:
        vx0, vx1 = 1.0 - vx1, 1.0 - vx0
    return (vx0, (cy0 - top) / ch, vx1, (cy1 - top) / ch)


def to_tensor(img: Image.Image) -> Tensor:
    """8-bit RGB PIL image -> float32 tensor ``(3, H, W)`` in [0, 1]."""
    arr = np.asarray(to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel on ``(..., 3, H, W)``."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


class ImageTransform:
    """PIL image (any mode) -> normalised float32 tensor ``(3, crop, crop)``.

    Steps: ``to_rgb`` -> ``resize_shorter(resize)`` -> ``center_crop(crop)`` -> [0, 1] ->
    ``(x - mean) / std``.
    """

    def __init__(self, preprocess: PreprocessLike, crop_rounding: CropRounding = "round") -> None:
        missing = [
            a for a in ("resize", "crop", "mean", "std", "interpolation") if not hasattr(preprocess, a)
        ]
        if missing:
            raise TypeError(
                f"preprocess lacks attribute(s) {missing}; it needs resize, crop, mean, std, interpolation"
            )
        self.resize = int(preprocess.resize)
        self.crop = int(preprocess.crop)
        self.mean = tuple(float(v) for v in preprocess.mean)
        self.std = tuple(float(v) for v in preprocess.std)
        self.interpolation = str(preprocess.interpolation).lower()
        self.crop_rounding: CropRounding = crop_rounding
        _resample(self.interpolation)
        _offset(0, crop_rounding)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got {self.mean} and {self.std}")
        if self.crop <= 0:
            raise ValueError(f"crop must be positive, got {self.crop}")

    def __call__(self, img: Image.Image) -> Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(img).__name__}")
        img = resize_shorter(to_rgb(img), self.resize, self.interpolation)
        img = center_crop(img, self.crop, self.crop_rounding)
        return normalize(to_tensor(img), self.mean, self.std)

    def to_dict(self) -> dict:
        """The settings, for cache keys and result logs."""
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_rounding": self.crop_rounding,
            "exif": "transpose",  # load_rgb honours EXIF orientation
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({args})"


def make_transform(preprocess: PreprocessLike, crop_rounding: CropRounding = "round") -> ImageTransform:
    """The evaluation transform for ``preprocess`` (see ``ImageTransform`` and ``center_crop``)."""
    return ImageTransform(preprocess, crop_rounding=crop_rounding)


class AugmentTransform:
    """One seeded augmented view of an image: random resized crop + horizontal flip, then normalise.

    The view Tip-Adapter-F (Zhang et al., ECCV 2022) and CoOp-style few-shot training draw per
    support image: a crop of ``scale`` times the image's area with an aspect ratio in ``ratio``
    (log-uniform), resized to ``crop x crop``, flipped with probability 1/2. Each view is drawn
    from a generator seeded by ``(seed, view, the image's pixels)``, so the same image gives the
    same view in every run, process and episode, and the view can be cached like any prefix.
    After 10 rejected draws the whole image is centre-cropped (torchvision's fallback).
    """

    def __init__(
        self,
        preprocess: PreprocessLike,
        view: int,
        seed: int = 0,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if view < 1:
            raise ValueError(f"augmented views are numbered from 1, got {view}")
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"bad scale {scale} or ratio {ratio}")
        self.base = ImageTransform(preprocess)
        self.view, self.seed, self.scale, self.ratio = int(view), int(seed), tuple(scale), tuple(ratio)

    def _generator(self, img: Image.Image) -> torch.Generator:
        import hashlib

        digest = hashlib.sha256(img.tobytes() + f"{img.size}{self.seed}/{self.view}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

    def box(self, width: int, height: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """The crop ``(left, top, right, bottom)`` for an image of ``width x height``."""
        import math

        area = width * height
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g))
            aspect = math.exp(float(torch.empty(1).uniform_(lo, hi, generator=g)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                return left, top, left + w, top + h
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def _geometry(self, rgb: Image.Image) -> ViewGeometry:
        """The draws, in their one order: the crop box (:meth:`box`), then the flip."""
        g = self._generator(rgb)
        box = self.box(rgb.width, rgb.height, g)
        flipped = float(torch.rand(1, generator=g)) < 0.5
        return ViewGeometry(box, flipped, (rgb.width, rgb.height))

    def geometry(self, img: Image.Image) -> ViewGeometry:
        """This view's crop box and flip for ``img`` (any mode): what :meth:`__call__` cuts out of
        it, without computing the pixels. :func:`box_to_view` maps a box into the view with it.

        Raises:
            TypeError: ``img`` is not a ``PIL.Image.Image``.
        """
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(img).__name__}")
        return self._geometry(to_rgb(img))

    def __call__(self, img: Image.Image) -> Tensor:
        """The view of ``img`` (any mode): a normalised float32 tensor ``(3, crop, crop)``."""
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(img).__name__}")
        img = to_rgb(img)
        geo = self._geometry(img)
        crop = img.crop(geo.box)
        crop = crop.resize((self.base.crop, self.base.crop), _resample(self.base.interpolation))
        if geo.flipped:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return normalize(to_tensor(crop), self.base.mean, self.base.std)

    def to_dict(self) -> dict:
        """The settings, for cache keys and result logs."""
        return {
            **self.base.to_dict(),
            "augment": "random_resized_crop+hflip",
            "view": self.view,
            "seed": self.seed,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
        }


def make_view_transform(
    preprocess: PreprocessLike, view: int, seed: int = 0
) -> ImageTransform | AugmentTransform:
    """View 0: the evaluation transform; view ``v >= 1``: the seeded augmented view ``v``."""
    return make_transform(preprocess) if view == 0 else AugmentTransform(preprocess, view, seed)
