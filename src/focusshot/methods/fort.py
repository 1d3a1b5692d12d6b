"""FORT: position prompts from Grad-Rollout and an attention-enhancement loss while fine-tuning.

Wang, Jie & Deng, *Focus Your Attention when Few-Shot Classification*, NeurIPS 2023 (official
code ``Haoqing-Wang/FORT``). Per episode, before training:

1. the head is initialised by a solver (MetaOptNet by default; ``init=protonet`` / ``r2d2`` are the
   paper's other variants) on the frozen support features;
2. Grad-Rollout (:mod:`focusshot.attention.grad_rollout`) over the layers the tuned tail runs gives
   each support image's patch importance; the ``top`` most important patches, weighted, are its
   *position prompts* ``q`` (summing to ``top``);

and during training the loss is ``CE(W f / T, y) + alpha * CE_soft(A / tau, q)`` where ``A`` is
the last layer's attention *logits* over the patch columns, averaged over heads, for the [CLS]
and patch rows (the code's; registers and VPT prompts left out; ``rows=cls`` keeps [CLS]'s only,
the paper's text), and ``CE_soft`` is the cross-entropy to the many-hot target, averaged over rows
and images. No parameter is added.

Defaults are the official README's DINO ViT-B/16 commands: ``ft+fort`` alpha 3e-2, ``ssf+fort``
1e-1, ``lora+fort`` 5e-1, all tau 1, ``top`` = the grid side (P = 14 on 14x14), lamb 1; the
recipes' own defaults (lr, epochs, temperature) are those of :mod:`focusshot.methods.tuning`.
``vpt+fort``'s alpha 1e-1 is ours (no official setting). ``fort_alpha`` (``alpha`` is LoRA's)
= 0 skips prompts and recording: exactly the plain recipe. ``prompts=box``: the data's boxes
(covered patches weighted by coverage, mass P) replace Grad-Rollout, an oracle or user prompts.
Swin (no global [CLS] row) is refused: the paper's pyramidal variant is not implemented.

Each variant is the recipe's tuning class with :class:`FORTMixin` in front, and its options are the
recipe's with :class:`FORTFields` added (``FORTLoRAOptions(FORTFields, LoRAOptions)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import torch
from torch import Tensor

from focusshot.attention.grad_rollout import (
    RolloutSettings,
    box_coverage,
    grad_rollout_importance,
    position_prompts,
    prompt_count,
    tail_layers,
)
from focusshot.attention.record import record
from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.heads.trainable import LinearHead
from focusshot.methods.base import FitContext, register_method
from focusshot.methods.finetune import FinetuneOptions, Objective, Tail
from focusshot.methods.tuning import (
    FullOptions,
    FullTuning,
    LoRAOptions,
    LoRATuning,
    SSFOptions,
    SSFTuning,
    VPTOptions,
    VPTTuning,
)
from focusshot.options import Checked, option

__all__ = ["FORTFields", "FORTMixin"]

#: the help of ``fort_alpha``, whose default each variant sets
FORT_ALPHA = "FORT alpha: weight of the attention loss (0: plain recipe)"


@dataclass(frozen=True)
class FORTFields(Checked):
    """FORT's options, added after a tuning recipe's (a variant's options inherit both)."""

    fort_alpha: float = option(0.1, FORT_ALPHA)
    tau: float = option(1.0, "temperature dividing the attention logits")
    top: int = option(0, "prompt patches P (0: the grid side, 14 on 14x14)")
    lamb: float = option(1.0, "weight of the gradient term in Grad-Rollout")
    variant: str = option("code", "code: min over heads, top 10%/row; paper: mean, all")
    sign: str = option("aligned", "gradient PC sign: aligned (with grad x input) or svd")
    rows: str = option("all", "attention rows the loss covers: all (code) or cls")
    prompts: str = option("rollout", "rollout (Grad-Rollout) or box: the data's boxes (oracle)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fort_alpha < 0 or not self.tau > 0 or self.top < 0:
            got = f"{self.fort_alpha}, {self.tau}, {self.top}"
            raise ValueError(f"FORT needs fort_alpha >= 0, tau > 0, top >= 0; got {got}")
        if self.prompts not in ("rollout", "box"):
            raise ValueError(f"prompts must be 'rollout' or 'box', got {self.prompts!r}")
        if self.prompts == "box" and isinstance(self, FinetuneOptions) and self.views:
            raise ValueError(
                "prompts='box' cannot be combined with augmented views (their boxes are unknown)"
            )
        if self.rows not in ("all", "cls"):
            raise ValueError(f"rows must be 'all' or 'cls', got {self.rows!r}")
        self.rollout()

    def rollout(self) -> RolloutSettings:
        """Grad-Rollout's settings (checked when the options are created)."""
        return RolloutSettings(self.variant, self.lamb, self.sign)


F = TypeVar("F", bound=FORTFields)


class FORTMixin(Generic[F]):
    """FORT on top of a fine-tuning recipe: put it first among the bases, with the same options
    type as the recipe's tuning class (``LoRAFORT(FORTMixin[FORTLoRAOptions],
    LoRATuning[FORTLoRAOptions])``)."""

    options: F
    name: str

    @property
    def needs_regions(self) -> bool:
        """Box prompts read the support images' boxes (the runner hands them over)."""
        return self.options.prompts == "box"

    def _require_global_cls(self, b: Backbone) -> None:
        caps = b.capabilities
        if not (caps.attention and caps.global_cls):
            raise ValueError(
                f"method {self.name!r}: FORT's prompts and loss need a global [CLS] attention row, which "
                f"{type(b).__name__} ({b.identity.name}) does not have (windowed attention or a CNN); "
                "the paper's variant for pyramidal backbones (Swin) is not implemented"
            )

    def check_backbone(self, backbone: Backbone, prefix: Prefix) -> None:
        """The recipe's own checks, and (with the loss on) a global [CLS] attention row."""
        cast(Any, super()).check_backbone(backbone, prefix)  # the recipe FORT is mixed into
        if self.options.fort_alpha != 0:
            self._require_global_cls(backbone)

    @contextmanager
    def objective(
        self, tail: Tail, head: LinearHead, inputs: Tensor, labels: Tensor, ctx: FitContext
    ) -> Iterator[Objective]:
        o = self.options
        if o.fort_alpha == 0:
            yield Objective()
            return
        b = tail.backbone
        self._require_global_cls(b)
        device = next(head.parameters()).device
        grid = b.grid_size(b.preprocess.crop)
        s, p = int(b.num_prefix_tokens), grid[0] * grid[1]
        layers = tail_layers(b, tail.start)
        top = prompt_count(grid, o.top)
        if o.prompts == "box":  # every patch the box covers, weighted by the covered fraction
            if ctx.regions is None or len(ctx.regions) != len(inputs):
                raise ValueError(f"method {self.name!r} with prompts='box' needs a box per support image")
            cover = box_coverage(ctx.regions, grid)
            prompts = cover / cover.sum(dim=1, keepdim=True).clamp_min(1e-12) * top
        else:
            was = tail.training
            tail.eval()
            try:
                imp, _ = grad_rollout_importance(
                    b,
                    lambda x: tail(x.to(device)),
                    lambda f: head(f) * head.temperature,  # the score before the temperature, as the code
                    inputs,
                    labels,
                    layers,
                    s,
                    p,
                    o.rollout(),
                )
            finally:
                tail.train(was)
            prompts = position_prompts(imp, top)
        target = prompts.to(device)
        last = layers[-1]
        with record(b, "logits", layers=[last], grad=True, training_only=True) as rec:

            def loss(x: Tensor, y: Tensor, logits: Tensor, idx: Tensor) -> Tensor:
                att = rec.take("logits", last)[..., s : s + p].float().mean(dim=1)  # (B, N, P)
                # the code's "all rows" are [CLS] and the patches (no registers or VPT prompts)
                att = att[:, :1] if o.rows == "cls" else torch.cat([att[:, :1], att[:, s : s + p]], 1)
                q = target[idx.to(device)].unsqueeze(1).expand_as(att)
                return o.fort_alpha * -(q * (att / o.tau).log_softmax(dim=-1)).sum(dim=-1).mean()

            yield Objective(loss, prompts=prompts)


@dataclass(frozen=True)
class FORTFullOptions(FORTFields, FullOptions):
    fort_alpha: float = option(3e-2, FORT_ALPHA)


@register_method("ft+fort", groups=("fort",))
class FullFORT(FORTMixin[FORTFullOptions], FullTuning[FORTFullOptions]):
    """Full fine-tuning of the image tower (and a solver-initialised head) with FORT's attention loss
    (alpha 0.03: the official FT command)."""

    summary = "FORT: ft + attention loss toward Grad-Rollout position prompts"
    extends = "ft"


@dataclass(frozen=True)
class FORTLoRAOptions(FORTFields, LoRAOptions):
    fort_alpha: float = option(0.5, FORT_ALPHA)


@register_method("lora+fort", groups=("fort",))
class LoRAFORT(FORTMixin[FORTLoRAOptions], LoRATuning[FORTLoRAOptions]):
    """LoRA on the attention projections (Hu et al., ICLR 2022) with FORT's attention loss (alpha
    0.5: the official LoRA command)."""

    summary = "FORT: lora + attention loss toward Grad-Rollout position prompts"
    extends = "lora"


@dataclass(frozen=True)
class FORTSSFOptions(FORTFields, SSFOptions):
    fort_alpha: float = option(0.1, FORT_ALPHA)


@register_method("ssf+fort", groups=("fort",))
class SSFFORT(FORTMixin[FORTSSFOptions], SSFTuning[FORTSSFOptions]):
    """SSF: learnable scale and shift after linear and norm layers (Lian et al., NeurIPS 2022) with
    FORT's attention loss (alpha 0.1: the official SSF command)."""

    summary = "FORT: ssf + attention loss toward Grad-Rollout position prompts"
    extends = "ssf"


@dataclass(frozen=True)
class FORTVPTOptions(FORTFields, VPTOptions):
    fort_alpha: float = option(0.1, FORT_ALPHA)


@register_method("vpt+fort", groups=("fort",))
class VPTFORT(FORTMixin[FORTVPTOptions], VPTTuning[FORTVPTOptions]):
    """Visual Prompt Tuning, deep by default (Jia et al., ECCV 2022) with FORT's attention loss
    (alpha 0.1: ours; the official code has no VPT setting)."""

    summary = "FORT: vpt + attention loss toward Grad-Rollout position prompts"
    extends = "vpt"
