"""Shared fixtures for the head tests: small clustered feature sets, made deterministically."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor


def make_clustered(
    n_way: int,
    n_shot: int,
    dim: int,
    *,
    seed: int = 0,
    spread: float = 0.7,
    offset: float = 0.0,
    n_query: int = 0,
    episodes: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gaussian clusters around random class means.

    Returns ``(support (N, D), labels (N,), query (M, D), query_labels (M,))`` with N = n_way * n_shot
    and M = n_way * n_query, or with a leading episode dimension E when ``episodes`` is given.
    Labels are shuffled so that classes are not contiguous.
    """
    g = torch.Generator().manual_seed(seed)
    e = 1 if episodes is None else episodes
    means = torch.randn(e, n_way, dim, generator=g, dtype=dtype)

    def draw(k: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(n_way).repeat(k)
        labels = torch.stack([labels[torch.randperm(len(labels), generator=g)] for _ in range(e)])
        x = torch.gather(means, 1, labels[..., None].expand(-1, -1, dim))
        x = x + spread * torch.randn(x.shape, generator=g, dtype=dtype) + offset
        return x, labels

    xs, ys = draw(n_shot)
    xq, yq = draw(n_query)
    if episodes is None:
        return xs[0], ys[0], xq[0], yq[0]
    return xs, ys, xq, yq


@pytest.fixture
def clustered() -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    return make_clustered


@pytest.fixture(autouse=True)
def _single_thread():
    """Run each head test with one intra-op thread, restored afterwards.

    The problems here are tiny: BLAS threading only adds overhead, and on an oversubscribed machine
    (other test processes sharing two cores) a threaded float64 GEMM of a 24 x 24 matrix was seen to
    stall for milliseconds per call. Single-threaded, the whole directory runs in about ten seconds.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
