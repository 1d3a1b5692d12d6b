"""The versions every result, classifier and pretrained file records (a leaf: stdlib, torch, numpy)."""

from __future__ import annotations

import platform

import numpy as np
import torch

__all__ = ["VERSION", "versions"]

#: focusshot's version (``focusshot.__version__``; pyproject.toml holds the same)
VERSION = "0.1.0"


def versions() -> dict[str, str]:
    """``focusshot``, ``torch``, ``numpy`` and ``python`` versions of this process."""
    return {
        "focusshot": VERSION,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
