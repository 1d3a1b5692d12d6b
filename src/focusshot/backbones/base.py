"""The contract every focusshot backbone keeps (DESIGN principle 5)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

#: A bias for every layer (one tensor), one per layer (a sequence, ``None`` for no bias), or none.
AttnBias = Tensor | Sequence[Tensor | None] | None


def bias_for(attn_bias: AttnBias, layer: int) -> Tensor | None:
    """The bias that layer ``layer`` receives out of ``attn_bias``."""
    if attn_bias is None or isinstance(attn_bias, Tensor):
        return attn_bias
    return attn_bias[layer]


class TokenPathError(ValueError):
    """A backbone was asked for a token-path operation it does not have (Swin, CNNs)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backbone can do beyond pooled features.

    Attributes:
        attention: it is built from focusshot ``Attention`` modules, so ``record`` works on it.
        global_cls: its attention is global with a [CLS] row (rollout, foveal biases and
            [CLS]-mass metrics need this; Swin's windowed attention and CNNs do not have it).
        tokens: ``forward_tokens`` returns a token sequence.
        text: it carries a text tower and tokenizer (zero-shot classifiers).
    """

    attention: bool = True
    global_cls: bool = True
    tokens: bool = True
    text: bool = False


@dataclass(frozen=True)
class Preprocess:
    """How images become the backbone's input tensor.

    Attributes:
        resize: target length of the image's shorter side.
        crop: side of the square centre crop.
        mean: per-channel mean (RGB, in [0, 1] units).
        std: per-channel standard deviation.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (PIL resampling).
    """

    resize: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CLIP_PREPROCESS = Preprocess(
    resize=224,
    crop=224,
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
    interpolation="bicubic",
)
IMAGENET_PREPROCESS = Preprocess(resize=256, crop=224, interpolation="bicubic")


@dataclass
class Identity:
    """Where a backbone's weights came from; recorded beside every result."""

    name: str
    family: str
    source: str = "random"
    weights_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backbone(nn.Module, metaclass=ABCMeta):
    """Base class of focusshot image backbones.

    Subclasses set ``num_features`` (width of ``forward_features``), ``num_prefix_tokens``
    ([CLS] and register tokens ahead of the patch tokens), ``patch_size``, ``capabilities``
    and ``preprocess``, and implement ``forward_tokens``, ``forward_head`` and
    ``forward_intermediates``.
    """

    num_features: int
    num_prefix_tokens: int = 0
    patch_size: int = 1
    capabilities: Capabilities = Capabilities()
    preprocess: Preprocess = IMAGENET_PREPROCESS
    #: Where ``preprocess`` came from, for a model loaded from a Hugging Face directory (recorded in
    #: the identity by ``create_backbone``); empty otherwise.
    preprocess_source: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.identity = Identity(name=type(self).__name__, family="unknown")

    def grid_size(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Patch-grid ``(rows, cols)`` for an input of ``image_size`` (the crop size by default).

        Args:
            image_size: the input's side in pixels (a square), or its ``(height, width)``; ``None``
                (the default) means ``preprocess.crop``.
        """
        if image_size is None:
            image_size = self.preprocess.crop
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return h // self.patch_size, w // self.patch_size

    @abstractmethod
    def forward_tokens(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        """Images ``(B, 3, H, W)`` -> output tokens of the last stage ``(B, N, C)``.

        Args:
            x: images ``(B, 3, H, W)``, preprocessed as :attr:`preprocess` says (normalised, ``H`` and
                ``W`` usually the crop size).
            attn_bias: additive attention bias (:data:`AttnBias`): one tensor for every layer, a
                sequence with one entry (or ``None``) per attention layer, or ``None`` (the default, no
                bias). Each broadcasts to the layer's ``(B, H, N, N)`` logits, e.g. a foveal bias
                ``(B, 1, N, N)`` (:func:`~focusshot.attention.foveal.foveal_bias`). Backbones without
                global attention (Swin, CNNs) refuse any bias with ``ValueError``.
        """

    @abstractmethod
    def forward_head(self, tokens: Tensor) -> Tensor:
        """Last-stage tokens ``(B, N, C)`` -> pooled features ``(B, num_features)``.

        Args:
            tokens: last-stage tokens ``(B, N, C)``, as :meth:`forward_tokens` returns them.
        """

    def forward_head_tokens(self, tokens: Tensor) -> Tensor:
        """Every token through the head: ``(B, N, C)`` -> ``(B, N, num_features)`` (CLIP: projected
        into the joint space), row 0 equal to :meth:`forward_head` where the head pools row 0
        (APT's keys and values). Backbones whose head is not per-token raise ``ValueError``.

        Args:
            tokens: last-stage tokens ``(B, N, C)``, as :meth:`forward_tokens` returns them.
        """
        raise ValueError(f"{type(self).__name__} ({self.identity.name}) has no per-token head")

    def forward_features(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        """Images ``(B, 3, H, W)`` -> pooled (for CLIP: projected) features ``(B, num_features)``.

        Args:
            x: images ``(B, 3, H, W)``, preprocessed as :attr:`preprocess` says (normalised, ``H`` and
                ``W`` usually the crop size).
            attn_bias: additive attention bias (:data:`AttnBias`): one tensor for every layer, a
                sequence with one entry (or ``None``) per attention layer, or ``None`` (the default, no
                bias). Each broadcasts to the layer's ``(B, H, N, N)`` logits, e.g. a foveal bias
                ``(B, 1, N, N)`` (:func:`~focusshot.attention.foveal.foveal_bias`). Backbones without
                global attention (Swin, CNNs) refuse any bias with ``ValueError``.
        """
        return self.forward_head(self.forward_tokens(x, attn_bias=attn_bias))

    @abstractmethod
    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Outputs of the blocks (or stages) at ``indices`` (negative counts from the end).

        Args:
            x: images ``(B, 3, H, W)``, preprocessed as :attr:`preprocess` says (normalised, ``H`` and
                ``W`` usually the crop size).
            indices: block indices for a ViT, stage indices for Swin and EfficientNet; negative
                indices count from the last one. The outputs come back in this order.

        Returns:
            one tensor per index; for a ViT the tokens ``(B, N, C)`` after that block, before the
            final norm (the backbone classes document their own shapes).
        """

    # ---- the token path: what prefix caching and last-k tuning need (DESIGN, "Performance")

    def token_blocks(self) -> int:
        """How many blocks :meth:`forward_blocks` can run: ``L`` for a plain ViT, ``0`` when the
        backbone has no single sequence of global-attention blocks (Swin's stages, CNNs)."""
        return 0

    def token_width(self) -> int:
        """Width ``C`` of the tokens :meth:`embed_tokens` and :meth:`forward_blocks` exchange (a
        backbone without blocks whose ``forward_tokens`` gives one sequence: that sequence's width)."""
        raise TokenPathError(self._no_token_path())

    def embed_tokens(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> tokens entering block 0 ``(B, T, C)``.

        Args:
            x: images ``(B, 3, H, W)``, preprocessed as :attr:`preprocess` says (normalised, ``H`` and
                ``W`` usually the crop size).
        """
        raise TokenPathError(self._no_token_path())

    def forward_blocks(
        self, x: Tensor, start: int = 0, stop: int | None = None, attn_bias: AttnBias = None
    ) -> Tensor:
        """Run blocks ``start..stop-1`` on tokens ``(B, T, C)``; the bias is indexed by absolute layer.

        Args:
            x: tokens ``(B, T, C)`` entering block ``start`` (:meth:`embed_tokens` for block 0).
            start: the first block to run (default 0).
            stop: one past the last block to run; ``None`` (the default) runs to the end
                (:meth:`token_blocks`).
            attn_bias: as for :meth:`forward_tokens`; a per-layer sequence is indexed by absolute
                block index, so it holds entries for blocks before ``start`` too.

        Returns:
            the tokens ``(B, T, C)`` leaving block ``stop - 1``, before the final norm.
        """
        raise TokenPathError(self._no_token_path())

    def _no_token_path(self) -> str:
        return (
            f"{type(self).__name__} ({self.identity.name}) has no ViT token path (one sequence of "
            "global-attention blocks): only its pooled features (and the images) can be cached or tuned"
        )

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`forward_features` without a bias: ``backbone(x)``.

        Args:
            x: images ``(B, 3, H, W)``, preprocessed as :attr:`preprocess` says (normalised, ``H`` and
                ``W`` usually the crop size).
        """
        return self.forward_features(x)
