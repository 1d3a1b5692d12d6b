"""SAFE and SAFE-A: tune CLIP's pooling, blend it with the frozen one.

Zhu et al., *Enhancing Few-shot CLIP with Semantic-Aware Fine-Tuning* (arXiv 2311.04464). CLIP's
attention pool (RN50), or the last transformer block of a ViT, decides how the dense features are
weighted into one embedding; SAFE fine-tunes only that part on the few-shot set and classifies
with the frozen zero-shot text head. The image feature is the residual blend

    f(x) = beta * pool_original(F(x)) + pool_tuned(F(x))            (F: the frozen dense features)
    logits = scale * cos(f(x), t_c)                                  (t_c: template-averaged text)

and SAFE-A uses the blended features as the keys and queries of Tip-Adapter-F (Zhang et al.,
ECCV 2022). With no update ``f = (1 + beta) pool_original``: the cosine, hence the prediction,
is zero-shot CLIP's.

Choices the abstract and the issue leave to us, stated here and in the README:

* the blend is used in training as well as at inference (``blend_in_training``; off: the tuned
  pool alone is trained and the blend is applied only at inference, as the abstract reads);
* ViT: the last block is tuned and the final norm and projection stay frozen; RN50: every
  parameter of the attention pool (positional embedding, q, k, v and the output projection);
* AdamW with cosine decay, batch 8, validation every ``eval_every`` steps keeping the best (the
  paper evaluates every 100 iterations); learning rate and weight decay searched over
  ``lr_grid`` x ``wd_grid`` on the validation split when the protocol has one (the paper's own
  grids were not available to us; ours span three decades of learning rate);
* the logit scale is the model's own (``exp(logit_scale)``: 100 for OpenAI's CLIPs);
* ``wise`` < 1 interpolates the tuned weights towards the original ones after training (WiSE-FT,
  Wortsman et al., CVPR 2022), before SAFE-A builds its cache.

Training reads the frozen prefix entering what is tuned (tokens entering block ``L - 1`` of a ViT,
the pool's input tokens of RN50): a step costs one block or one attention layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor, nn

from focusshot.adapters.base import load_trainable_state, trainable_state
from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.graph_mode import frozen, inference
from focusshot.heads import FittedHead, create_head
from focusshot.heads import fitted_from_state as head_from_state
from focusshot.heads.tip_adapter import TipAdapterClassifier
from focusshot.heads.trainable import LinearHead
from focusshot.heads.zeroshot import text_classifier
from focusshot.methods.base import FitContext, Fitted, Method, options_from_dict, register_method
from focusshot.methods.finetune import (
    AdaptedFitted,
    TunedTail,
    _batched,
    _device_of,
    frozen_copy,
    image_tower,
    own_storage,
    train_modules,
    with_views,
)
from focusshot.methods.text import logit_scale, need_text, require_text_tower
from focusshot.options import option
from focusshot.training.loop import TrainConfig, train

__all__ = ["SafeAMethod", "SafeMethod", "SafeOptions", "SafeRecipe", "SafeTail"]


@dataclass(frozen=True)
class SafeOptions:
    """SAFE's settings (module docstring)."""

    beta: float = option(0.5, "weight of the frozen pool: f = beta * pool_original + pool_tuned")
    blend_in_training: bool = option(
        True, "train through the blend (False: tune the pool alone, blend at inference)"
    )
    lr: float = option(1e-4, "AdamW learning rate (used without a validation split)")
    weight_decay: float = option(0.01, "AdamW weight decay (used without a validation split)")
    lr_grid: tuple[float, ...] = option((1e-5, 1e-4, 1e-3), "learning rates searched on validation")
    wd_grid: tuple[float, ...] = option((0.01, 0.1), "weight decays searched on validation")
    steps: int = option(300, "optimisation steps (0: no training, zero-shot CLIP through SAFE's blend)")
    batch_size: int = option(8, "images per step (the paper's 8)")
    eval_every: int = option(100, "with validation data: evaluate every k steps and keep the best")
    warmup_steps: int = option(0, "linear warm-up steps before the cosine decay")
    scale: float = option(0.0, "logit scale of the text head (0: the model's exp(logit_scale))")
    views: int = option(0, "augmented views per support image (random resized crop + flip), cached")
    wise: float = option(1.0, "WiSE-FT: tuned weights = original + wise x (trained - original); 1: off")

    def __post_init__(self) -> None:
        if not 0.0 <= self.wise <= 1.0:
            raise ValueError(f"wise must be in [0, 1], got {self.wise}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.steps < 0 or self.batch_size < 1 or self.eval_every < 0 or self.views < 0:
            raise ValueError("batch_size must be >= 1; steps, eval_every and views >= 0")
        for name in ("lr_grid", "wd_grid"):
            grid = getattr(self, name)
            if any(not v >= 0 for v in grid) or (name == "lr_grid" and any(v == 0 for v in grid)):
                raise ValueError(f"{name} holds invalid values: {grid}")
        if self.scale < 0:
            raise ValueError(f"scale must be >= 0, got {self.scale}")


class SafeTail(TunedTail):
    """``beta * pool(original, x) + pool(tuned, x)``: prefix ``(B, T, C)`` -> features ``(B, D)``.

    ``pool`` runs blocks ``start..L-1`` then ``forward_head`` (``start = None``: the prefix is what
    ``forward_head`` takes, CLIP-ResNet's attention-pool input). ``original`` is a frozen copy
    that never trains; with ``blend = False`` :meth:`forward` gives the tuned pool alone in training
    mode (SAFE trained without the blend; validation and inference, in eval mode, blend).
    """

    def __init__(self, original: Backbone, tuned: Backbone, start: int | None, beta: float) -> None:
        super().__init__()
        self.original = original
        self.backbone = tuned  # the name AdaptedFitted.attention_model() and explain read
        self.start = start
        self.beta = float(beta)
        self.blend = True

    def _pool(self, model: Backbone, x: Tensor) -> Tensor:
        if self.start is not None:
            x = model.forward_blocks(x, self.start)
        return model.forward_head(x)

    def blended(self, x: Tensor) -> Tensor:
        with frozen():  # the original pool never trains
            fixed = self._pool(self.original, x)
        return self.beta * fixed + self._pool(self.backbone, x)

    def forward(self, x: Tensor) -> Tensor:
        """Blended features; the tuned pool alone in training mode when ``blend`` is off."""
        return self.blended(x) if self.blend or not self.training else self._pool(self.backbone, x)


def _tuned_part(model: Backbone, start: int | None) -> nn.Module:
    tower = image_tower(model)
    if start is None:
        pool = getattr(tower, "attnpool", None)
        if not isinstance(pool, nn.Module):
            raise ValueError(f"{type(tower).__name__} has no attention pool for SAFE to tune")
        return pool
    return cast(nn.ModuleList, tower.blocks)[start]  # a ViT tower (start is a block index)


SO = TypeVar("SO", bound=SafeOptions)


class SafeRecipe(Method[SO]):
    """What ``safe`` and ``safe_a`` share: the blended tail, its training and lr x wd search."""

    trains: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True

    def prefix(self, backbone: Backbone) -> Prefix:
        require_text_tower(self.name, backbone)
        depth = backbone.token_blocks()
        return Prefix.tokens(depth - 1) if depth else Prefix.head_in()

    def augment_views(self) -> int:
        return int(self.options.views)

    def _start(self, backbone: Backbone) -> int | None:
        p = self.prefix(backbone).resolve(backbone)
        return None if p.kind == "head_in" else p.block

    def build(self, backbone: Backbone) -> tuple[SafeTail, list[nn.Parameter]]:
        """The blended tail over two frozen copies of ``backbone`` (one tuned) and what it trains."""
        start = self._start(backbone)
        tuned = frozen_copy(backbone)
        params = own_storage(_tuned_part(tuned, start))
        return SafeTail(frozen_copy(backbone), tuned, start, self.options.beta), params

    def _scale(self, backbone: Backbone) -> float:
        return logit_scale(backbone, self.options.scale)

    def _head(self, ctx: FitContext) -> LinearHead:
        weights = text_classifier(need_text(ctx, self.name)).float()
        scale = self._scale(ctx.backbone)
        head = LinearHead(scale * weights, torch.zeros(len(weights)), normalize=True)
        head.requires_grad_(False)
        return head

    def _train_once(
        self, inputs: Tensor, labels: Tensor, ctx: FitContext, lr: float, wd: float
    ) -> tuple[SafeTail, LinearHead, dict[str, Any]]:
        o = self.options
        device = torch.device(ctx.device)
        tail, params = self.build(ctx.backbone)
        head = self._head(ctx)
        tail.to(device)
        head.to(device)
        if not o.steps:
            return tail, head, {"lr": lr, "weight_decay": wd, "steps": 0}
        tail.blend = o.blend_in_training
        val = ctx.val if ctx.val is not None and o.eval_every else None
        cfg = TrainConfig(
            optimizer="adamw",
            lr=lr,
            weight_decay=wd,
            steps=o.steps,
            batch_size=o.batch_size,
            warmup_steps=o.warmup_steps,
            eval_every=o.eval_every if val is not None else 0,
            seed=ctx.seed,
            progress=ctx.progress,
        )

        def forward(x: Tensor) -> Tensor:
            logits: Tensor = head(tail(x))
            return logits

        result = train(
            forward,
            params,
            inputs.to(device),
            labels.to(device),
            cfg,
            modules=train_modules(tail),
            val=val,
            device=device,
        )
        tail.blend = True
        record = result.to_dict()
        record.pop("history", None)
        return tail, head, {"lr": lr, "weight_decay": wd, **record}

    def _train(
        self, support: Tensor, labels: Tensor, ctx: FitContext
    ) -> tuple[SafeTail, LinearHead, dict[str, Any]]:
        """Train (searching lr x weight decay on validation when there is one); return the best."""
        o = self.options
        inputs, targets = with_views(self.name, support, labels, ctx.views, o.views)
        grid = [(o.lr, o.weight_decay)]
        if ctx.val is not None and o.eval_every and o.steps and o.lr_grid and o.wd_grid:
            grid = [(lr, wd) for lr in o.lr_grid for wd in o.wd_grid]
        best: tuple[SafeTail, LinearHead, dict[str, Any]] | None = None
        tried = []
        for lr, wd in grid:
            tail, head, rec = self._train_once(inputs, targets, ctx, lr, wd)
            acc = rec.get("best_val_accuracy")
            tried.append(
                {"lr": lr, "weight_decay": wd, "val_accuracy": acc, "best_step": rec.get("best_step")}
            )
            if best is None or (acc is not None and acc > (best[2].get("best_val_accuracy") or -1.0)):
                best = (tail, head, rec)
        assert best is not None
        best[2]["search"] = tried if len(grid) > 1 else None
        if o.wise != 1.0:  # WiSE-FT (Wortsman et al., CVPR 2022) in weight space
            tail = best[0]
            with torch.no_grad():
                frozen = _tuned_part(tail.original, tail.start).parameters()
                for p0, p in zip(frozen, _tuned_part(tail.backbone, tail.start).parameters(), strict=True):
                    p.copy_(p0 + o.wise * (p - p0))
        searched = ctx.val is not None and bool(o.eval_every) and bool(o.steps)
        best[2]["selected_on"] = "val" if searched else "last step (no validation split)"
        return best

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        t0 = time.perf_counter()
        tail, head, record = self._train(support, labels, ctx)
        record["fit_seconds"] = round(time.perf_counter() - t0, 3)
        return AdaptedFitted(self.name, tail, head, self._config(tail, head, ctx), record)

    def _config(self, tail: SafeTail, head: LinearHead, ctx: FitContext) -> dict[str, Any]:
        return {
            "method": self.name,
            "options": self.options_dict(),
            "start": tail.start,
            "seed": ctx.seed,
            "num_classes": int(head.weight.shape[0]),
            "scale": self._scale(ctx.backbone),
        }

    @classmethod
    def _rebuild(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> SafeTail:
        method = cls(options_from_dict(cls.Options, config["options"], cls.name))
        tail, _ = method.build(backbone)
        if tail.start != config.get("start"):
            raise ValueError(
                f"the classifier tuned from block {config.get('start')}, this backbone gives {tail.start}"
            )
        load_trainable_state(
            tail, {k.removeprefix("tail."): v for k, v in state.items() if k.startswith("tail.")}
        )
        return tail.eval()

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        tail = cls._rebuild(state, config, backbone)
        head = LinearHead(state["head.weight"], state["head.bias"], normalize=True)
        return AdaptedFitted(cls.name, tail, head.requires_grad_(False), config, {})


@register_method("safe", auto_order=2)  # auto: tried while the budget lasts
class SafeMethod(SafeRecipe[SafeOptions]):
    """SAFE: tune CLIP's attention pool / last ViT block against the frozen text head, blend."""

    summary = "SAFE: tune CLIP's attention pool / last block, blend beta*frozen + tuned (Zhu et al.)"


@dataclass(frozen=True)
class SafeAOptions(SafeOptions):
    """SAFE's settings plus Tip-Adapter-F's (its alpha/beta are searched on validation when given)."""

    tip_alpha: float = option(1.0, "Tip-Adapter residual ratio alpha (used without validation data)")
    tip_beta: float = option(5.5, "Tip-Adapter affinity sharpness beta (used without validation data)")
    tip_epochs: int = option(20, "Tip-Adapter-F training epochs over the cache")
    tip_lr: float = option(1e-3, "Tip-Adapter-F learning rate")


@inference
def blended_features(tail: SafeTail, prefix: Tensor) -> Tensor:
    """``beta * pool_original + pool_tuned`` of the prefix ``(M, ...)``: ``(M, D)`` on the CPU."""
    device = _device_of(tail.backbone)
    return _batched(lambda q: tail.blended(q.to(device)).float().cpu(), prefix)


class SafeAFitted(Fitted):
    """SAFE's blended features into a fitted Tip-Adapter-F: ``logits(prefix (M, ...)) -> (M, C)``."""

    def __init__(
        self,
        method: str,
        tail: SafeTail,
        tip: FittedHead,
        config: dict[str, Any],
        record: dict[str, Any],
    ) -> None:
        self.method = method
        self.tail = tail.eval()
        self.tip = tip
        self._config = config
        self._record = record

    def features(self, query: Tensor) -> Tensor:
        """Blended features ``(M, D)`` of the prefix ``(M, ...)``."""
        return blended_features(self.tail, query)

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.tip.logits(self.features(query))

    @property
    def num_classes(self) -> int:
        return int(self.tip.num_classes)

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"tail.{k}": v.detach().cpu().contiguous() for k, v in trainable_state(self.tail).items()}
        return {**state, **{f"tip.{k}": v for k, v in self.tip.state_dict().items()}}

    def config(self) -> dict[str, Any]:
        return {**self._config, "tip": self.tip.config()}

    def info(self) -> dict[str, Any]:
        return dict(self._record)

    def attention_model(self) -> Backbone:
        return self.tail.backbone


@register_method("safe_a")
class SafeAMethod(SafeRecipe[SafeAOptions]):
    """SAFE-A: SAFE's blended features as Tip-Adapter-F's cache keys and queries."""

    summary = "SAFE-A: SAFE's blended features as keys and queries of Tip-Adapter-F"

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        t0 = time.perf_counter()
        o = self.options
        tail, head, record = self._train(support, labels, ctx)
        keys = blended_features(tail, support)
        val_f = val_l = None
        if ctx.val is not None:
            val_f, val_l = blended_features(tail, ctx.val[0]), ctx.val[1]
        tip = create_head(
            "tip_adapter_f",
            text_embeddings=ctx.text,
            alpha=o.tip_alpha,
            beta=o.tip_beta,
            scale=self._scale(ctx.backbone),
            epochs=o.tip_epochs,
            lr=o.tip_lr,
            seed=ctx.seed,
        ).fit(keys, labels, ctx.num_classes, val_features=val_f, val_labels=val_l)
        assert isinstance(tip, TipAdapterClassifier)  # what tip_adapter_f fits
        record["fit_seconds"] = round(time.perf_counter() - t0, 3)
        record["tip"] = {"alpha": tip.alpha, "beta": tip.beta, "searched": val_f is not None}
        return SafeAFitted(self.name, tail, tip, self._config(tail, head, ctx), record)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        tail = cls._rebuild(state, config, backbone)
        tip_state = {k.removeprefix("tip."): v for k, v in state.items() if k.startswith("tip.")}
        return SafeAFitted(cls.name, tail, head_from_state(tip_state, config["tip"]), config, {})
