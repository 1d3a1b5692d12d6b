"""Shared fixtures: tiny random reference models saved in their real on-disk formats."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference between two tensors of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())
