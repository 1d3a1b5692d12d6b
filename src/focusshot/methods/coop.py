"""CoOp: learned context vectors in front of the class name (Zhou et al., *Learning to Prompt for
Vision-Language Models*, IJCV 2022).

The prompt of class ``c`` is ``[SOS] v_1 .. v_M <name_c tokens> . [EOS]``; the ``M`` context
vectors (shared by every class, or one set per class with ``class_specific``) are the only thing
that trains. Each step runs the frozen text tower over the C prompts (from token embeddings,
:meth:`~focusshot.backbones.clip.TextTransformer.encode_embeddings`) and classifies the cached,
L2-normalised image features by ``scale * cos(image, text_c)``. Both towers stay frozen.

Defaults follow CoOp's code: M = 16 vectors drawn from N(0, 0.02^2), or, given ``ctx_init``,
as many vectors as the phrase has tokens, initialised to its token embeddings ("a photo of a":
M = 4, and with no step the classifier is zero-shot CLIP with the template "a photo of a {}.");
SGD (lr 0.002, momentum 0.9, weight decay 5e-4), batch 32, cosine decay, 50 epochs for 1-2 shots,
100 for 4-8 and 200 above. CoOp warms up with one epoch at a constant lr of 1e-5; we use the
training loop's linear warm-up (``warmup_steps``, off by default). The text sequence is cut
after the longest prompt's end-of-text token: the mask is causal, so the result is unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from focusshot.backbones.base import Backbone
from focusshot.backbones.clip import CLIP, TextTransformer
from focusshot.backbones.prefix import Prefix
from focusshot.heads.base import l2_normalize
from focusshot.methods.base import FitContext, Fitted, Method, register_method
from focusshot.methods.finetune import frozen_copy
from focusshot.methods.text import logit_scale, readable, require_text_tower
from focusshot.options import option
from focusshot.training.loop import TrainConfig, train

__all__ = ["CoOpFitted", "CoOpMethod", "CoOpOptions", "PromptLearner"]


@dataclass(frozen=True)
class CoOpOptions:
    """CoOp's settings (module docstring)."""

    n_ctx: int = option(16, "context vectors M (ignored when ctx_init is given: M = its token count)")
    ctx_init: str = option("", "initialise the context from this phrase, e.g. 'a photo of a' ('' : random)")
    class_specific: bool = option(False, "one context per class (CSC) instead of one shared context")
    init_std: float = option(0.02, "std of the random context initialisation")
    lr: float = option(2e-3, "SGD learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay")
    batch_size: int = option(32, "images per step")
    epochs: int = option(0, "epochs (0: CoOp's schedule: 50 for K <= 2 shots, 100 for K <= 8, 200 above)")
    warmup_steps: int = option(0, "linear warm-up steps before the cosine decay")
    scale: float = option(0.0, "logit scale (0: the model's exp(logit_scale))")
    validate: bool = option(
        False, "with a validation split, evaluate every epoch and keep the best (CoOp: no)"
    )

    def __post_init__(self) -> None:
        if self.n_ctx < 1 and not self.ctx_init:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.scale < 0:
            raise ValueError("epochs >= 0, batch_size >= 1, lr > 0 and scale >= 0 are required")


class PromptLearner(nn.Module):
    """Builds the C prompts' token embeddings ``(C, L, W)`` with the learned context in place.

    Args:
        text: the frozen text tower (a :class:`~focusshot.backbones.clip.TextTransformer`).
        ids: ``(C, L)`` token ids ``[SOS] <M placeholders> <name> . [EOS]``.
        ctx: ``(M, W)`` or ``(C, M, W)`` initial context vectors.
    """

    ids: Tensor  # a buffer

    def __init__(self, text: TextTransformer, ids: Tensor, ctx: Tensor) -> None:
        super().__init__()
        self.text = text
        self.register_buffer("ids", ids, persistent=False)
        self.ctx = nn.Parameter(ctx.clone())
        self.eot = text.eot_positions(ids)

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[-2])

    def embeddings(self) -> Tensor:
        """``(C, L, W)``: the prompts' token embeddings, positions ``1..M`` the context."""
        with torch.no_grad():
            base = self.text.token_embedding(self.ids)
        ctx = self.ctx.expand(len(self.ids), -1, -1) if self.ctx.ndim == 2 else self.ctx
        return torch.cat([base[:, :1], ctx.to(base.dtype), base[:, 1 + self.n_ctx :]], dim=1)

    def forward(self) -> Tensor:
        """Class text features ``(C, E)``, L2-normalised."""
        tokens = self.text.encode_embeddings(self.embeddings())
        return l2_normalize(self.text.pool(tokens, self.eot))


