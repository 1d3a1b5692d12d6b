"""LoRA: low-rank updates of frozen linear layers.

Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models* (ICLR 2022). A frozen linear
layer ``y = W x + b`` (``W`` of shape ``(out, in)``) gains a trainable update of rank ``r``::

    y = W x + b + (alpha / r) * B A dropout(x),   A: (r, in), B: (out, r)

``A`` starts like peft's default (Kaiming-uniform with ``a = sqrt(5)``, the init of
``nn.Linear``) and ``B`` at zero, so an injected model computes exactly what it did before. The
scaling ``alpha / r`` is peft's default (not rsLoRA's ``alpha / sqrt(r)``). After training,
``merge`` folds ``(alpha / r) B A`` into ``W`` so inference costs nothing extra.

Typical use::

    freeze(model)                                   # everything frozen ...
    inject_lora(model.visual, LoRAConfig(rank=4))   # ... then LoRA's A and B train
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from focusshot.adapters.base import (
    AdapterError,
    AdapterModule,
    adapter_layers,
    injection_targets,
    merge_all,
    new_parameter,
    replace_module,
)
from focusshot.options import option


@dataclass
class LoRAConfig:
    """Options of :func:`inject_lora`."""

    rank: int = option(4, "rank r of the update B A (r >= 1)")
    alpha: float = option(4.0, "the update is scaled by alpha / rank")
    dropout: float = option(0.0, "dropout on the input of the low-rank path")
    targets: tuple[str, ...] = option(
        ("*.attn.q", "*.attn.v"), "fnmatch patterns of the nn.Linear layers to adapt (qualified module names)"
    )

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRAConfig.rank must be an integer >= 1, got {self.rank!r}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRAConfig.alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"LoRAConfig.targets must be non-empty strings, got {self.targets!r}")

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank


class LoRALinear(AdapterModule):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al., 2022).

    Args:
        base: the layer to adapt; its weight and bias get ``requires_grad=False``.
        rank: ``r``.
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout probability on the low-rank path's input.
        generator: random generator for ``lora_A``'s initialisation (global RNG when ``None``).

    Attributes:
        base: the wrapped layer.
        lora_A: ``(r, in_features)``, Kaiming-uniform (``a = sqrt(5)``).
        lora_B: ``(out_features, r)``, zeros.
        scaling: ``alpha / r``.
        merged: whether the update has been added into ``base.weight``.
    """

    base: nn.Linear

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 4,
        alpha: float = 4.0,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise AdapterError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.lora_A = new_parameter(
            (rank, base.in_features), base.weight, "kaiming_uniform", generator, a=math.sqrt(5)
        )
        self.lora_B = new_parameter((base.out_features, rank), base.weight, "zeros", generator)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def weight(self) -> Tensor:
        """The base layer's weight ``(out, in)`` (the effective weight only while merged)."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        """The base layer's bias ``(out,)`` or ``None``."""
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> Tensor:
        """``scaling * B @ A``, shape ``(out, in)``, in the base weight's dtype."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        return delta.to(self.base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)``: ``base(x) + scaling * dropout(x) A^T B^T`` (base only if merged)."""
        out = self.base(x)
        if self.merged:
            return out
        low = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()
        return out + (low @ self.lora_B.t()).to(out.dtype) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``scaling * B A`` into ``base.weight``; forward then skips the low-rank path.

        The parameter object stays the same (optimisers and references keep working) but gets new
        storage, so a weight whose storage is shared with another model (a frozen copy) is never
        written. Merging a merged layer does nothing.
        """
        if self.merged:
            return
        weight = self.base.weight
        weight.data = weight.data + self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``scaling * B A`` from ``base.weight`` again (new storage, as in :meth:`merge`).

        Unmerging an unmerged layer does nothing. Do not change ``lora_A``/``lora_B`` while merged:
        unmerging subtracts their current product.
        """
        if not self.merged:
            return
        weight = self.base.weight
        weight.data = weight.data - self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def inject_lora(
    model: nn.Module, cfg: LoRAConfig | None = None, *, generator: torch.Generator | None = None
) -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` whose name matches ``cfg.targets`` in a :class:`LoRALinear`.

    Only the wrapped layers' own weights are frozen here; freeze the rest first with
    :func:`~focusshot.adapters.base.freeze` (parameters created afterwards, ``lora_A`` and ``lora_B``,
    train). Layers are initialised in model order from ``generator``, so a seeded generator gives
    the same adapters every time.

    Args:
        model: any module (for a CLIP, the default patterns also match the text tower; pass
            ``model.visual`` or patterns starting with ``"visual."`` to adapt only the image side).
        cfg: the options; :class:`LoRAConfig` defaults when ``None``.
        generator: random generator for ``lora_A``.

    Returns:
        Qualified names of the wrapped layers.

    Raises:
        AdapterError: no ``nn.Linear`` matches, or LoRA already wraps a matching layer.
    """
    cfg = cfg or LoRAConfig()
    targets = injection_targets(
        model, cfg.targets, nn.Linear, LoRALinear, "LoRA", "LoRA needs attention q/v projections"
    )
    for name, mod in targets:
        assert isinstance(mod, nn.Linear)
        replace_module(model, name, LoRALinear(mod, cfg.rank, cfg.alpha, cfg.dropout, generator))
    return [name for name, _ in targets]


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """``(qualified_name, layer)`` of every :class:`LoRALinear` in ``model``, in model order."""
    return adapter_layers(model, LoRALinear)


def merge_lora(model: nn.Module) -> list[str]:
    """Merge every LoRA layer of ``model`` into its base; returns their names."""
    return merge_all(model, LoRALinear, True, "LoRA", "inject_lora")


def unmerge_lora(model: nn.Module) -> list[str]:
    """Undo :func:`merge_lora` on every LoRA layer of ``model``; returns their names."""
    return merge_all(model, LoRALinear, False, "LoRA", "inject_lora")
