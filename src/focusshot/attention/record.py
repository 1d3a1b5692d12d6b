"""Record attention at the taps focusshot owns (DESIGN principle 3).

Example::

    with record(backbone, "probs", "logits", layers=[-1]) as rec:
        backbone.forward_features(images)
    cls_row = rec.get("probs")[:, :, 0]          # (B, H, N)

Opening a recording switches the chosen layers to the explicit softmax path; closing it
switches them back to the fused one. A recording that captured nothing raises
:class:`RecordingError` instead of handing back empty results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from focusshot.attention.core import TAP_KINDS, Attention


class RecordingError(RuntimeError):
    """A recording was asked for something it could not capture."""


def attention_modules(model: nn.Module) -> list[Attention]:
    """The attention modules of ``model`` in forward order (the image tower for CLIP models)."""
    finder = getattr(model, "attention_modules", None)
    if callable(finder):
        return list(finder())
    return [m for m in model.modules() if isinstance(m, Attention)]


class Recording:
    """What one :func:`record` context captured, per layer and kind.

    Made by :func:`record`, not by hand. Its accessors raise ``KeyError`` for a kind or layer that
    was not recorded.

    Args:
        layers: the recorded attention-layer indices, non-negative and sorted.
        modules: the :class:`~focusshot.attention.core.Attention` module of each of ``layers``
            (same order); each gets a fresh capture store.
        kinds: the recorded kinds (:data:`~focusshot.attention.core.TAP_KINDS`).
        total: how many attention layers the model has, for resolving negative layer indices.
    """

    def __init__(
        self, layers: list[int], modules: list[Attention], kinds: tuple[str, ...], total: int
    ) -> None:
        self.layers = layers
        self._total = total
        self.kinds = kinds
        self._modules = dict(zip(layers, modules, strict=True))
        for m in modules:  # a fresh store per recording, kept here after the context closes
            m.tap.store = {}
        self._stores = {i: m.tap.store for i, m in zip(layers, modules, strict=True)}
        self._taken: set[tuple[str, int]] = set()

    @property
    def layout(self) -> str:
        """``"global"`` or ``"windowed"`` (the layout of the recorded layers)."""
        return next(iter(self._modules.values())).tap.layout

    def _stored(self, kind: str, layer: int) -> list[Tensor]:
        if kind not in self.kinds:
            raise KeyError(f"{kind!r} was not recorded; recorded kinds: {list(self.kinds)}")
        idx = self._resolve(layer)
        return self._stores[idx].get(kind, [])

    def _resolve(self, layer: int) -> int:
        if layer in self._modules:
            return layer
        total = self._total
        if layer < 0 and layer + total in self._modules:
            return layer + total
        if layer >= 0 and layer - total in self._modules:
            return layer - total
        raise KeyError(f"layer {layer} was not recorded; recorded layers: {self.layers}")

    def calls(self, kind: str, layer: int = -1) -> list[Tensor]:
        """Every tensor captured for ``kind`` at ``layer``, one per forward call.

        Args:
            kind: one of the kinds the recording was opened with (``"logits"``, ``"probs"``,
                ``"head_out"``, ``"block_in"``; :data:`~focusshot.attention.core.TAP_KINDS`).
            layer: a recorded attention-layer index, in forward order; negative counts from the
                end (the default ``-1``: the last layer), as in :func:`record`.

        Returns:
            the captures in call order (empty when nothing was captured there).
        """
        return list(self._stored(kind, layer))

    def get(self, kind: str, layer: int = -1) -> Tensor:
        """The captured ``kind`` at ``layer``, forward calls concatenated along the batch axis.

        Args:
            kind: one of the kinds the recording was opened with (``"logits"``, ``"probs"``,
                ``"head_out"``, ``"block_in"``; :data:`~focusshot.attention.core.TAP_KINDS`).
            layer: a recorded attention-layer index, in forward order; negative counts from the
                end (the default ``-1``: the last layer), as in :func:`record`.

        Returns:
            the capture, shaped as :data:`~focusshot.attention.core.TAP_KINDS` says (e.g.
            ``(B, H, N, N)`` for ``"probs"``), ``B`` summed over the forward calls.

        Raises:
            RecordingError: nothing was captured for ``kind`` at ``layer``.
        """
        stored = self._stored(kind, layer)
        if not stored:
            raise RecordingError(f"nothing was captured for {kind!r} at layer {layer}")
        return stored[0] if len(stored) == 1 else torch.cat(stored, dim=0)

    def take(self, kind: str, layer: int = -1) -> Tensor:
        """The latest capture of ``kind`` at ``layer``; everything captured there so far is dropped.

        For recordings held open over many forward passes (a training loss that reads each step's
        attention, e.g. FORT's), so that memory does not grow with the steps.

        Args:
            kind: one of the kinds the recording was opened with (``"logits"``, ``"probs"``,
                ``"head_out"``, ``"block_in"``; :data:`~focusshot.attention.core.TAP_KINDS`).
            layer: a recorded attention-layer index, in forward order; negative counts from the
                end (the default ``-1``: the last layer), as in :func:`record`.

        Raises:
            RecordingError: nothing was captured there since the last ``take``.
        """
        stored = self._stored(kind, layer)
        if not stored:
            raise RecordingError(f"nothing was captured for {kind!r} at layer {layer} since the last take")
        latest = stored[-1]
        stored.clear()
        self._taken.add((kind, self._resolve(layer)))
        return latest

    def grad(self, kind: str, layer: int = -1) -> Tensor:
        """Gradient of the last backward pass with respect to the captured ``kind`` at ``layer``.

        Needs ``record(..., grad=True)`` and a ``backward()`` inside or after the context.

        Args:
            kind: one of the kinds the recording was opened with (``"logits"``, ``"probs"``,
                ``"head_out"``, ``"block_in"``; :data:`~focusshot.attention.core.TAP_KINDS`).
            layer: a recorded attention-layer index, in forward order; negative counts from the
                end (the default ``-1``: the last layer), as in :func:`record`.

        Returns:
            the gradients, shaped like :meth:`get`'s result (forward calls concatenated).

        Raises:
            RecordingError: a capture there has no gradient (or nothing was captured).
        """
        stored = self._stored(kind, layer)
        grads = [t.grad for t in stored if t.grad is not None]
        if not stored or len(grads) < len(stored):
            raise RecordingError(
                f"no gradient for {kind!r} at layer {layer}: record with grad=True, keep the graph, "
                "and call backward() on a loss that depends on it"
            )
        return grads[0] if len(grads) == 1 else torch.cat(grads, dim=0)


@contextmanager
def record(
    model: nn.Module,
    *kinds: str,
    layers: Sequence[int] | None = None,
    grad: bool = False,
    training_only: bool = False,
    strict: bool = True,
) -> Iterator[Recording]:
    """Record ``kinds`` (see :data:`TAP_KINDS`) at ``layers`` of ``model`` while the context is open.

    Args:
        model: any module built from :class:`~focusshot.attention.core.Attention`.
        kinds: one or more of ``"logits"``, ``"probs"``, ``"head_out"``, ``"block_in"``.
        layers: attention-layer indices in forward order (negative counts from the end);
            all layers when ``None``.
        grad: keep the graph of recorded tensors so that losses can use them and
            :meth:`Recording.grad` returns their gradients.
        training_only: capture only forward passes run with gradients enabled; passes under
            ``no_grad`` (validation inside a training loop) keep the fused path and store nothing.
        strict: raise :class:`RecordingError` at the end when a chosen layer captured nothing;
            ``False`` when only some of the layers are expected to run (a model of which a method
            runs the first blocks, another model the rest).
    """
    if not kinds:
        raise ValueError(f"record() needs at least one kind out of {sorted(TAP_KINDS)}")
    bad = [k for k in kinds if k not in TAP_KINDS]
    if bad:
        raise ValueError(f"unknown kind(s) {bad}; valid kinds: {sorted(TAP_KINDS)}")
    modules = attention_modules(model)
    if not modules:
        raise RecordingError(
            f"{type(model).__name__} has no focusshot Attention module to record from "
            "(attention-free backbones such as EfficientNet cannot be recorded)"
        )
    total = len(modules)
    chosen = list(range(total)) if layers is None else list(layers)
    for i in chosen:
        if not -total <= i < total:
            raise ValueError(f"layer {i} out of range for a model with {total} attention layers")
    normalised = sorted({i % total for i in chosen})
    picked = [modules[i] for i in normalised]
    if any(m.tap.kinds for m in picked):
        raise RecordingError(
            "a recording is already open on these layers; nested recordings are not supported"
        )
    rec = Recording(normalised, picked, tuple(kinds), total)
    for m in picked:
        m.tap.kinds = frozenset(kinds)
        m.tap.keep_grad = grad
        m.tap.training_only = training_only
    ok = False
    try:
        yield rec
        ok = True
    finally:
        for m in picked:
            m.tap.kinds = frozenset()
            m.tap.keep_grad = False
            m.tap.training_only = False
            m.tap.store = {}
    if ok and strict:
        missing = [
            f"{k}@layer{i}"
            for k in kinds
            for i in normalised
            if not rec._stores[i].get(k) and (k, i) not in rec._taken
        ]
        if missing:
            raise RecordingError(
                "the recording captured nothing for " + ", ".join(missing) + ": was a forward pass through "
                "these layers run inside the `with record(...)` block?"
            )
