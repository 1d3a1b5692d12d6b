"""VPT: visual prompt tuning, shallow and deep.

Jia et al., *Visual Prompt Tuning* (ECCV 2022). ``P`` trainable prompt tokens of width ``C`` join
the token sequence of a frozen ViT:

* **shallow**: prompts enter once, before block ``start``, and travel through the remaining
  blocks like any other token;
* **deep**: every block from ``start`` on gets its own prompts, which replace the prompt outputs of
  the block before it.

**Where the prompts sit.** The paper inserts them right after [CLS]
(``[CLS, prompts, patches]``). Here they are *appended at the end*: ``[CLS, registers, patches,
prompts]``. Self-attention without a causal mask, with the MLP and layer norms acting per token,
is permutation-equivariant, and prompts carry no position embedding, so both orders compute the
same outputs for every token (``tests/adapters/test_vpt.py`` checks it). Appending keeps the indices
of [CLS], registers and patches unchanged, so attention maps, [CLS]-row slices and
``num_prefix_tokens`` keep their meaning; prompt columns are the *last* ``P`` columns.

**Initialisation.** ``"uniform"`` is the paper's Xavier-uniform choice: ``U(-v, v)`` with
``v = sqrt(6 / (in_chans * patch_size**2 + C))`` (fan-in of a patch, fan-out of a token);
``"zeros"`` starts every prompt at zero. Prompts still change the outputs at init, even at zero,
because the other tokens attend to them: VPT is never an identity at init.

The prompts live in the space of the tokens entering a block: for CLIP, after ``ln_pre``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from focusshot.adapters.base import AdapterError, describe_model, new_parameter
from focusshot.attention.core import Attention
from focusshot.backbones.vit import Block
from focusshot.options import option

VPT_INITS = ("uniform", "zeros")


@dataclass
class VPTConfig:
    """Options of :func:`inject_vpt`."""

    num_tokens: int = option(10, "number P of prompt tokens (per block when deep)")
    deep: bool = option(False, "new prompts at every block (VPT-deep) instead of once (shallow)")
    dropout: float = option(0.0, "dropout on the prompt embeddings")
    init: str = option(
        "uniform", "'uniform' (Xavier-uniform over patch fan-in + width, as the paper) or 'zeros'"
    )

    def __post_init__(self) -> None:
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens < 1:
            raise ValueError(f"VPTConfig.num_tokens must be an integer >= 1, got {self.num_tokens!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in VPT_INITS:
            raise ValueError(f"VPTConfig.init must be one of {list(VPT_INITS)}, got {self.init!r}")


def pad_bias(bias: Tensor | None, n: int, extra: int) -> Tensor | None:
    """Extend an attention bias made for ``n`` tokens to ``n + extra`` tokens.

    Each of the last two dims of size ``n`` grows by ``extra``: zeros for an additive float bias,
    ``True`` (may attend) for a boolean mask, so the new tokens neither receive nor give a bias.
    Dims of another size (1 for broadcasting, or already ``n + extra``) are left alone.

    Args:
        bias: ``None`` or a tensor broadcastable to ``(B, H, n, n)``.
        n: tokens the bias was made for.
        extra: tokens appended at the end of the sequence.
    """
    if bias is None or extra == 0:
        return bias
    fill = True if bias.dtype == torch.bool else 0.0
    for dim in (-1, -2):
        if bias.ndim >= -dim and bias.shape[dim] == n:
            shape = list(bias.shape)
            shape[dim] = extra
            bias = torch.cat([bias, bias.new_full(shape, fill)], dim=dim)
    return bias


class PromptedBlock(nn.Module):
    """A ViT :class:`~focusshot.backbones.vit.Block` with VPT prompt tokens at the end of its input.

    Args:
        block: the wrapped block (kept as ``block``).
        num_tokens: ``P``.
        prompts: ``(P, C)`` prompts this block appends (or, when ``carried``, swaps in for the
            incoming ones); ``None`` for a block that only passes on the prompts it receives.
        carried: the input already ends with ``P`` prompt tokens (every wrapped block but the first).
        strip: drop the last ``P`` tokens after running (the last block of the ViT).
        dropout: dropout on the prompt embeddings.

    With ``T`` the input's tokens without prompts (``N = T + P`` when ``carried``, else ``T``), the
    block runs on ``(B, T + P, C)`` and returns that, or ``(B, T, C)`` when ``strip``.
    """

    def __init__(
        self,
        block: Block,
        num_tokens: int,
        prompts: nn.Parameter | None = None,
        *,
        carried: bool = False,
        strip: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if prompts is not None and (prompts.ndim != 2 or prompts.shape[0] != num_tokens):
            raise ValueError(f"prompts must have shape ({num_tokens}, C), got {tuple(prompts.shape)}")
        if prompts is None and not carried:
            raise ValueError("a PromptedBlock needs prompts of its own or carried prompts")
        self.block = block
        self.num_tokens = num_tokens
        self.prompts = prompts
        self.carried = carried
        self.strip = strip
        self.prompt_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def insert(self) -> bool:
        """Whether this block puts its own prompts into the sequence."""
        return self.prompts is not None

    @property
    def attn(self) -> Attention:
        """The wrapped block's attention (so ``VisionTransformer.attention_modules`` still works)."""
        return self.block.attn

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """``(B, N, C) -> (B, T + P, C)``, or ``(B, T, C)`` when stripping (see the class docstring).

        Args:
            x: tokens; the last ``P`` are prompts when ``carried``.
            attn_bias: as for :class:`Block`; a bias made for the tokens without prompts
                (size ``T`` in its last dims) is padded to ``T + P`` to cover them.
        """
        p = self.num_tokens
        n_plain = x.shape[1] - (p if self.carried else 0)
        if self.prompts is not None:
            prompts = self.prompt_dropout(self.prompts).to(x.dtype)
            tokens = x[:, :n_plain] if self.carried else x
            x = torch.cat([tokens, prompts.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        x = self.block(x, pad_bias(attn_bias, n_plain, p))
        return x[:, :n_plain] if self.strip else x

    def extra_repr(self) -> str:
        return (
            f"num_tokens={self.num_tokens}, insert={self.insert}, carried={self.carried}, strip={self.strip}"
        )


def _blocks_owner(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the ViT ``blocks`` (``model`` or ``model.visual``) and its name prefix."""
    visual = getattr(model, "visual", None)
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList) and isinstance(visual, nn.Module):
        return visual, "visual."
    return model, ""


def check_vpt_model(vit: nn.Module) -> nn.ModuleList:
    """The ``blocks`` VPT wraps in ``vit`` (or its ``visual``); raises :class:`AdapterError` when it
    has no list of focusshot ViT blocks (CNNs, Swin)."""
    owner, _ = _blocks_owner(vit)
    blocks = getattr(owner, "blocks", None)
    if (
        not isinstance(blocks, nn.ModuleList)
        or len(blocks) == 0
        or not all(isinstance(b, (Block, PromptedBlock)) for b in blocks)
    ):
        raise AdapterError(
            f"no ViT blocks (a .blocks nn.ModuleList of focusshot Blocks) in {describe_model(vit)}; "
            "VPT needs a ViT whose global attention runs over one token sequence (not a CNN or Swin)"
        )
    return blocks


def inject_vpt(
    vit: nn.Module,
    cfg: VPTConfig | None = None,
    start: int = 0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Wrap ``blocks[start:]`` of a ViT in :class:`PromptedBlock` (Jia et al., 2022).

    Shallow: prompts enter at block ``start`` only; deep: at every block from ``start`` on. The
    last block strips them, so ``forward_tokens`` / ``forward_features`` shapes are unchanged.
    Nothing is frozen here; freeze the backbone first with :func:`~focusshot.adapters.base.freeze`.

    Args:
        vit: a :class:`~focusshot.backbones.vit.VisionTransformer`, or a CLIP (its ``visual``).
        cfg: the options; :class:`VPTConfig` defaults when ``None``.
        start: first prompted block (negative counts from the end). Tokens entering it may come
            from a cached frozen prefix (``forward_blocks(x, start=start)``).
        generator: random generator for the ``"uniform"`` init.

    Returns:
        Qualified names (relative to ``vit``) of the wrapped blocks.

    Raises:
        AdapterError: ``vit`` has no ``.blocks`` list of ViT blocks (CNNs, Swin), or already has VPT.
        ValueError: ``start`` is out of range.
    """
    cfg = cfg or VPTConfig()
    owner, prefix = _blocks_owner(vit)
    blocks = getattr(owner, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and any(isinstance(b, PromptedBlock) for b in blocks):
        raise AdapterError(f"{describe_model(vit)} already has VPT prompts; inject them only once")
    blocks = check_vpt_model(vit)
    depth = len(blocks)
    if not -depth <= start < depth:
        raise ValueError(f"start={start} out of range for a ViT with {depth} blocks")
    start %= depth
    vit_blocks = cast(list[Block], list(blocks))  # all Blocks: checked above
    width = int(vit_blocks[0].norm1.normalized_shape[0])
    patch_embed = getattr(owner, "patch_embed", None)
    in_chans = patch_embed.in_channels if isinstance(patch_embed, nn.Conv2d) else 3
    patch = int(getattr(owner, "patch_size", 1))
    bound = math.sqrt(6.0 / (in_chans * patch * patch + width))
    like = next(blocks[0].parameters())
    names = []
    for i in range(start, depth):
        prompts = None
        if cfg.deep or i == start:
            prompts = new_parameter((cfg.num_tokens, width), like, cfg.init, generator, a=-bound, b=bound)
        blocks[i] = PromptedBlock(
            vit_blocks[i],
            cfg.num_tokens,
            prompts,
            carried=i > start,
            strip=i == depth - 1,
            dropout=cfg.dropout,
        ).train(blocks[i].training)
        names.append(f"{prefix}blocks.{i}")
    return names


def vpt_prompts(model: nn.Module) -> list[nn.Parameter]:
    """Every prompt parameter ``(P, C)`` of ``model``, in block order."""
    return [m.prompts for m in model.modules() if isinstance(m, PromptedBlock) and m.prompts is not None]
