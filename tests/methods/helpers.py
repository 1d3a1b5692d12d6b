"""Shared test data for the method tests."""

from pathlib import Path

import torch
from PIL import Image


def class_folders(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    """Write ``classes`` folders of ``per_class`` 36x36 PNGs (class c brighter by 100 c); returns root."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(36, 36, 3, generator=g) * 80 + 100 * c).to(torch.uint8).numpy()
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


def random_support(backbone, n_per_class: int = 2, classes: int = 3, seed: int = 0):
    """Random preprocessed images ``(n_per_class * classes, 3, crop, crop)`` and labels ``0..classes-1``."""
    g = torch.Generator().manual_seed(seed)
    crop = backbone.preprocess.crop
    x = torch.randn(n_per_class * classes, 3, crop, crop, generator=g)
    return x, torch.arange(classes).repeat(n_per_class)
