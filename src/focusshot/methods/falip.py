"""FALIP: a region prompt as a foveal attention bias.

Zhuang et al., "Visual Prompt as Foveal Attention Boosts CLIP Zero-Shot Performance" (ECCV 2024).
Instead of drawing on the image, FALIP adds a foveal attention mask to the [CLS] row of the last
self-attention layers of CLIP's image tower (:func:`focusshot.attention.foveal.foveal_bias`: a
min-max-normalised Gaussian over the region's patches, times ``alpha``), so the image embedding
draws more of its value from the region while every pixel stays as it was. Methods here:

* ``falip``: zero-shot CLIP on FALIP image features: ``logits = scale * cos(f, t_c)`` with ``t_c``
  the template-averaged class text embedding (as the ``zeroshot`` method; ``scale`` is CLIP's
  logit scale, 100 for the released models).
* ``falip_tip``: Tip-Adapter (Zhang et al., ECCV 2022) whose cache keys *and* queries are FALIP
  features of the support and query images (each with its own region); alpha and beta are searched
  on validation data when the protocol has them (their regions included).

The image-space prompts FALIP is compared against (``red_circle``, ``blur_box``) are in
:mod:`focusshot.methods.drawn_prompts`.

**Prefix.** FALIP changes nothing before its first biased block, so it reads the cached tokens
entering block ``L - k`` (``Prefix.tokens(L - k)``) and runs only the last ``k`` blocks per image
and region.

**Regions** come from the runner as ``(M, 4)`` boxes in ``[0, 1]`` coordinates of the evaluation
crop (``FitContext.regions`` for the support set, ``logits(query, regions=...)`` for the queries),
mapped from the data's boxes through the backbone's resize + centre crop
(:func:`focusshot.data.transforms.box_to_crop`). Option ``region``:

* ``box`` (default): the data's box of each image. An image without one stops the run (naming the
  image) unless ``missing_box="whole"``, when it gets no bias and is counted in ``regions_missing``.
* ``whole``: **no bias at all**, so ``falip`` is exactly plain zero-shot CLIP. (The official code
  given a whole-image box builds its Gaussian over *every* patch, which is not CLIP: the centre
  patches gain ``alpha`` over the border and all patches gain over [CLS] itself. "Whole image"
  here means "no region", the identity the comparison needs; pass a full-image box through
  ``region="box"`` for the official behaviour.)
* ``auto``: the region is found without labels: attention rollout (Abnar & Zuidema, 2020) of the
  [CLS] token over the blocks the prefix covers (the last ``k``, unbiased), turned into the
  bounding box of the patches holding ``keep`` of the mass (:func:`~focusshot.attention.foveal.rollout_box`).

**Choices, checked against the official code** (``pumpkin805/FALIP``, ``executor.py`` and
``clip/model.py``):

* ``alpha = 0.2``: the value the official code passes for the mask's peak;
* ``sigma = 100``, in **patches** (the official Gaussian is computed over the box's patch indices
  with ``sigma = 100``): on a ViT-B/16 grid (14 x 14) the raw Gaussian is nearly flat and the
  min-max normalisation shapes it into a dome that is ``alpha`` at the centre and ~0 at the box's
  corners, so ``sigma`` matters only when it is comparable to the box's size in patches;
* biased blocks: the official ViT-B/16 code biases blocks 8-11 of 12 (``if 0 <= i < 8`` skips
  the rest), i.e. the last 4. Option ``layers = k`` biases the last ``k`` blocks at any depth
  (clamped to the depth); ``layers_fraction = f > 0`` instead biases the last ``max(1, round(f L))``
  blocks (``1/3`` reproduces 4 of 12). The official ViT-L/14 code reuses the hard-coded 8, which
  biases the last 16 of 24; ``layers=16`` reproduces that;
* the bias is the same for every head and only touches the [CLS] row at the region's patch
  columns. Boxes are mapped through the backbone's resize-shorter + centre-crop geometry (the
  official code squashes the whole image to 224 x 224 instead), and the region's patches are
  exactly those the box overlaps (the official rounding also takes the patch before an edge that
  lies exactly on a patch boundary).

**Unleash** (``unleash=True``) is not in the official code; it follows the paper's observation that
heads respond to the foveal mask to different degrees, and amplifies each head's response: in every
biased block, the [CLS] row's per-head attention outputs ``G'`` (with the mask) are replaced by
``G' + (G' - G)`` with ``G`` the outputs of the same block without the mask (so attention runs twice
in those blocks). Because the output projection is affine, this equals ``2 proj(G') - proj(G)`` on
the [CLS] row; every other token is left as the masked pass computed it.

Backbones without a ViT token path and a global [CLS] row (Swin's windowed attention, CNNs, CLIP's
ResNets) are refused by ``falip``/``falip_tip`` with a clear error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor, nn

from focusshot.attention.foveal import foveal_bias, foveal_bias_graph, rollout_box
from focusshot.attention.record import record
from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.backbones.vit import Block
from focusshot.graph_mode import inference
from focusshot.heads import FittedHead, create_head
from focusshot.heads import fitted_from_state as head_from_state
from focusshot.methods.base import FitContext, Fitted, Method, options_from_dict, register_method
from focusshot.methods.regions import (
    RegionHeadFitted,
    check_region_options,
    device_dtype,
    resolve_regions,
    zeroshot_classifier,
)
from focusshot.methods.text import need_text
from focusshot.options import option

__all__ = [
    "FalipFitted",
    "FalipOptions",
    "FalipTipOptions",
    "biased_layers",
    "falip_features",
    "require_falip_backbone",
]


@dataclass(frozen=True)
class FalipOptions:
    """Options of ``falip`` (defaults: the official code's, see the module docstring)."""

    alpha: float = option(0.2, "peak of the foveal bias added to the [CLS] row's logits (official 0.2)")
    sigma: float = option(100.0, "std of the Gaussian over the region's patches, in patches (official 100)")
    layers: int = option(4, "bias the last k blocks (official: 4 of ViT-B/16's 12); clamped to the depth")
    layers_fraction: float = option(
        0.0, "> 0: bias the last max(1, round(f * depth)) blocks instead of layers"
    )
    region: str = option("box", "box (the data's boxes), whole (no bias: plain CLIP) or auto (rollout box)")
    keep: float = option(0.5, "region=auto: the share of rolled-out [CLS] mass the box's patches hold")
    unleash: bool = option(
        False, "amplify each head's response: [CLS] head outputs G' + (G' - G) in biased blocks"
    )
    missing_box: str = option("error", "an image without a box: error, or whole (no bias; counted)")
    scale: float = option(100.0, "CLIP's logit scale on cosine similarities (100 for released models)")
    batch_size: int = option(64, "images per forward pass")

    def __post_init__(self) -> None:
        if not (self.alpha == self.alpha and abs(self.alpha) != float("inf")):
            raise ValueError(f"alpha must be finite, got {self.alpha}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive (in patches), got {self.sigma}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {self.layers!r}")
        if not 0.0 <= self.layers_fraction <= 1.0:
            raise ValueError(f"layers_fraction must lie in [0, 1], got {self.layers_fraction}")
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep must lie in (0, 1], got {self.keep}")
        check_region_options(self.region, self.missing_box, self.scale, self.batch_size)


@dataclass(frozen=True)
class FalipTipOptions(FalipOptions):
    """Options of ``falip_tip``: FALIP's, plus Tip-Adapter's residual ratio and sharpness."""

    tip_alpha: float = option(
        1.0, "Tip-Adapter's residual ratio of the cache logits (used without validation)"
    )
    tip_beta: float = option(5.5, "Tip-Adapter's affinity sharpness (used without validation)")


# ------------------------------------------------------------------------------------------------
# FALIP features


def require_falip_backbone(backbone: Backbone, method: str = "falip") -> None:
    """Raise ``ValueError`` unless ``backbone`` has a ViT token path with a global [CLS] row."""
    caps = backbone.capabilities
    ok = caps.attention and caps.global_cls and backbone.token_blocks() > 0
    if not ok or int(backbone.num_prefix_tokens) < 1:
        raise ValueError(
            f"method {method!r} biases the [CLS] row of global self-attention, so it needs a ViT (or CLIP "
            f"ViT) with a [CLS] token and a token path; {type(backbone).__name__} "
            f"({backbone.identity.name}) has none (Swin's windowed attention, CNNs and CLIP ResNets "
            "cannot be biased this way)"
        )


def biased_layers(depth: int, layers: int = 4, layers_fraction: float = 0.0) -> int:
    """How many of the last blocks FALIP biases: ``max(1, round(f * depth))`` when ``f > 0``, else
    ``min(layers, depth)``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if layers_fraction > 0:
        return min(depth, max(1, round(layers_fraction * depth)))
    return min(int(layers), depth)


def _blocks(backbone: Backbone) -> list[Block]:
    tower = getattr(backbone, "visual", None) or backbone
    blocks = getattr(tower, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not all(isinstance(b, Block) for b in blocks):
        raise ValueError(
            f"unleash needs the focusshot ViT blocks of the image tower; {type(tower).__name__} has none"
        )
    return [cast(Block, b) for b in blocks]


def _unleashed_block(block: Block, x: Tensor, bias: Tensor) -> Tensor:
    """One pre-norm block whose [CLS] attention output is ``2 attn(x; bias) - attn(x)`` (``(B, N, C)``)."""
    h = block.norm1(x)
    masked = block.attn(h, bias)
    plain = block.attn(h, None)
    mixed = masked.clone()
    mixed[:, 0] = 2.0 * masked[:, 0] - plain[:, 0]
    x = x + block.ls1(mixed)
    out: Tensor = x + block.ls2(block.mlp(block.norm2(x)))
    return out


def _token_grid(backbone: Backbone, tokens: Tensor) -> tuple[int, int]:
    rows, cols = backbone.grid_size()
    prefix = int(backbone.num_prefix_tokens)
    if tokens.ndim != 3 or tokens.shape[1] != prefix + rows * cols:
        raise ValueError(
            f"expected tokens (M, {prefix + rows * cols}, C) ({prefix} prefix tokens and a {rows}x{cols} "
            f"grid at the backbone's crop size), got {tuple(tokens.shape)}"
        )
    return rows, cols


@inference
def falip_features(
    backbone: Backbone,
    tokens: Tensor,
    boxes: Tensor | None,
    start: int,
    *,
    alpha: float = 0.2,
    sigma: float = 100.0,
    unleash: bool = False,
    auto_keep: float | None = None,
    batch_size: int = 64,
) -> Tensor:
    """FALIP image features: tokens entering block ``start`` ``(M, N, C)`` -> pooled ``(M, D)`` float32.

    Blocks ``start .. L-1`` run with the foveal bias of ``boxes`` (``(M, 4)`` in [0, 1] crop
    coordinates; a NaN row or ``boxes=None``: no bias), then the backbone's head (CLIP: final norm
    and projection). With ``auto_keep`` the boxes are found per image by attention rollout over
    those blocks (:func:`~focusshot.attention.foveal.rollout_box`) and ``boxes`` is ignored. A batch
    whose bias is zero everywhere runs without one, so ``alpha=0`` is plain CLIP exactly.
    """
    grid = _token_grid(backbone, tokens)
    depth = backbone.token_blocks()
    if not 0 <= start < depth:
        raise ValueError(f"the first biased block must lie in 0..{depth - 1}, got {start}")
    if boxes is not None and tuple(boxes.shape) != (tokens.shape[0], 4):
        raise ValueError(f"regions must be ({tokens.shape[0]}, 4), got {tuple(boxes.shape)}")
    device, dtype = device_dtype(backbone)
    prefix = int(backbone.num_prefix_tokens)
    if torch.compiler.is_compiling() and auto_keep is None:
        # one traced graph (ONNX export): the whole batch in one pass, the bias built by tensor
        # operations and always applied (a NaN row's bias is zero: the same maths as none)
        x = tokens.to(device=device, dtype=dtype)
        bias = None
        if boxes is not None and alpha != 0:
            bias = foveal_bias_graph(boxes.to(device), grid, prefix, x.shape[1], alpha, sigma, dtype=dtype)
        return _biased_pass(backbone, x, start, bias, unleash).float()
    out = []
    for s in range(0, tokens.shape[0], batch_size):
        x = tokens[s : s + batch_size].to(device=device, dtype=dtype)
        b = None if boxes is None else boxes[s : s + batch_size]
        if auto_keep is not None:
            with record(backbone, "probs", layers=list(range(start, depth))) as rec:
                backbone.forward_blocks(x, start)
            b = rollout_box([rec.get("probs", i) for i in range(start, depth)], grid, prefix, auto_keep)
        bias = None
        if b is not None and alpha != 0 and not bool(torch.isnan(b).any(dim=1).all()):
            bias = foveal_bias(b, grid, prefix, x.shape[1], alpha, sigma, dtype=dtype, device=device)
        out.append(_biased_pass(backbone, x, start, bias, unleash).float().cpu())
    if not out:
        return torch.zeros(0, int(backbone.num_features))
    return torch.cat(out)


def _biased_pass(backbone: Backbone, x: Tensor, start: int, bias: Tensor | None, unleash: bool) -> Tensor:
    """Blocks ``start .. L-1`` over tokens ``x`` with the foveal ``bias`` (``None``: none; ``unleash``:
    FALIP's head-delta variant), then the backbone's head: ``(B, D)``."""
    if bias is None:
        y = backbone.forward_blocks(x, start)
    elif unleash:
        blocks, y = _blocks(backbone), x
        for i in range(start, backbone.token_blocks()):
            y = _unleashed_block(blocks[i], y, bias)
    else:
        y = backbone.forward_blocks(x, start, attn_bias=bias)
    out: Tensor = backbone.forward_head(y)
    return out


def _encode(
    method: str, backbone: Backbone, start: int, o: FalipOptions, tokens: Tensor, regions: Tensor | None
) -> Tensor:
    """FALIP features ``(M, D)`` of ``tokens`` with the options' region source."""
    return falip_features(
        backbone,
        tokens,
        resolve_regions(method, o.region, o.missing_box, regions),
        start,
        alpha=o.alpha,
        sigma=o.sigma,
        unleash=o.unleash,
        auto_keep=o.keep if o.region == "auto" else None,
        batch_size=o.batch_size,
    )


class FalipFitted(RegionHeadFitted):
    """A fitted ``falip``/``falip_tip``: ``logits(tokens (M, N, C), regions (M, 4)) -> (M, C)``."""

    def __init__(
        self, method: str, backbone: Backbone, start: int, options: FalipOptions, head: FittedHead
    ) -> None:
        self.method = method
        self.backbone = backbone
        self.start = int(start)
        self.options = options
        self.head = head

    def features(self, tokens: Tensor, regions: Tensor | None = None) -> Tensor:
        """FALIP features ``(M, D)`` of tokens entering the first biased block, for ``regions``."""
        return _encode(self.method, self.backbone, self.start, self.options, tokens, regions)

    def config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "options": dataclasses.asdict(self.options),
            "start": self.start,
            "head": self.head.config(),
        }

    def info(self) -> dict[str, Any]:
        depth = self.backbone.token_blocks()
        out: dict[str, Any] = {"biased_blocks": depth - self.start, "first_biased_block": self.start}
        cfg = self.head.config()
        if "beta" in cfg:  # Tip-Adapter: what was used (searched on validation when there was some)
            out["tip_alpha"], out["tip_beta"] = cfg["alpha"], cfg["beta"]
            out["searched"] = bool((cfg.get("info") or {}).get("searched", False))
        return out


