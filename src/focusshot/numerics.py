"""Small numeric helpers shared by layers that may not import each other (pure Python)."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["golden_section"]


def golden_section(f: Callable[[float], float], lo: float, hi: float, iterations: int = 100) -> float:
    """The minimiser of a unimodal ``f`` on ``[lo, hi]`` by golden-section search (deterministic;
    100 iterations narrow the bracket by ``0.618**100``). Returns the bracket's midpoint."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = f(d)
    return (lo + hi) / 2.0
