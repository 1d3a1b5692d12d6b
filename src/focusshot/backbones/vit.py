"""One owned Vision Transformer for CLIP vision towers, DINO/DeiT ViTs and DINOv2.

Dosovitskiy et al., *An Image is Worth 16x16 Words* (ICLR 2021); CLIP's variant (Radford et
al., 2021) adds a pre-norm ``ln_pre``, QuickGELU and a projection of the pooled token; DINOv2
(Oquab et al., 2023) adds layer scale and, optionally, register tokens (Darcet et al., 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.attention.core import Attention
from focusshot.backbones.base import AttnBias, Backbone, Capabilities, Preprocess, bias_for


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of OpenAI's CLIP."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    """Activation by name: ``gelu`` (exact), ``gelu_tanh``, ``quick_gelu`` or ``relu``."""
    table: dict[str, Callable[[], nn.Module]] = {
        "gelu": lambda: nn.GELU(),
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "quick_gelu": QuickGELU,
        "relu": nn.ReLU,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(table)}")
    return table[name]()


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``: ``(..., C) -> (..., C)``."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma * x`` (CaiT; DINOv2)."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1 x)) ; x + ls2(mlp(norm2 x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        qkv_bias: bool = True,
        act: str = "gelu",
        eps: float = 1e-6,
        layer_scale: float | None = None,
        drop: float = 0.0,
        layout: str = "global",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop, layout=layout)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, act=act, drop=drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """``(B, N, C) -> (B, N, C)``; ``attn_bias`` broadcasts to ``(B, H, N, N)``."""
        self.attn.tap.put("block_in", x)
        x = x + self.ls1(self.attn(self.norm1(x), attn_bias))
        return x + self.ls2(self.mlp(self.norm2(x)))


@dataclass
class ViTConfig:
    """Hyper-parameters of :class:`VisionTransformer` (defaults: ViT-B/16, DINO style)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    qkv_bias: bool = True
    patch_bias: bool = True
    pre_norm: bool = False
    act: str = "gelu"
    eps: float = 1e-6
    layer_scale: float | None = None
    num_registers: int = 0
    pool: str = "cls"
    proj_dim: int | None = None
    in_chans: int = 3
    pos_antialias: bool = False


class VisionTransformer(Backbone):
    """ViT with a [CLS] token, optional registers, optional ``ln_pre`` and output projection.

    Token layout: ``[CLS, reg_1..reg_R, patch_1..patch_P]`` so ``num_prefix_tokens = 1 + R``.
    ``forward_features`` returns the final-normed [CLS] token (or the patch mean when
    ``pool="avg"``), projected to ``proj_dim`` for CLIP.
    """

    def __init__(self, cfg: ViTConfig, preprocess: Preprocess | None = None) -> None:
        super().__init__()
        if cfg.pool not in ("cls", "avg"):
            raise ValueError(f"pool must be 'cls' or 'avg', got {cfg.pool!r}")
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.num_prefix_tokens = 1 + cfg.num_registers
        self.num_features = cfg.proj_dim or cfg.width
        self.capabilities = Capabilities(attention=True, global_cls=True, tokens=True)
        if preprocess is not None:
            self.preprocess = preprocess
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(
            cfg.in_chans, cfg.width, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.width)) if cfg.num_registers else None
        )
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, cfg.width) * 0.02)
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_dim, cfg.qkv_bias, cfg.act, cfg.eps, cfg.layer_scale)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.proj = nn.Linear(cfg.width, cfg.proj_dim, bias=False) if cfg.proj_dim else None
        nn.init.normal_(self.cls_token, std=0.02)

    def attention_modules(self) -> list[Attention]:
        return [cast(Attention, b.attn) for b in self.blocks]  # Block or PromptedBlock

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """Position embeddings ``(1, 1 + h*w, C)``, bicubically resized when the grid differs."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        side = int(round(n**0.5))
        if side * side == h * w and h == w:
            return pos
        patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(
            patch.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=self.cfg.pos_antialias
        ).to(pos.dtype)
        return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def token_blocks(self) -> int:
        return len(self.blocks)

    def token_width(self) -> int:
        return int(self.cls_token.shape[-1])

    def embed_tokens(self, x: Tensor) -> Tensor:
        return self.embed(x)

    def embed(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> tokens entering block 0 ``(B, 1 + R + P, C)``."""
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self._pos_embed(h, w)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        return self.norm_pre(x)

    def forward_blocks(
        self, x: Tensor, start: int = 0, stop: int | None = None, attn_bias: AttnBias = None
    ) -> Tensor:
        """Run blocks ``start..stop-1`` on tokens ``(B, N, C)`` (bias indexed by absolute layer)."""
        stop = len(self.blocks) if stop is None else stop
        for i in range(start, stop):
            x = self.blocks[i](x, bias_for(attn_bias, i))
        return x

    def forward_tokens(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        return self.forward_blocks(self.embed(x), attn_bias=attn_bias)

    def forward_head(self, tokens: Tensor) -> Tensor:
        pooled = tokens[:, 0] if self.cfg.pool == "cls" else tokens[:, self.num_prefix_tokens :].mean(dim=1)
        pooled = self.norm(pooled)
        return self.proj(pooled) if self.proj is not None else pooled

    def forward_head_tokens(self, tokens: Tensor) -> Tensor:
        """``(B, N, C)`` -> final norm (and projection) of every token ``(B, N, num_features)``."""
        out = self.norm(tokens)
        return self.proj(out) if self.proj is not None else out

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Tokens ``(B, N, C)`` after each block in ``indices`` (un-normed)."""
        depth = len(self.blocks)
        wanted = {i % depth for i in indices}
        out: dict[int, Tensor] = {}
        x = self.embed(x)
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            x = blk(x)
            if i in wanted:
                out[i] = x
        return [out[i % depth] for i in indices]