FO = TypeVar("FO", bound=FalipOptions)


class FalipRecipe(Method[FO]):
    """What ``falip`` and ``falip_tip`` share: the biased blocks, the prefix, the region options."""

    needs_text: ClassVar[bool] = True
    open_score: ClassVar[str] = "max_logit"

    @property
    def needs_regions(self) -> bool:
        return True

    def uses_boxes(self) -> bool:
        return self.options.region == "box"

    def missing_box(self) -> str:
        return self.options.missing_box

    def export_refusal(self) -> str:
        if self.options.region == "auto":
            return (
                "region='auto' finds each image's box by attention rollout (a recorded pass and a "
                "per-image patch ranking), which traces to no fixed graph yet; export with region='box'"
            )
        return ""

    def _start(self, backbone: Backbone) -> int:
        require_falip_backbone(backbone, self.name)
        depth = backbone.token_blocks()
        return depth - biased_layers(depth, self.options.layers, self.options.layers_fraction)

    def prefix(self, backbone: Backbone) -> Prefix:
        """The tokens entering the first biased block, ``Prefix.tokens(L - k)``."""
        return Prefix.tokens(self._start(backbone))

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        options = options_from_dict(cls.Options, config["options"], cls.name)
        start = cls(options)._start(backbone)
        if start != int(config["start"]):
            raise ValueError(
                f"the fit biased blocks from {config['start']} on, but this backbone gives {start}"
            )
        return FalipFitted(cls.name, backbone, start, options, head_from_state(state, config["head"]))


