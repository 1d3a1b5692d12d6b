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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
from focusshot.heads.trainable import LinearHead
from focusshot.methods import tuning as t
from focusshot.methods.base import FitContext, register_method
from focusshot.methods.finetune import FinetuneMethod, FinetuneOptions, Objective, Tail
from focusshot.options import option

__all__ = ["FORTMixin", "fort_options", "with_fort"]


def _opt(name: str, kind: type, default: Any, text: str) -> tuple[str, type, Any]:
    """A field of :func:`dataclasses.make_dataclass`'s list."""
    return (name, kind, option(default, text))


def _check(self: Any) -> None:
    if self.fort_alpha < 0 or not self.tau > 0 or self.top < 0:
        raise ValueError(
            f"FORT needs fort_alpha >= 0, tau > 0, top >= 0; got {self.fort_alpha}, {self.tau}, {self.top}"
        )
    if self.prompts not in ("rollout", "box"):
        raise ValueError(f"prompts must be 'rollout' or 'box', got {self.prompts!r}")
    if self.prompts == "box" and self.views:
        raise ValueError("prompts='box' cannot be combined with augmented views (their boxes are unknown)")
    if self.rows not in ("all", "cls"):
        raise ValueError(f"rows must be 'all' or 'cls', got {self.rows!r}")
    RolloutSettings(self.variant, self.lamb, self.sign)


def fort_options(base: type[FinetuneOptions], alpha: float, tau: float = 1.0) -> type:
    """``base`` (a recipe's options) plus FORT's fields with the given defaults."""
    extra = [
        _opt("fort_alpha", float, alpha, "FORT alpha: weight of the attention loss (0: plain recipe)"),
        _opt("tau", float, tau, "temperature dividing the attention logits"),
        _opt("top", int, 0, "prompt patches P (0: the grid side, 14 on 14x14)"),
        _opt("lamb", float, 1.0, "weight of the gradient term in Grad-Rollout"),
        _opt("variant", str, "code", "code: min over heads, top 10%/row; paper: mean, all"),
        _opt("sign", str, "aligned", "gradient PC sign: aligned (with grad x input) or svd"),
        _opt("rows", str, "all", "attention rows the loss covers: all (code) or cls"),
        _opt("prompts", str, "rollout", "rollout (Grad-Rollout) or box: the data's boxes (oracle)"),
    ]

    def post_init(self: Any) -> None:
        base.__post_init__(self)
        _check(self)

    return dataclasses.make_dataclass(
        f"FORT{base.__name__}", extra, bases=(base,), frozen=True, namespace={"__post_init__": post_init}
    )


class FORTMixin:
    """FORT on top of a fine-tuning recipe (put it first among the bases)."""

    options: Any
    name: str

    @property
    def needs_regions(self) -> bool:
        """Box prompts read the support images' boxes (the runner hands them over)."""
        return self.options.prompts == "box"

    @contextmanager
    def objective(
        self, tail: Tail, head: LinearHead, inputs: Tensor, labels: Tensor, ctx: FitContext
    ) -> Iterator[Objective]:
        o = self.options
        if o.fort_alpha == 0:
            yield Objective()
            return
        b = tail.backbone
        caps = b.capabilities
        if not (caps.attention and caps.global_cls):
            raise ValueError(
                f"method {self.name!r}: FORT's prompts and loss need a global [CLS] attention row, which "
                f"{type(b).__name__} ({b.identity.name}) does not have (windowed attention or a CNN); "
                "the paper's variant for pyramidal backbones (Swin) is not implemented"
            )
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
                    RolloutSettings(o.variant, o.lamb, o.sign),
                )
            finally:
                tail.train(was)
            prompts = position_prompts(imp, top)
        support_prompts = prompts[: len(inputs) // (self.augment_views() + 1)]  # type: ignore[attr-defined]
        target = prompts.to(device)
        last = layers[-1]
        with record(b, "logits", layers=[last], grad=True, training_only=True) as rec:

            def loss(x: Tensor, y: Tensor, logits: Tensor, idx: Tensor) -> Tensor:
                att = rec.take("logits", last)[..., s : s + p].float().mean(dim=1)  # (B, N, P)
                # the code's "all rows" are [CLS] and the patches (no registers or VPT prompts)
                att = att[:, :1] if o.rows == "cls" else torch.cat([att[:, :1], att[:, s : s + p]], 1)
                q = target[idx.to(device)].unsqueeze(1).expand_as(att)
                return o.fort_alpha * -(q * (att / o.tau).log_softmax(dim=-1)).sum(dim=-1).mean()

            yield Objective(loss, prompts=support_prompts)


def with_fort(base: type[FinetuneMethod], alpha: float, source: str) -> type[FinetuneMethod]:
    """Register ``<base>+fort``: the recipe ``base`` plus FORT's attention loss, with FORT's
    options (``fort_alpha`` defaulting to ``alpha``, from ``source``) added to ``base``'s.

    Options given for ``base`` reach ``<base>+fort`` too (``--set lora.rank=8`` sets both);
    ``<base>+fort.OPTION`` overrides one for FORT's run only
    (:func:`~focusshot.methods.base.options_for`).
    """
    first = (base.__doc__ or base.__name__).splitlines()[0].rstrip(".")
    doc = f"{first} with FORT's attention loss (alpha {alpha:g}: {source})."
    cls = type(
        f"{base.__name__}FORT",
        (FORTMixin, base),
        {
            "Options": fort_options(base.Options, alpha=alpha),
            "summary": f"FORT: {base.name} + attention loss toward Grad-Rollout position prompts",
            "extends": base.name,
            "__doc__": doc,
            "__module__": __name__,
        },
    )
    return register_method(f"{base.name}+fort", groups=("fort",))(cls)


FullFORT = with_fort(t.FullFinetune, 3e-2, "the official FT command")
LoRAFORT = with_fort(t.LoRAFinetune, 0.5, "the official LoRA command")
SSFFORT = with_fort(t.SSFFinetune, 0.1, "the official SSF command")
VPTFORT = with_fort(t.VPTFinetune, 0.1, "ours; the official code has no VPT setting")