def prompt_ids(clip: CLIP, class_names: list[str], n_ctx: int) -> Tensor:
    """``(C, L)`` ids ``[SOS] 0*n_ctx <name> . [EOS]``, cut after the longest prompt's EOS."""
    named = clip.tokenize([f"{readable(c)}." for c in class_names])  # [SOS] name . [EOS] 0 ...
    eot = clip.text.eot_positions(named)
    length = int(eot.max()) + 1 + n_ctx
    limit = clip.text.cfg.context_length
    if length > limit:
        worst = class_names[int(eot.argmax())]
        raise ValueError(
            f"CoOp: {n_ctx} context tokens plus class name {worst!r} need {length} tokens, more than "
            f"the text tower's context length {limit}; use fewer context tokens (n_ctx)"
        )
    ids = torch.zeros(len(class_names), length, dtype=named.dtype)
    ids[:, 0] = named[:, 0]
    for i, e in enumerate(eot.tolist()):
        ids[i, 1 + n_ctx : 1 + n_ctx + e] = named[i, 1 : e + 1]
    return ids


def initial_context(clip: CLIP, options: CoOpOptions, classes: int, generator: torch.Generator) -> Tensor:
    """``(M, W)`` (or ``(C, M, W)`` class-specific): the init phrase's embeddings, or N(0, std^2)."""
    width = clip.text.cfg.width
    if options.ctx_init:
        ids = clip.tokenize([options.ctx_init])[0]
        n = int(clip.text.eot_positions(ids[None])[0]) - 1
        with torch.no_grad():
            ctx: Tensor = clip.text.token_embedding(ids[1 : 1 + n]).detach().float()
    else:
        ctx = torch.randn(options.n_ctx, width, generator=generator) * options.init_std
    return ctx.expand(classes, -1, -1).clone() if options.class_specific else ctx


class CoOpFitted(Fitted):
    """The learned prompts' class features: ``logits(query (M, E)) = scale * cos(query, text_c)``."""

    def __init__(
        self,
        method: str,
        weights: Tensor,
        ctx: Tensor,
        scale: float,
        config: dict[str, Any],
        record: dict[str, Any],
    ) -> None:
        self.method = method
        self.weights = weights
        self.ctx = ctx
        self.scale = float(scale)
        self._config = config
        self._record = record

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.scale * l2_normalize(query.float()) @ self.weights.T

    def open_scores(self) -> dict[str, str]:
        return {**super().open_scores(), "mcm": ""}

    def text_similarities(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """Cosine similarities ``(M, C)`` to the learned prompts' class features."""
        return l2_normalize(query.float()) @ self.weights.T

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights.contiguous(), "ctx": self.ctx.contiguous()}

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def info(self) -> dict[str, Any]:
        return dict(self._record)


@register_method("coop", auto_order=1)  # auto: tried while the budget lasts
class CoOpMethod(Method[CoOpOptions]):
    """CoOp: learn the prompt's context vectors on the support set (Zhou et al., IJCV 2022)."""

    trains: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True
    summary = "CoOp: learned context vectors before the class name (Zhou et al., IJCV 2022)"
    open_score = "max_logit"

    def prefix(self, backbone: Backbone) -> Prefix:
        require_text_tower(self.name, backbone)
        return Prefix.pooled()

    def _epochs(self, n: int, classes: int) -> int:
        if self.options.epochs:
            return int(self.options.epochs)
        shots = n / max(classes, 1)
        return 50 if shots <= 2 else 100 if shots <= 8 else 200

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        o = self.options
        t0 = time.perf_counter()
        if not ctx.class_names:
            raise ValueError(f"method {self.name!r} needs the class names")
        clip = frozen_copy(require_text_tower(self.name, ctx.backbone))
        device = torch.device(ctx.device)
        gen = torch.Generator().manual_seed(ctx.seed)
        init = initial_context(clip, o, ctx.num_classes, gen)
        learner = PromptLearner(clip.text, prompt_ids(clip, list(ctx.class_names), init.shape[-2]), init)
        learner.to(device)
        scale = logit_scale(clip, o.scale)
        epochs = self._epochs(len(support), ctx.num_classes)
        batch = min(o.batch_size, len(support))
        val = ctx.val if (ctx.val is not None and o.validate) else None
        cfg = TrainConfig(
            optimizer="sgd",
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            epochs=epochs,
            batch_size=batch,
            warmup_steps=o.warmup_steps,
            eval_every=math.ceil(len(support) / batch) if val is not None else 0,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        images = l2_normalize(support.float())

        def forward(x: Tensor) -> Tensor:
            logits: Tensor = scale * x @ learner().T
            return logits

        result = train(
            forward, [learner.ctx], images.to(device), labels.to(device), cfg, val=val, device=device
        )
        with torch.no_grad():
            weights = learner().float().cpu()
        record = result.to_dict()
        record.pop("history", None)
        record.update(
            {"n_ctx": learner.n_ctx, "epochs": epochs, "fit_seconds": round(time.perf_counter() - t0, 3)}
        )
        config = {"method": self.name, "options": self.options_dict(), "scale": scale, "seed": ctx.seed}
        return CoOpFitted(self.name, weights, learner.ctx.detach().float().cpu(), scale, config, record)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        return CoOpFitted(cls.name, state["weights"], state["ctx"], float(config["scale"]), config, {})
