"""Which frozen prefix of a backbone a method consumes (DESIGN, "Performance: pay for each image once").

A method declares the deepest frozen prefix it needs; the shared cache computes that prefix once
per image and every episode and method reuses it. The description lives here, beside the
:class:`~focusshot.backbones.base.Backbone` contract, because both ``methods`` and ``evaluation``
use it and neither may import the other. Kinds, with the per-image shape each has:

========== ============================================== =================================
kind       what                                           per-image shape
========== ============================================== =================================
images     the preprocessed image (decoded, resized,      ``(3, crop, crop)``
           cropped, normalised): methods that tune the
           whole depth (full FT, LoRA/SSF/VPT everywhere)
tokens     tokens entering block ``layer`` of the token   ``(T, C)``
           path (``L - k`` for methods that tune the last
           ``k`` blocks; ``L``: the last block's output)
head_out   per-head outputs of the [CLS] row of attention ``(len(layers), H, D)``
           ``layers`` (before the output projection; SAV)
head_in    what ``forward_head`` takes (``forward_tokens``' ``(1 + rows * cols, C)``
           output): on a ViT the same as ``tokens`` at
           ``L``; on CLIP's ResNet the tokens entering the
           attention pool (SAFE tunes the pool from them)
pooled     ``forward_features`` (CLIP: projected)          ``(num_features,)``
========== ============================================== =================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from focusshot.attention.record import attention_modules, record
from focusshot.backbones.base import Backbone

__all__ = ["PREFIX_KINDS", "Prefix", "compute_prefix", "expected_shape"]

PREFIX_KINDS: tuple[str, ...] = ("pooled", "tokens", "head_out", "images", "head_in")


@dataclass(frozen=True)
class Prefix:
    """Which frozen prefix of a backbone to compute (and cache).

    Attributes:
        kind: ``"pooled"``, ``"tokens"``, ``"head_out"``, ``"images"`` or ``"head_in"`` (module
            docstring).
            For ``tokens`` a negative ``layer`` counts from the end (``-k`` is ``L - k``), ``0``
            is the embedding output and ``L`` the last block's output (un-normed, what
            ``forward_head`` takes). ``head_out`` layers are a tuple (negatives from the end).
        layer: ``None`` for pooled, images and head_in, an int for tokens, a tuple of distinct ints for
            head_out.
        view: ``0`` for the evaluation view of the image; ``v >= 1`` for the ``v``-th seeded
            augmented view (random resized crop + flip,
            :class:`~focusshot.data.transforms.AugmentTransform`), which methods that train read
            for their support images and the cache stores like any other prefix.
        augment_seed: the seed of the augmented views.
    """

    kind: str
    layer: int | tuple[int, ...] | None = None
    view: int = 0
    augment_seed: int = 0

    @property
    def block(self) -> int:
        """The block a ``tokens`` prefix's tokens enter (``ValueError`` for another kind)."""
        if self.kind != "tokens" or not isinstance(self.layer, int):
            raise ValueError(f"a {self.kind} prefix enters no block")
        return self.layer

    @property
    def layers(self) -> tuple[int, ...]:
        """The attention layers of a ``head_out`` prefix (``ValueError`` for another kind)."""
        if not isinstance(self.layer, tuple):
            raise ValueError(f"a {self.kind} prefix has no attention layers")
        return self.layer

    def with_view(self, view: int, seed: int = 0) -> Prefix:
        """This prefix of augmented view ``view`` (``0``: the plain image)."""
        return Prefix(self.kind, self.layer, int(view), int(seed) if view else 0)

    def __post_init__(self) -> None:
        if isinstance(self.view, bool) or not isinstance(self.view, int) or self.view < 0:
            raise ValueError(f"view must be an int >= 0, got {self.view!r}")
        if self.kind not in PREFIX_KINDS:
            raise ValueError(f"unknown prefix kind {self.kind!r}; valid: {list(PREFIX_KINDS)}")
        if self.kind in ("pooled", "images", "head_in"):
            if self.layer is not None:
                raise ValueError(f"a {self.kind} prefix takes no layer, got {self.layer!r}")
        elif self.kind == "tokens":
            if isinstance(self.layer, bool) or not isinstance(self.layer, int):
                raise ValueError(
                    f"a tokens prefix needs one int layer (the block whose input is cached), got "
                    f"{self.layer!r}"
                )
        else:
            layers = (self.layer,) if isinstance(self.layer, int) else self.layer
            if not isinstance(layers, (tuple, list)) or not layers:
                raise ValueError(f"a head_out prefix needs one or more attention layers, got {self.layer!r}")
            if any(isinstance(v, bool) or not isinstance(v, int) for v in layers):
                raise ValueError(f"head_out layers must be ints, got {self.layer!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"head_out layers must be distinct, got {self.layer!r}")
            object.__setattr__(self, "layer", tuple(int(v) for v in layers))

    @classmethod
    def pooled(cls) -> Prefix:
        """Pooled (CLIP: projected) features ``(num_features,)`` per image."""
        return cls("pooled")

    @classmethod
    def images(cls) -> Prefix:
        """The preprocessed image ``(3, crop, crop)``."""
        return cls("images")

    @classmethod
    def head_in(cls) -> Prefix:
        """The tokens ``forward_head`` pools (a ViT's last-block output; CLIP-ResNet's pool input)."""
        return cls("head_in")

    @classmethod
    def tokens(cls, layer: int) -> Prefix:
        """Tokens entering block ``layer`` (``-k``: ``L - k``), ``(T, C)`` per image."""
        return cls("tokens", layer)

    @classmethod
    def head_out(cls, layers: int | Sequence[int]) -> Prefix:
        """[CLS]-row per-head outputs of attention ``layers``, ``(len(layers), H, D)`` per image."""
        return cls("head_out", tuple(layers) if isinstance(layers, Sequence) else layers)

    def key(self) -> str:
        """This prefix in cache keys: ``"pooled"``, ``"images"``, ``"tokens:10"``, ``"head_out:9,10"``,
        with ``"@view3/seed0"`` appended for augmented views."""
        if self.kind in ("pooled", "images", "head_in"):
            base = self.kind
        elif self.kind == "tokens":
            base = f"tokens:{self.layer}"
        else:
            base = "head_out:" + ",".join(str(v) for v in self.layers)
        return base if not self.view else f"{base}@view{self.view}/seed{self.augment_seed}"

    def resolve(self, backbone: nn.Module) -> Prefix:
        """This prefix with negative layers turned into absolute ones for ``backbone`` (checked).

        Raises:
            ValueError: the backbone cannot produce this prefix (no token path, no global [CLS]
                attention) or a layer is out of range.
        """
        if self.kind in ("pooled", "images"):
            return self
        if self.kind == "head_in":
            return _resolve_head_in(self, backbone)
        if self.kind == "tokens":
            depth = backbone.token_blocks() if isinstance(backbone, Backbone) else 0
            if depth == 0:
                name = backbone.identity.name if isinstance(backbone, Backbone) else "?"
                raise ValueError(
                    f"{type(backbone).__name__} ({name}) has no ViT token path (embed_tokens + "
                    "forward_blocks); cache its pooled features or images instead"
                )
            layer = self.block
            if not -depth <= layer <= depth:
                raise ValueError(
                    f"tokens layer {layer} out of range for {depth} blocks (valid: -{depth}..{depth})"
                )
            return Prefix("tokens", layer if layer >= 0 else depth + layer, self.view, self.augment_seed)
        caps = getattr(backbone, "capabilities", None)
        modules = attention_modules(backbone)
        if not modules or (caps is not None and not caps.global_cls):
            raise ValueError(
                f"{type(backbone).__name__} has no global [CLS] attention to cache head outputs of "
                "(capabilities.global_cls is False)"
            )
        total = len(modules)
        bad = [v for v in self.layers if not -total <= v < total]
        if bad:
            raise ValueError(f"head_out layers {bad} out of range for {total} attention layers")
        layers = tuple(v % total for v in self.layers)
        return Prefix("head_out", layers, self.view, self.augment_seed)


def _resolve_head_in(prefix: Prefix, backbone: nn.Module) -> Prefix:
    """``head_in`` on a ViT token path is ``tokens`` at ``L`` (one cache entry for both); a backbone
    without blocks keeps ``head_in`` if its ``forward_tokens`` output has a width (CLIP-ResNet)."""
    if not isinstance(backbone, Backbone):
        raise ValueError(f"{type(backbone).__name__} is not a focusshot Backbone")
    depth = backbone.token_blocks()
    if depth:
        return Prefix("tokens", depth, prefix.view, prefix.augment_seed)
    try:
        backbone.token_width()
    except ValueError as exc:
        raise ValueError(
            f"{type(backbone).__name__} ({backbone.identity.name}) has no single token sequence "
            f"entering its pooling head to cache: {exc}"
        ) from exc
    return prefix


def expected_shape(backbone: Backbone, prefix: Prefix) -> tuple[int, ...]:
    """Per-image shape of ``prefix`` (resolved) on ``backbone`` at its preprocessing's crop size.

    ``(num_features,)`` for pooled, ``(3, crop, crop)`` for images, ``(prefix_tokens + rows * cols,
    width)`` for tokens and ``(len(layers), H, D)`` for head_out.
    """
    if prefix.kind == "pooled":
        return (int(backbone.num_features),)
    crop = int(backbone.preprocess.crop)
    if prefix.kind == "images":
        return (3, crop, crop)
    if prefix.kind in ("tokens", "head_in"):
        rows, cols = backbone.grid_size(crop)
        return (int(backbone.num_prefix_tokens) + rows * cols, int(backbone.token_width()))
    modules = attention_modules(backbone)
    heads = {(modules[i].num_heads, modules[i].head_dim) for i in prefix.layers}
    if len(heads) != 1:
        raise ValueError(
            f"head_out layers {prefix.layer} differ in heads x head_dim ({sorted(heads)}); "
            "cache them with one prefix each"
        )
    ((h, d),) = heads
    return (len(prefix.layers), int(h), int(d))


def compute_prefix(backbone: Backbone, prefix: Prefix, x: Tensor) -> Tensor:
    """Preprocessed images ``(B, 3, H, W)`` -> ``(B, *expected_shape)`` for a resolved ``prefix``.

    Runs only as deep as the prefix needs (tokens and head_out stop after their last layer).
    """
    if prefix.kind == "images":
        return x
    if prefix.kind == "pooled":
        return backbone.forward_features(x)
    if prefix.kind == "head_in":
        return backbone.forward_tokens(x)
    if prefix.kind == "tokens":
        return backbone.forward_blocks(backbone.embed_tokens(x), 0, prefix.block)
    layers = list(prefix.layers)
    with record(backbone, "head_out", layers=layers) as rec:
        if backbone.token_blocks():
            backbone.forward_blocks(backbone.embed_tokens(x), 0, max(layers) + 1)  # later blocks unneeded
        else:
            backbone.forward_features(x)
    return torch.stack([rec.get("head_out", i)[:, :, 0] for i in layers], dim=1)  # (B, len, H, D)
