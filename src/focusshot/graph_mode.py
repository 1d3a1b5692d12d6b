"""Inference without autograd, unless an explanation needs the graph (``focusshot explain``).

Methods score images under :func:`torch.inference_mode` (no graph, the fastest path) and compute
frozen parts of a model under :func:`torch.no_grad`. A relevance map (gradient-weighted attention
rollout, Grad-CAM) needs the gradient of a class score through exactly those paths. Inference code
therefore uses :func:`inference` (a decorator) and :func:`frozen` (a context) instead of torch's, and
:func:`keep_graph` turns both into no-ops for the code run inside it, with gradients enabled.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

import torch

__all__ = ["frozen", "inference", "keep_graph", "keeping_graph"]

_KEEP: ContextVar[bool] = ContextVar("focusshot_keep_graph", default=False)

P = ParamSpec("P")
R = TypeVar("R")


def keeping_graph() -> bool:
    """Whether the code runs inside :func:`keep_graph`."""
    return _KEEP.get()


@contextlib.contextmanager
def keep_graph() -> Iterator[None]:
    """Run inference code with autograd on: :func:`inference` and :func:`frozen` do nothing inside."""
    token = _KEEP.set(True)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        _KEEP.reset(token)


def inference(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate an inference function: it runs under :func:`torch.inference_mode`, except inside
    :func:`keep_graph`, where it runs as it is (building the graph)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if _KEEP.get():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper


def frozen() -> contextlib.AbstractContextManager[object]:
    """:func:`torch.no_grad` for a frozen part of a model, a no-op inside :func:`keep_graph`."""
    return contextlib.nullcontext() if _KEEP.get() else torch.no_grad()
