"""Shared helpers for the adapter tests: tiny random backbones and images on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from focusshot.backbones.registry import create_backbone


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(name: str) -> nn.Module:
    """A tiny registry backbone in eval mode (random weights from seed 0)."""
    return create_backbone(name)


def images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    """Random images ``(n, 3, size, size)`` from their own generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def randomise(params: list[nn.Parameter], seed: int = 7, std: float = 0.1) -> None:
    """Overwrite ``params`` with ``N(0, std)`` values (e.g. LoRA's zero-initialised B)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach() - b.detach()).abs().max())
