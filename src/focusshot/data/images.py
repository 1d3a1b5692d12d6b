"""Reading image files as RGB and listing image files.

``load_rgb`` turns every PIL mode a dataset is likely to contain into 8-bit RGB (transparency
composited on white, 16-bit and float data rescaled rather than clipped) and names the file
when it cannot be decoded. ``list_images`` gives a sorted, reproducible list of image files from
a folder tree, a text file of paths, or a sequence of either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from focusshot.data.extensions import IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "list_images", "load_rgb", "to_rgb", "upright_size"]


#: Modes that carry an alpha channel (or a palette/transparency that becomes one).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

#: Errors PIL raises for files it cannot identify or decode.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    Image.DecompressionBombError,
)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ImageError(ValueError):
    """An image file that cannot be read; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # keep pickling (multiprocessing data loaders) working
        return (type(self), (self.path, self.reason))


class ImageErrors(ImageError):
    """Several unreadable images at once: ``errors`` lists every one (``path`` is the first's).

    Raised after everything readable was computed and stored, so a rerun (or one that skips the
    listed files) loses nothing.
    """

    def __init__(self, errors: list[ImageError]) -> None:
        if not errors:
            raise ValueError("ImageErrors needs at least one error")
        self.errors = list(errors)
        shown = "; ".join(f"{e.path}: {e.reason}" for e in self.errors[:20])
        more = f"; and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        ValueError.__init__(self, f"{len(self.errors)} unreadable image(s): {shown}{more}")
        self.path, self.reason = self.errors[0].path, self.errors[0].reason

    def __reduce__(self):
        return (type(self), (self.errors,))


def _composite_on_white(img: Image.Image) -> Image.Image:
    """An image with alpha -> RGB, alpha-blended over an opaque white background."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    """A float array ``(H, W)`` in [0, 255] -> 8-bit RGB (rounded, clipped)."""
    g8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g8[:, :, None], 3, axis=2), mode="RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> an 8-bit ``"RGB"`` image.

    Rules by mode:

    * ``RGB``: returned as is.
    * ``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, and ``P`` or ``L``/``RGB`` with a
      ``transparency`` entry: alpha composited over white.
    * ``I;16`` (and ``I;16B``/``I;16L``/``I;16N``): 16-bit values scaled by 255/65535
      (PIL's own conversion would clip at 255).
    * ``I`` (32-bit integer): taken as 16-bit data (scaled by 255/65535, clipped to [0, 65535])
      when its maximum exceeds 255, else as 8-bit data.
    * ``F`` (32-bit float): taken as [0, 1] data (scaled by 255) when its maximum is at most
      1, else as [0, 255] data; clipped.
    * everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``): PIL's
      ``convert("RGB")``.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        return _composite_on_white(img)
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        return _gray_array_to_rgb(arr * (255.0 / 65535.0))
    if mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if arr.size and arr.max() > 255:
            arr = np.clip(arr, 0, 65535) * (255.0 / 65535.0)
        return _gray_array_to_rgb(arr)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return _gray_array_to_rgb(arr)
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike[str], exif_transpose: bool = True) -> Image.Image:
    """Read ``path`` fully and return it as an 8-bit RGB ``PIL.Image`` (see ``to_rgb``).

    Args:
        path: an image file.
        exif_transpose: apply the EXIF orientation tag first (on by default: a phone photo is
            seen the way its owner sees it, as Hugging Face's ``load_image`` does; torchvision's
            decoders do not). Part of every cache key (``ImageTransform.to_dict``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageError: the file exists but cannot be identified or decoded (truncated, corrupt,
            not an image); the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    try:
        with Image.open(p) as img:
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
            if rgb is img:
                rgb = img.copy()  # detach from the closed file
    except _DECODE_ERRORS as err:
        raise ImageError(p, f"{type(err).__name__}: {err}") from err
    return rgb


#: EXIF orientations (tag 0x0112) that turn an image a quarter or three quarters, or transpose it:
#: upright, its width and height swap
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def upright_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_rgb` returns it, turned upright by its EXIF
    orientation, read from its header alone (boxes are given in these pixels).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageError: the file cannot be identified as an image (the message names it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    try:
        with Image.open(p) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112)
    except _DECODE_ERRORS as err:
        raise ImageError(p, f"{type(err).__name__}: {err}") from err
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _list_dir(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if _is_image_file(Path(f)))
    return sorted(found, key=lambda q: q.relative_to(root).as_posix())


def _read_list_file(list_file: Path) -> list[Path]:
    out: list[Path] = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        q = Path(entry).expanduser()
        out.append(q if q.is_absolute() else list_file.parent / q)
    return out


def list_images(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Image files named by ``source``, in a reproducible order.

    ``source`` may be:

    * a folder: all files below it (recursively, following links, skipping hidden files and
      folders) whose extension is in ``IMAGE_EXTENSIONS`` (case-insensitive), sorted by their
      path relative to the folder;
    * a text file: one path per line (blank lines and lines starting with ``#`` skipped;
      relative paths are relative to the text file's folder), kept in the file's order;
    * an image file: a one-element list;
    * a sequence of any of these: their results concatenated in order.

    Raises:
        FileNotFoundError: a path in ``source`` does not exist.
    """
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser()
        if p.is_dir():
            return _list_dir(p)
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            return [p]
        return _read_list_file(p)
    out: list[Path] = []
    for item in source:
        out.extend(list_images(item))
    return out