@register_method("falip")
class FalipMethod(FalipRecipe[FalipOptions]):
    """FALIP zero-shot: CLIP with a foveal attention bias on each image's region (Zhuang et al., 2024)."""

    summary = "FALIP: zero-shot CLIP with a foveal [CLS] attention bias on the region (Zhuang et al., 2024)"

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        """Nothing to learn: the zero-shot classifier of the class texts (the support set is unused)."""
        head = zeroshot_classifier(ctx, self.name, self.options.scale)
        return FalipFitted(self.name, ctx.backbone, self._start(ctx.backbone), self.options, head)


@register_method("falip_tip")
class FalipTipMethod(FalipRecipe[FalipTipOptions]):
    """Tip-Adapter over FALIP features: cache keys and queries both seen through their regions."""

    summary = "Tip-Adapter whose cache keys and queries are FALIP features (regions of support and query)"

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        """Cache keys: FALIP features of the support tokens ``(N, T, C)`` with ``ctx.regions``; alpha
        and beta searched on ``ctx.val`` (with ``ctx.val_regions``) when given."""
        o = self.options
        text = need_text(ctx, self.name)
        start = self._start(ctx.backbone)
        keys = _encode(self.name, ctx.backbone, start, o, support, ctx.regions)
        val_f = val_l = None
        if ctx.val is not None:
            val_f = _encode(self.name, ctx.backbone, start, o, ctx.val[0], ctx.val_regions)
            val_l = ctx.val[1]
        head = create_head(
            "tip_adapter", text_embeddings=text, alpha=o.tip_alpha, beta=o.tip_beta, scale=o.scale
        )
        fitted = head.fit(keys, labels, ctx.num_classes, val_features=val_f, val_labels=val_l)
        return FalipFitted(self.name, ctx.backbone, start, o, fitted)
