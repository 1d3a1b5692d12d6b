"""The file name endings focusshot treats as images (one list for the folder readers and the
image decoder)."""

from __future__ import annotations

import os

__all__ = ["IMAGE_EXTENSIONS", "is_image_name"]

#: File name endings (lower case) that the folder readers treat as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"}
)


def is_image_name(name: str) -> bool:
    """Whether a file name is an image's: not hidden, and its ending is in :data:`IMAGE_EXTENSIONS`."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
