"""Swin Transformer: hierarchical ViT with (shifted) window attention.

Liu et al., *Swin Transformer: Hierarchical Vision Transformer using Shifted Windows* (ICCV 2021).
The image is cut into ``patch_size`` patches; each stage runs blocks of multi-head self-attention
inside non-overlapping ``window_size x window_size`` windows (W-MSA), every second block on windows
shifted by ``window_size // 2`` (SW-MSA, Sec. 3.2 of the paper, "efficient batch computation for
shifted configuration": a cyclic shift plus a mask that stops tokens from different image regions
attending to each other), with a learned relative position bias ``B`` in
``softmax(Q K^T / sqrt(d) + B) V`` (Eq. 4). Between stages, patch merging concatenates 2x2
neighbours and halves the width, so stage ``i`` has ``embed_dim * 2**i`` channels at stride
``patch_size * 2**i``.

Window attention runs through focusshot's own :class:`~focusshot.attention.core.Attention` with
``layout="windowed"``: the relative position bias and the shift mask are its additive
``attn_bias`` of shape ``(B * nW, H, N, N)`` with ``N = window_size**2`` tokens per window and
``nW`` windows per image. There is no global token, so the backbone declares
``capabilities.global_cls = False`` and refuses user attention biases.

The numerics follow the reference implementations (Microsoft's, which iBOT reuses, and Hugging
Face's): feature maps are zero-padded on the bottom/right to window multiples after ``norm1``
(padded tokens take part as keys, as in the reference), the shift mask uses ``-100`` rather than
``-inf``, and a stage whose feature map at the configured ``image_size`` is no larger than the
window uses one unshifted window of that size (with a relative-position table of that size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.attention.core import Attention
from focusshot.backbones.base import AttnBias, Backbone, Capabilities, Preprocess
from focusshot.backbones.vit import Mlp

#: The logit offset the reference implementations put between tokens of different shifted regions.
SHIFT_MASK_VALUE = -100.0


@dataclass
class SwinConfig:
    """Hyper-parameters of :class:`SwinTransformer` (defaults: Swin-T, patch 4, window 7, 224 px).

    Attributes:
        image_size: the training resolution (int or ``(height, width)``); decides which stages are
            small enough to use a single unshifted window, as in the reference.
        patch_size: side of the square patches of the stem.
        embed_dim: width of stage 0; stage ``i`` has ``embed_dim * 2**i`` channels.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the attention windows, in tokens.
        mlp_ratio: MLP hidden width over token width.
        qkv_bias: whether q, k and v have biases.
        eps: LayerNorm epsilon of the blocks and the final norm (Microsoft 1e-5, iBOT 1e-6).
        patch_norm_eps: epsilon of the patch-embedding and patch-merging norms; ``None`` means
            ``eps``. Hugging Face always uses 1e-5 there, whatever its ``layer_norm_eps``.
        patch_norm: LayerNorm after the patch embedding (true of all released Swins).
        abs_pos_embed: learned absolute position embedding after the stem ("ape", off in Swin).
        act: MLP activation (see :func:`focusshot.backbones.vit.make_act`).
        drop: dropout after attention projection and in the MLP (training only).
        attn_drop: dropout on attention probabilities (training only).
        drop_path_rate: stochastic depth rate of the last block, rising linearly from 0.
        in_chans: input channels.
        table_per_config: every block's relative-position table has the configured window's
            ``(2 window_size - 1)**2`` rows and the window shrinks only at run time (Hugging
            Face's layout); ``False``: a stage whose map is no larger than the window at the
            training resolution gets a table of that smaller window (the original code's).
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    eps: float = 1e-5
    patch_norm_eps: float | None = None
    patch_norm: bool = True
    abs_pos_embed: bool = False
    act: str = "gelu"
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path_rate: float = 0.0
    in_chans: int = 3
    table_per_config: bool = False

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if isinstance(self.image_size, Sequence):
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(
                f"depths {self.depths} and num_heads {self.num_heads} need the same, non-zero length"
            )
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(
                    f"stage {i}: width {self.embed_dim * 2**i} is not divisible by {heads} heads"
                )
        if self.window_size < 1 or self.patch_size < 1:
            raise ValueError("window_size and patch_size must be positive")

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016): drop a residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``(B, ...) -> (B, ...)``; identity in eval mode or when ``p == 0``."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def window_partition(x: Tensor, window: int) -> Tensor:
    """Cut a map ``(B, H, W, C)`` (``H``, ``W`` multiples of ``window``) into windows.

    Returns:
        ``(B * nW, window * window, C)``, windows in row-major order within each image, images
        outermost (window ``b * nW + r * (W // window) + c``).
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // window) * (w // window), window * window, c)


def window_merge(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window * window, C) -> (B, h, w, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int, table_window: int | None = None) -> Tensor:
    """Rows of the relative-position table for every (query, key) pair of a ``window`` window.

    The table of a block whose window is ``T`` has ``(2T - 1)**2`` rows, one per offset
    ``(dy, dx)`` with ``|dy|, |dx| < T``, at row ``(dy + T - 1) * (2T - 1) + (dx + T - 1)``
    (paper Sec. 3.2, "relative position bias"). A smaller window ``window <= T`` reads the same
    table at its (fewer) offsets.

    Returns:
        ``(window**2, window**2)`` long tensor; entry ``[i, j]`` is the row for query ``i`` and key ``j``.
    """
    t = window if table_window is None else table_window
    if window > t:
        raise ValueError(f"a window of {window} needs a table of at least that size, got {t}")
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (t - 1)
    dx = xs[:, None] - xs[None, :] + (t - 1)
    return dy * (2 * t - 1) + dx


def shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device | None = None) -> Tensor:
    """Additive mask of shifted-window attention over a padded map of ``hp x wp`` tokens.

    After the cyclic shift by ``-shift``, the last ``window`` rows (and columns) of the map hold
    tokens from up to three regions that were not adjacent in the image: ``[0, hp - window)``,
    ``[hp - window, hp - shift)`` and ``[hp - shift, hp)``. Tokens may attend only within their
    own region pair (row region, column region).

    Returns:
        ``(nW, window**2, window**2)`` with ``0`` where query and key share a region and
        :data:`SHIFT_MASK_VALUE` elsewhere.
    """

    def regions(n: int) -> Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    label = regions(hp)[:, None] * 3 + regions(wp)[None, :]  # (hp, wp)
    per_window = window_partition(label[None, :, :, None], window).squeeze(-1)  # (nW, N)
    differ = per_window[:, :, None] != per_window[:, None, :]
    zeros = torch.zeros(differ.shape, device=device)
    return zeros.masked_fill(differ, SHIFT_MASK_VALUE)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood, normalise, and project ``4C -> 2C`` (paper Sec. 3.1).

    Odd maps are zero-padded on the bottom/right first, as in the reference.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """Tokens ``(B, h*w, C)`` of an ``h x w`` map -> ``(B, ceil(h/2)*ceil(w/2), 2C)`` and the new size."""
        h, w = hw
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Channel order (row, col) offsets (0,0), (1,0), (0,1), (1,1), as in the reference weights.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        h2, w2 = x.shape[1], x.shape[2]
        x = self.reduction(self.norm(x.reshape(b, h2 * w2, 4 * c)))
        return x, (h2, w2)


class SwinBlock(nn.Module):
    """One Swin block: ``x + DP(W-MSA(norm1 x))`` then ``x + DP(MLP(norm2 x))`` (paper Eq. 3).

    Args:
        dim: token width ``C``.
        num_heads: heads ``H``.
        window: the window side this block uses at the configured resolution (also the side of
            its relative-position table).
        shift: the cyclic shift at the configured resolution (``0`` for W-MSA).
        mlp_ratio, qkv_bias, eps, act, drop, attn_drop, drop_path: as in :class:`SwinConfig`.
    """

    relative_position_index: Tensor  # a buffer

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eps: float = 1e-5,
        act: str = "gelu",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift {shift} must lie in [0, window={window})")
        self.window = window
        self.shift = shift
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, layout="windowed"
        )
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, drop=drop)

    def window_and_shift(self, h: int, w: int) -> tuple[int, int]:
        """Window side and shift used on an ``h x w`` map.

        The window shrinks to the map when the map is smaller; a map no larger than the window
        is one unshifted window (the reference's rule).
        """
        win = min(self.window, h, w)
        shift = self.shift if min(h, w) > win else 0
        return win, shift

    def relative_bias(self, win: int) -> Tensor:
        """Relative position bias ``(H, win**2, win**2)`` read from this block's table."""
        if win == self.window:
            index = self.relative_position_index
        else:
            index = relative_position_index(win, self.window).to(self.relative_position_bias_table.device)
        n = win * win
        return (
            self.relative_position_bias_table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
        )

    def attn_bias(self, batch: int, hp: int, wp: int, win: int, shift: int) -> Tensor:
        """The additive bias handed to :class:`Attention` for a padded ``hp x wp`` map.

        Returns:
            ``(1, H, N, N)`` (relative position bias only) without a shift, else
            ``(batch * nW, H, N, N)`` (plus the shift mask of each window), ``N = win**2``.
        """
        rel = self.relative_bias(win).unsqueeze(0)  # (1, H, N, N)
        if not shift:
            return rel
        mask = shift_mask(hp, wp, win, shift, device=rel.device).to(rel.dtype)  # (nW, N, N)
        bias = rel + mask.unsqueeze(1)  # (nW, H, N, N)
        return bias.repeat(batch, 1, 1, 1)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Tokens ``(B, h*w, C)`` of an ``h x w`` map -> ``(B, h*w, C)``."""
        h, w = hw
        b, n, c = x.shape
        if n != h * w:
            raise ValueError(f"got {n} tokens for a {h}x{w} map")
        self.attn.tap.put("block_in", x)
        win, shift = self.window_and_shift(h, w)
        y = self.norm1(x).view(b, h, w, c)
        pad_h, pad_w = (-h) % win, (-w) % win
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, win)  # (B * nW, N, C)
        windows = self.attn(windows, self.attn_bias(b, hp, wp, win, shift))
        y = window_merge(windows, win, hp, wp)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :h, :w].reshape(b, h * w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """The blocks of one stage and the patch merging that follows it (none after the last stage)."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Tokens ``(B, h*w, C)`` -> ``(B, h*w, C)`` after the blocks (before the merging)."""
        for blk in self.blocks:
            x = blk(x, hw)
        return x


class SwinTransformer(Backbone):
    """Swin Transformer backbone with focusshot's window :class:`Attention` (Liu et al., ICCV 2021).

    ``forward_tokens`` returns the last stage's tokens ``(B, L, C)`` (un-normed, row-major over
    the last-stage grid, see :meth:`grid_size`); ``forward_head`` applies the final LayerNorm and
    averages the tokens, as the reference's pooled output. Inputs of any size are accepted: the
    image is zero-padded to a multiple of ``patch_size`` and feature maps to window multiples.
    """

    def __init__(self, cfg: SwinConfig, preprocess: Preprocess | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        stages = len(cfg.depths)
        self.num_features = cfg.embed_dim * 2 ** (stages - 1)
        self.num_prefix_tokens = 0
        self.patch_size = cfg.patch_size * 2 ** (stages - 1)
        self.capabilities = Capabilities(attention=True, global_cls=False, tokens=True)
        if preprocess is not None:
            self.preprocess = preprocess
        stem_eps = cfg.eps if cfg.patch_norm_eps is None else cfg.patch_norm_eps
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.patch_norm = nn.LayerNorm(cfg.embed_dim, eps=stem_eps) if cfg.patch_norm else nn.Identity()
        h0, w0 = (s // cfg.patch_size for s in cfg.image_hw)
        if cfg.abs_pos_embed:
            self.pos_embed: nn.Parameter | None = nn.Parameter(torch.zeros(1, h0 * w0, cfg.embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(cfg.drop)
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        hi, wi = h0, w0
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            dim = cfg.embed_dim * 2**i
            if i:  # patch merging pads an odd map: the next map is the ceiling of half
                hi, wi = math.ceil(hi / 2), math.ceil(wi / 2)
            # The original code fixes each stage's window (and table) from its map size at the
            # training resolution; Hugging Face keeps the configured table and shrinks at run time
            # (SwinBlock.window_and_shift applies that rule to every input either way).
            side = min(hi, wi)
            small = side <= cfg.window_size and not cfg.table_per_config
            window = max(side, 1) if small else cfg.window_size
            blocks = [
                SwinBlock(
                    dim,
                    heads,
                    window,
                    shift=0 if (small or j % 2 == 0) else cfg.window_size // 2,
                    mlp_ratio=cfg.mlp_ratio,
                    qkv_bias=cfg.qkv_bias,
                    eps=cfg.eps,
                    act=cfg.act,
                    drop=cfg.drop,
                    attn_drop=cfg.attn_drop,
                    drop_path=rates[sum(cfg.depths[:i]) + j],
                )
                for j in range(depth)
            ]
            merge = PatchMerging(dim, eps=stem_eps) if i < stages - 1 else None
            self.stages.append(SwinStage(blocks, merge))
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.eps)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def attention_modules(self) -> list[Attention]:
        """Every window attention, in forward order (stage by stage, block by block)."""
        return [cast(SwinBlock, blk).attn for stage in self.stages for blk in cast(SwinStage, stage).blocks]

    def grid_size(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Last-stage token grid ``(rows, cols)`` for an input of ``image_size`` (crop size by default).

        Equals ``size // patch_size`` for sizes that are multiples of the total stride (32 for
        Swin-T); other sizes are padded, so the grid rounds up.
        """
        if image_size is None:
            image_size = self.preprocess.crop
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        h, w = math.ceil(h / self.cfg.patch_size), math.ceil(w / self.cfg.patch_size)
        for _ in range(len(self.stages) - 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """Absolute position embedding ``(1, h*w, C)``, bicubically resized when the grid differs."""
        assert self.pos_embed is not None
        h0, w0 = (s // self.cfg.patch_size for s in self.cfg.image_hw)
        if (h, w) == (h0, w0):
            return self.pos_embed
        grid = self.pos_embed.reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)
        return grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Images ``(B, 3, H, W)`` -> stage-0 tokens ``(B, h*w, embed_dim)`` and ``(h, w)``.

        ``H`` and ``W`` are zero-padded on the bottom/right to multiples of ``patch_size``.
        """
        p = self.cfg.patch_size
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = self.patch_norm(x.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            x = x + self._pos_embed(h, w)
        return self.pos_drop(x), (h, w)

    def _stage_outputs(self, x: Tensor, last: int) -> list[Tensor]:
        """Tokens ``(B, L_i, C_i)`` after the blocks of stages ``0..last`` (before their merging)."""
        outs = []
        x, hw = self.embed(x)
        for i, stage in enumerate(cast(list[SwinStage], list(self.stages[: last + 1]))):
            x = stage(x, hw)
            outs.append(x)
            if stage.downsample is not None and i < last:
                x, hw = stage.downsample(x, hw)
        return outs

    def forward_tokens(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        """Images ``(B, 3, H, W)`` -> last-stage tokens ``(B, L, num_features)`` before the final norm.

        Raises:
            ValueError: when an ``attn_bias`` is given: window attention has no global token row
                to bias (``capabilities.global_cls`` is ``False``).
        """
        if attn_bias is not None and (isinstance(attn_bias, Tensor) or any(b is not None for b in attn_bias)):
            raise ValueError(
                "SwinTransformer does not take attn_bias: its attention is windowed (layout 'windowed'), "
                "with no global token row to bias; check backbone.capabilities.global_cls before "
                "passing foveal or prompt biases"
            )
        return self._stage_outputs(x, len(self.stages) - 1)[-1]

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Last-stage tokens ``(B, L, C)`` -> final LayerNorm, then mean over tokens -> ``(B, C)``."""
        return self.norm(tokens).mean(dim=1)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Token maps ``(B, L_i, C_i)`` at the end of each stage in ``indices`` (before merging, un-normed).

        Stage ``i`` has ``C_i = embed_dim * 2**i`` channels on a grid of stride ``patch_size * 2**i``
        (row-major); negative indices count from the last stage.
        """
        n = len(self.stages)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise ValueError(f"stage indices {bad} out of range for {n} stages")
        if not indices:
            return []
        wanted = [i % n for i in indices]
        outs = self._stage_outputs(x, max(wanted))
        return [outs[i] for i in wanted]
