"""The one attention module every focusshot transformer uses, and its recording tap.

``Attention`` keeps separate ``q``, ``k`` and ``v`` projections (so LoRA can target q and v)
and takes an explicit additive ``attn_bias`` that broadcasts to the logits of shape
``(B, H, N, N)``. While nothing is recorded it runs the fused
:func:`torch.nn.functional.scaled_dot_product_attention`; while a :func:`focusshot.attention.record`
context is open on it, it runs the explicit softmax path and hands what was asked for to its
:class:`AttentionTap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: What a tap can record, with the shape each tensor has (for windowed attention, such as Swin's,
#: ``B`` is images x windows and ``N`` the tokens of one window).
TAP_KINDS: dict[str, str] = {
    "logits": "(B, H, N, N) pre-softmax attention logits, bias included",
    "probs": "(B, H, N, N) attention probabilities (before attention dropout)",
    "head_out": "(B, H, N, D) per-head outputs, before the output projection",
    "block_in": "(B, N, C) the input of the block that owns this attention",
}


@dataclass
class AttentionTap:
    """Recording state of one attention module; inert unless a recording switches it on.

    ``layout`` says how rows map to images: ``"global"`` (every token attends to every
    token; row 0 is [CLS] where the model has one) or ``"windowed"`` (Swin: rows are tokens
    of one window, batches are ``B * num_windows``; no global [CLS] row exists).
    """

    layout: str = "global"
    kinds: frozenset[str] = frozenset()
    keep_grad: bool = False
    #: capture only forwards run with gradients enabled (validation passes inside a training
    #: recording then take the fused path and keep nothing)
    training_only: bool = False
    store: dict[str, list[Tensor]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.kinds) and not (self.training_only and not torch.is_grad_enabled())

    def wants(self, kind: str) -> bool:
        return kind in self.kinds

    def put(self, kind: str, value: Tensor) -> None:
        """Keep ``value`` if ``kind`` is being recorded (with its graph when gradients are asked)."""
        if kind not in self.kinds or not self.active:
            return
        if self.keep_grad:
            if value.requires_grad:
                value.retain_grad()
        else:
            value = value.detach()
        self.store.setdefault(kind, []).append(value)


def _bias_as_float(bias: Tensor | None, like: Tensor) -> Tensor | None:
    """Turn a boolean mask (True = may attend) into an additive float bias."""
    if bias is None:
        return None
    if bias.dtype == torch.bool:
        out = torch.zeros(bias.shape, dtype=like.dtype, device=like.device)
        return out.masked_fill(~bias, float("-inf"))
    return bias.to(dtype=like.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections and an explicit bias.

    Args:
        dim: token width ``C``.
        num_heads: number of heads ``H``; ``C`` must be divisible by it.
        qkv_bias: whether q, k and v have biases.
        proj_bias: whether the output projection has a bias.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
        scale: logit scale; ``head_dim ** -0.5`` when ``None``.
        layout: ``"global"`` or ``"windowed"`` (see :class:`AttentionTap`).
        out_dim: width of the output projection; ``dim`` when ``None`` (CLIP's attention pool
            projects to its embedding width here).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        scale: float | None = None,
        layout: str = "global",
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale if scale is not None else self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, out_dim or dim, bias=proj_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.tap = AttentionTap(layout=layout)

    def _fusable(self) -> bool:
        """q, k and v are plain ``nn.Linear`` layers (no adapter wraps them)."""
        return type(self.q) is nn.Linear and type(self.k) is nn.Linear and type(self.v) is nn.Linear

    def _qkv_weight(self) -> Tensor:
        return torch.cat([self.q.weight, self.k.weight, self.v.weight], dim=0)

    def _qkv_bias(self) -> Tensor | None:
        biases = [self.q.bias, self.k.bias, self.v.bias]
        if all(bb is None for bb in biases):
            return None
        return torch.cat(
            [bb if bb is not None else self.q.weight.new_zeros(self.q.out_features) for bb in biases]
        )

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """Attend.

        Args:
            x: tokens ``(B, N, C)``.
            attn_bias: additive float bias (or boolean mask, True = may attend) broadcastable
                to ``(B, H, N, N)``; added to the logits before the softmax.

        Returns:
            ``(B, N, out_dim)``.
        """
        b, n, c = x.shape
        if self._fusable() and not torch.is_grad_enabled():
            # inference: one GEMM for q, k and v (same maths; plain Linear layers only, so adapters
            # are respected). Training keeps three GEMMs, so gradients are summed as they always were.
            qkv = F.linear(x, self._qkv_weight(), self._qkv_bias())
            q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        bias = _bias_as_float(attn_bias, q)
        drop = self.attn_drop if self.training else 0.0
        if not self.tap.active:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=self.scale)
        else:
            out = self._explicit(q, k, v, bias, drop)
        out = out.transpose(1, 2).reshape(b, n, c)
        result: Tensor = self.proj_drop(self.proj(out))
        return result

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, drop: float) -> Tensor:
        """The reference path: softmax written out, every stage offered to the tap."""
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        self.tap.put("logits", logits)
        probs = logits.softmax(dim=-1)
        self.tap.put("probs", probs)
        if drop > 0.0:
            probs = F.dropout(probs, p=drop)
        out = probs @ v
        self.tap.put("head_out", out)
        return out
