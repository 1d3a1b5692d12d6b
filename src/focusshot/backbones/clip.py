"""CLIP (Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*, 2021).

:class:`CLIP` pairs an image tower (:class:`~focusshot.backbones.vit.VisionTransformer` or
:class:`~focusshot.backbones.clip_resnet.ModifiedResNet`) with :class:`TextTransformer` and a
tokenizer, and keeps the image tower's backbone contract: ``forward_features`` is CLIP's
``encode_image`` (the projected embedding, not normalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from focusshot.attention.core import Attention
from focusshot.backbones.base import AttnBias, Backbone, Capabilities
from focusshot.backbones.vit import Block


@dataclass
class TextConfig:
    """Hyper-parameters of :class:`TextTransformer` (defaults: CLIP ViT-B text tower)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    proj_dim: int = 512
    act: str = "quick_gelu"
    eps: float = 1e-5
    eot_token_id: int = 49407


class TextTransformer(nn.Module):
    """CLIP's causal text transformer; pooled at the first end-of-text token, then projected."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_dim, True, cfg.act, cfg.eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.proj = nn.Linear(cfg.width, cfg.proj_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def attention_modules(self) -> list[Attention]:
        return [cast(Attention, b.attn) for b in self.blocks]  # Block or PromptedBlock

    def eot_positions(self, ids: Tensor) -> Tensor:
        """Index of the first end-of-text token per row of ``ids`` ``(B, L)`` -> ``(B,)``."""
        is_eot = ids == self.cfg.eot_token_id
        if not bool(is_eot.any(dim=1).all()):
            raise ValueError(f"every token row needs an end-of-text token (id {self.cfg.eot_token_id})")
        return is_eot.int().argmax(dim=1)

    def forward_tokens(self, ids: Tensor) -> Tensor:
        """Token ids ``(B, L)`` -> contextual tokens ``(B, L, W)`` (after ``ln_final``)."""
        return self.encode_embeddings(self.token_embedding(ids))

    def encode_embeddings(self, x: Tensor) -> Tensor:
        """Token embeddings ``(B, L, W)`` (before positions) -> contextual tokens ``(B, L, W)``.

        The entry point for learned prompt vectors (CoOp): replace rows of
        ``token_embedding(ids)`` and run the causal transformer. The mask is causal, so the
        tokens up to the end-of-text token do not depend on anything after it: ``L`` may be cut
        to the longest prompt without changing the result.
        """
        length = x.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(f"{length} tokens exceed the context length {self.cfg.context_length}")
        x = x + self.pos_embed[:length]
        causal = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        for blk in self.blocks:
            x = blk(x, causal)
        return self.norm(x)

    def pool(self, tokens: Tensor, eot: Tensor) -> Tensor:
        """Contextual tokens ``(B, L, W)`` and end-of-text positions ``(B,)`` -> ``(B, proj_dim)``."""
        return self.proj(tokens[torch.arange(tokens.shape[0], device=tokens.device), eot])

    def forward(self, ids: Tensor) -> Tensor:
        """Token ids ``(B, L)`` -> text embeddings ``(B, proj_dim)`` (not normalised)."""
        return self.pool(self.forward_tokens(ids), self.eot_positions(ids))


class CLIP(Backbone):
    """A CLIP model that is also a backbone: the image tower's contract plus text encoding."""

    def __init__(
        self, visual: Backbone, text: TextTransformer, tokenizer=None, logit_scale: float = 4.6052
    ) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.tokenizer = tokenizer
        #: prompt templates for zero-shot classifiers (``None``: CLIP's photo templates)
        self.templates: tuple[str, ...] | None = None
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.num_features = visual.num_features
        self.num_prefix_tokens = visual.num_prefix_tokens
        self.patch_size = visual.patch_size
        self.preprocess = visual.preprocess
        caps = visual.capabilities
        self.capabilities = Capabilities(caps.attention, caps.global_cls, caps.tokens, text=True)

    def attention_modules(self) -> list[Attention]:
        """The image tower's attention layers (``record`` on a CLIP records the image side)."""
        finder = getattr(self.visual, "attention_modules", None)
        return list(finder()) if callable(finder) else []

    def grid_size(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        return self.visual.grid_size(image_size)

    def forward_tokens(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        return self.visual.forward_tokens(x, attn_bias=attn_bias)

    def forward_head(self, tokens: Tensor) -> Tensor:
        return self.visual.forward_head(tokens)

    def forward_head_tokens(self, tokens: Tensor) -> Tensor:
        return self.visual.forward_head_tokens(tokens)

    def forward_features(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        return self.visual.forward_features(x, attn_bias=attn_bias)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        return self.visual.forward_intermediates(x, indices)

    def token_blocks(self) -> int:
        return self.visual.token_blocks()

    def token_width(self) -> int:
        return self.visual.token_width()

    def embed_tokens(self, x: Tensor) -> Tensor:
        return self.visual.embed_tokens(x)

    def forward_blocks(
        self, x: Tensor, start: int = 0, stop: int | None = None, attn_bias: AttnBias = None
    ) -> Tensor:
        return self.visual.forward_blocks(x, start, stop, attn_bias)

    def encode_image(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> image embeddings ``(B, E)`` (not normalised)."""
        return self.visual.forward_features(x)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Texts -> token ids ``(B, context_length)`` with start/end tokens and zero padding."""
        if self.tokenizer is None:
            raise RuntimeError("this CLIP has no tokenizer; pass token ids to encode_text instead")
        return self.tokenizer(list(texts), context_length=self.text.cfg.context_length)

    def encode_text(self, texts: Sequence[str] | Tensor) -> Tensor:
        """Texts (or token ids ``(B, L)``) -> text embeddings ``(B, E)`` (not normalised)."""
        ids = texts if isinstance(texts, Tensor) else self.tokenize(texts)
        return self.text(ids.to(self.logit_scale.device))
