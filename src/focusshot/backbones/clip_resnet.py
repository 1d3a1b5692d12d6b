"""CLIP's ModifiedResNet image tower with an attention-pooling head.

Radford et al., *Learning Transferable Visual Models From Natural Language Supervision* (ICML 2021),
section 2.4: a ResNet-D style stem of three 3x3 convolutions followed by an average pool,
anti-aliased strided convolutions in the bottlenecks (Zhang, *Making Convolutional Networks
Shift-Invariant Again*, 2019: an average pool before every stride, never a strided conv), and the
global average pool replaced by one layer of multi-head "QKV" attention whose query is the
mean of the final feature map.

The attention pool is built from focusshot's own :class:`~focusshot.attention.core.Attention`.
CLIP lets only the mean token ask a query; here every token of ``[mean, spatial_1..spatial_HW]``
asks one and row 0 is kept. Softmax rows are independent, so row 0 is exactly CLIP's result, and
the pool becomes recordable (``focusshot.attention.record``) and biasable (FALIP, SAFE) like the
[CLS] row of a ViT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.attention.core import Attention
from focusshot.backbones.base import CLIP_PREPROCESS, AttnBias, Backbone, Capabilities, Preprocess, bias_for


@dataclass
class ResNetConfig:
    """Hyper-parameters of :class:`ModifiedResNet` (defaults: CLIP RN50).

    Attributes:
        layers: bottleneck blocks in each of the four stages.
        width: channels after the stem; stage ``i`` has ``width * 2**i`` bottleneck channels
            and ``4 * width * 2**i`` output channels, so the pool sees ``32 * width`` channels.
        output_dim: width of the projected embedding (CLIP's joint embedding dimension).
        heads: heads of the attention pool (CLIP: ``32 * width // 64``).
        image_size: trained input side; the pool's positional grid is ``image_size // 32``.
    """

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    output_dim: int = 1024
    heads: int = 32
    image_size: int = 224


class Bottleneck(nn.Module):
    """CLIP's bottleneck: ``1x1 -> 3x3 -> avgpool(stride) -> 1x1 (x4)`` plus a pooled shortcut.

    ``(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)``. All convolutions are
    stride 1 and bias-free; downsampling is an average pool (anti-aliasing), both in the main
    branch (after the 3x3 conv) and in the shortcut (before its 1x1 conv).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != out:
            self.downsample = Downsample(inplanes, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.pool(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(y + shortcut)


class Downsample(nn.Module):
    """Shortcut of a bottleneck: ``avgpool(stride) -> 1x1 conv -> BN``."""

    def __init__(self, inplanes: int, out: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(inplanes, out, 1, bias=False)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.pool(x)))


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling over a feature map, on focusshot's :class:`Attention`.

    Tokens are ``[mean, spatial_1..spatial_HW]`` plus a learned positional embedding
    ``pos_embed`` of shape ``(1, 1 + S*S, C)`` for the trained grid ``S x S`` (bicubically resized
    for other grids). The attention (``q``, ``k``, ``v``: ``C -> C``; ``proj``: ``C -> output_dim``)
    runs over all tokens and row 0, the mean token's query, is the pooled embedding.

    Args:
        grid: trained spatial side ``S`` (``image_size // 32``).
        dim: channels ``C`` of the feature map.
        num_heads: attention heads.
        output_dim: width of the pooled embedding.
    """

    def __init__(self, grid: int, dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) / dim**0.5)
        self.attn = Attention(dim, num_heads, qkv_bias=True, proj_bias=True, out_dim=output_dim)

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """Positional embeddings ``(1, 1 + h*w, C)``, bicubically resized when the grid differs."""
        pos = self.pos_embed
        if h == self.grid and w == self.grid:
            return pos
        spatial = pos[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        spatial = F.interpolate(spatial.float(), size=(h, w), mode="bicubic", align_corners=False)
        spatial = spatial.to(pos.dtype)
        return torch.cat([pos[:, :1], spatial.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """Feature map ``(B, C, H, W)`` -> tokens ``(B, 1 + H*W, C)``: mean token first, positions added."""
        _, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return tokens + self._pos_embed(h, w).to(tokens.dtype)

    def attend(self, tokens: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """Pool tokens ``(B, N, C)`` -> row 0 of the attention ``(B, output_dim)``.

        ``attn_bias`` broadcasts to ``(B, H, N, N)``; only its row 0 changes the result.
        """
        self.attn.tap.put("block_in", tokens)
        return self.attn(tokens, attn_bias)[:, 0]

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """Feature map ``(B, C, H, W)`` -> pooled embedding ``(B, output_dim)``."""
        return self.attend(self.embed(x), attn_bias)


class ModifiedResNet(Backbone):
    """CLIP's ResNet image tower (RN50, RN101, RN50x4, ...) keeping the backbone contract.

    * ``forward_tokens``: images ``(B, 3, H, W)`` -> the tokens entering the attention pool
      ``(B, 1 + (H/32)(W/32), 32*width)``: the mean token, then the spatial tokens in row-major
      order, positional embedding added.
    * ``forward_head``: those tokens -> the attention-pooled, projected embedding ``(B, output_dim)``.
    * ``forward_features(x, attn_bias)``: both, with ``attn_bias`` given to the pool (the one
      attention layer; a per-layer sequence has one entry).
    * ``forward_intermediates``: feature maps ``(B, 4*width*2**i, H/2**(i+2), W/2**(i+2))`` after stage ``i``.
    """

    num_prefix_tokens = 1
    patch_size = 32

    def __init__(self, cfg: ResNetConfig, preprocess: Preprocess | None = None) -> None:
        super().__init__()
        if len(cfg.layers) != 4:
            raise ValueError(f"layers must name four stages, got {cfg.layers}")
        self.cfg = cfg
        self.num_features = cfg.output_dim
        self.capabilities = Capabilities(attention=True, global_cls=True, tokens=True)
        if preprocess is None:
            preprocess = dataclasses.replace(CLIP_PREPROCESS, resize=cfg.image_size, crop=cfg.image_size)
        self.preprocess = preprocess
        w = cfg.width
        # Stem: three 3x3 convs (the first strided), then a 2x2 average pool: /4 overall.
        self.conv1 = nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.act = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        stages = []
        for i, depth in enumerate(cfg.layers):
            planes = w * 2**i
            stride = 1 if i == 0 else 2
            blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(cfg.image_size // 32, w * 32, cfg.heads, cfg.output_dim)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def attention_modules(self) -> list[Attention]:
        """The pool's attention: the only attention layer of the tower."""
        return [self.attnpool.attn]

    def token_width(self) -> int:
        """Width of the tokens entering the attention pool (``32 * width``); no blocks run on them
        (``token_blocks() == 0``), they are what ``forward_head`` pools (the ``head_in`` prefix)."""
        return 32 * self.cfg.width

    def stem(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> ``(B, width, H/4, W/4)``."""
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward_map(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> last feature map ``(B, 32*width, H/32, W/32)``."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_tokens(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        """Images ``(B, 3, H, W)`` -> pool tokens ``(B, 1 + HW/32**2, 32*width)``.

        No attention runs before the pool, so a bias here would have nowhere to go: pass it to
        :meth:`forward_features` or :meth:`pool` instead.
        """
        if _has_bias(attn_bias):
            raise ValueError(
                "ModifiedResNet has no attention before its pool; pass attn_bias to forward_features() "
                "or pool(), where the attention pool uses it"
            )
        return self.attnpool.embed(self.forward_map(x))

    def pool(self, tokens: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """Pool tokens ``(B, N, C)`` -> projected embedding ``(B, output_dim)``, optionally biased."""
        return self.attnpool.attend(tokens, attn_bias)

    def forward_head(self, tokens: Tensor) -> Tensor:
        return self.pool(tokens)

    def forward_head_tokens(self, tokens: Tensor) -> Tensor:
        """``(B, N, C)`` -> every row of the attention pool ``(B, N, output_dim)``: each token asks
        its own query (row 0, the mean token's, is the pooled embedding)."""
        return self.attnpool.attn(tokens)

    def forward_features(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        """Images ``(B, 3, H, W)`` -> CLIP image embedding ``(B, output_dim)``.

        ``attn_bias`` broadcasts to the pool's logits ``(B, heads, N, N)`` with ``N = 1 + HW/32**2``
        (a sequence of one bias per attention layer has a single entry here).
        """
        return self.pool(self.forward_tokens(x), bias_for(attn_bias, 0))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Feature maps after the stages at ``indices`` (0..3; negative counts from the end)."""
        for i in indices:
            if not -4 <= i < 4:
                raise ValueError(f"stage index {i} out of range for 4 stages")
        if not indices:
            return []
        wanted = {i % 4 for i in indices}
        out: dict[int, Tensor] = {}
        x = self.stem(x)
        for i, stage in enumerate(self.stages[: max(wanted) + 1]):
            x = stage(x)
            if i in wanted:
                out[i] = x
        return [out[i % 4] for i in indices]


def _has_bias(attn_bias: AttnBias) -> bool:
    if attn_bias is None:
        return False
    if isinstance(attn_bias, Tensor):
        return True
    return any(b is not None for b in attn_bias)
