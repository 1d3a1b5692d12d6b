"""APT: class prompts refined per image by cross-attention, with Monte-Carlo dropout.

*Adaptive Prompt Tuning: Vision Guided Prompt Tuning with Cross-Attention for Fine-Grained
Few-Shot Learning* (arXiv 2412.14640). The queries are the CLIP text features of the class
prompts, the keys and values the image's projected [CLS] and patch tokens; the attention output
refines each class's weight for that image, and the logit is CLIP's ``scale * cos(f(x), w_c(x))``.
Only the cross-attention (and its dropout) trains; both towers stay frozen.

The paper has no public code. What it leaves open, and what we chose:

* **Residual refinement, zero-initialised output**: ``w_c(x) = t_c + O(A(x))_c`` with ``O``'s
  weight and bias starting at zero, so before training APT *is* zero-shot CLIP (tested);
  ``q, k, v`` project ``E -> E`` (Xavier-uniform, seeded), one head by default (``heads``).
* **Tokens**: the last block's output through CLIP's final norm and projection, every token
  (:meth:`~focusshot.backbones.base.Backbone.forward_head_tokens`; on CLIP-ResNet every row of
  the attention pool). Read from the cached ``head_in`` prefix: the frozen head runs per step,
  not the network. ``f(x)`` is the projected [CLS] (row 0).
* **Dropout** ``p`` (0.1) on the attention weights and on the refinement; **training**: SGD
  (momentum 0.9, weight decay 5e-4), lr 2e-3 with cosine decay, batch 32, 50 epochs; with a
  validation split the best epoch is kept, and ``lr_grid`` (off by default) searches the
  learning rate on it. These are CoOp's optimiser settings (the paper
  trains with SGD and cosine decay but gives no values we could read).
* **Monte-Carlo dropout** at inference (Gal & Ghahramani, 2016): ``mc_samples`` (20) stochastic
  passes, batched as one tensor of ``samples x images`` rows, seeded (same seed, same numbers);
  the prediction is the mean probability, returned as ``log`` mean-probability logits;
  uncertainty: predictive entropy ``H[mean p]`` and mutual information
  ``H[mean p] - mean H[p]`` (:meth:`AptFitted.uncertainty`). ``mc_samples = 0``: one
  deterministic pass.
* **Ablations** the paper lacks: ``cross_attention=false`` (a static learned residual per class,
  CoOp-like in the embedding space, with the same dropout and MC passes) and ``dropout=0``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.graph_mode import frozen
from focusshot.heads.base import l2_normalize
from focusshot.heads.zeroshot import text_classifier
from focusshot.methods.base import FitContext, Fitted, Method, options_from_dict, register_method
from focusshot.methods.text import logit_scale, require_text_tower
from focusshot.options import option
from focusshot.training.loop import TrainConfig, train

__all__ = ["AptFitted", "AptMethod", "AptOptions", "PromptRefiner", "mc_uncertainty"]


@dataclass(frozen=True)
class AptOptions:
    """APT's settings (module docstring)."""

    heads: int = option(1, "cross-attention heads")
    dropout: float = option(0.1, "dropout on the attention weights and the refinement (MC dropout)")
    cross_attention: bool = option(True, "False: a static learned residual per class (ablation)")
    mc_samples: int = option(20, "Monte-Carlo dropout passes at inference (0: one deterministic pass)")
    lr: float = option(2e-3, "SGD learning rate (cosine decay)")
    lr_grid: tuple[float, ...] = option(
        (), "with a validation split, learning rates to search (best validation accuracy; () : off)"
    )
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay")
    epochs: int = option(50, "epochs over the support set")
    batch_size: int = option(32, "images per step")
    validate: bool = option(True, "with a validation split, keep the best epoch")
    scale: float = option(0.0, "logit scale (0: the model's exp(logit_scale))")

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if any(not v > 0 for v in self.lr_grid):
            raise ValueError(f"lr_grid values must be > 0, got {self.lr_grid}")
        if self.heads < 1 or self.mc_samples < 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("heads, epochs and batch_size must be >= 1 and mc_samples >= 0")


class PromptRefiner(nn.Module):
    """``(text (C, E), tokens (B, T, E)) -> refined class weights (B, C, E)``.

    ``t + drop(O(softmax(q(t) k(x)^T / sqrt(d)) v(x)))`` with attention dropout; ``O`` starts at
    zero. Without cross-attention: ``t + drop(delta)`` with ``delta (C, E)`` learned from zero.
    """

    def __init__(self, dim: int, classes: int, options: AptOptions, generator: torch.Generator) -> None:
        super().__init__()
        if options.cross_attention and dim % options.heads:
            raise ValueError(f"heads={options.heads} does not divide the embedding width {dim}")
        self.cross = options.cross_attention
        self.heads = options.heads
        self.p = float(options.dropout)
        if self.cross:
            self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
            for lin in (self.q, self.k, self.v):
                bound = math.sqrt(6.0 / (2 * dim))
                with torch.no_grad():
                    lin.weight.copy_(torch.rand(dim, dim, generator=generator) * 2 * bound - bound)
                    lin.bias.zero_()
            self.out = nn.Linear(dim, dim)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        else:
            self.delta = nn.Parameter(torch.zeros(classes, dim))

    def forward(self, text: Tensor, tokens: Tensor) -> Tensor:
        b = tokens.shape[0]
        if not self.cross:
            return text + F.dropout(self.delta.expand(b, -1, -1), self.p, self.training)
        c, e = text.shape
        h, d = self.heads, e // self.heads
        q = self.q(text).view(1, c, h, d).transpose(1, 2).expand(b, -1, -1, -1)  # (B, h, C, d)
        k = self.k(tokens).view(b, -1, h, d).transpose(1, 2)  # (B, h, T, d)
        v = self.v(tokens).view(b, -1, h, d).transpose(1, 2)
        attn = F.dropout((q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1), self.p, self.training)
        mixed = (attn @ v).transpose(1, 2).reshape(b, c, e)
        return text + F.dropout(self.out(mixed), self.p, self.training)


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def mc_uncertainty(probs: Tensor) -> dict[str, Tensor]:
    """``probs (S, M, C)`` of S stochastic passes -> mean ``(M, C)``, predictive entropy and mutual
    information ``(M,)`` (BALD: ``H[mean p] - mean_s H[p_s]``, zero when the passes agree)."""
    mean = probs.mean(0)
    entropy = _entropy(mean)
    return {
        "probs": mean,
        "entropy": entropy,
        "mutual_information": (entropy - _entropy(probs).mean(0)).clamp_min(0),
    }


class _AptModel(nn.Module):
    """Frozen head + text + refiner: ``head_in tokens (B, T, C) -> logits (B, C)``."""

    text: Tensor  # a buffer

    def __init__(self, backbone: Backbone, text: Tensor, refiner: PromptRefiner, scale: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("text", text)
        self.refiner = refiner
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        with frozen():
            tokens = l2_normalize(self.backbone.forward_head_tokens(x).float())
        weights = l2_normalize(self.refiner(self.text, tokens))  # (B, C, E)
        return self.scale * torch.einsum("be,bce->bc", tokens[:, 0], weights)


class AptFitted(Fitted):
    """A trained refiner: ``logits(head_in (M, T, C)) -> (M, C)`` (log mean-probabilities under MC)."""

    def __init__(
        self,
        method: str,
        model: _AptModel,
        options: AptOptions,
        config: dict[str, Any],
        record: dict[str, Any],
    ) -> None:
        self.method = method
        self.model = model.eval()
        self.options = options
        self._config = config
        self._record = record

    @torch.inference_mode()
    def predict(self, query: Tensor, chunk: int = 256) -> dict[str, Tensor]:
        """Mean probabilities ``(M, C)``, entropy and mutual information ``(M,)`` (zeros without MC)."""
        s = self.options.mc_samples if self.options.dropout > 0 else 0
        outs: list[dict[str, Tensor]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self._config.get("seed", 0)))
            for i in range(0, len(query), chunk):
                q = query[i : i + chunk]
                if s:
                    self.model.refiner.train()  # dropout on: S passes as one batch of S x m rows
                    logits = self.model(q.repeat(s, *([1] * (q.ndim - 1)))).view(s, len(q), -1)
                    self.model.refiner.eval()
                    outs.append(mc_uncertainty(logits.double().softmax(-1)))
                else:
                    p = self.model(q).double().softmax(-1)
                    outs.append(
                        {"probs": p, "entropy": _entropy(p), "mutual_information": torch.zeros(len(q))}
                    )
        return {k: torch.cat([o[k] for o in outs]).float() for k in outs[0]}

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.predict(query)["probs"].double().clamp_min(1e-12).log().float()

    def export_logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """One deterministic pass with dropout off (the refiner in eval mode): the log-probabilities
        :meth:`logits` gives when ``dropout`` or ``mc_samples`` is 0."""
        logits: Tensor = self.model(query)
        return logits.float().log_softmax(-1)

    def uncertainty(self, query: Tensor) -> dict[str, Tensor]:
        """Predictive entropy and mutual information ``(M,)`` of the query prefix."""
        out = self.predict(query)
        return {"entropy": out["entropy"], "mutual_information": out["mutual_information"]}

    @property
    def num_classes(self) -> int:
        return int(self.model.text.shape[0])

    def state_dict(self) -> dict[str, Tensor]:
        state = {
            f"refiner.{k}": v.detach().cpu().contiguous() for k, v in self.model.refiner.state_dict().items()
        }
        return {**state, "text": self.model.text.detach().cpu().contiguous()}

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def info(self) -> dict[str, Any]:
        return dict(self._record)


@register_method("apt", auto_order=3)  # auto: tried while the budget lasts
class AptMethod(Method[AptOptions]):
    """APT: cross-attention from class prompts to image tokens, MC dropout (arXiv 2412.14640)."""

    trains: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True
    summary = "APT: class prompts refined per image by cross-attention, MC-dropout uncertainty"

    def prefix(self, backbone: Backbone) -> Prefix:
        require_text_tower(self.name, backbone)
        return Prefix.head_in()

    def _scale(self, backbone: Backbone) -> float:
        return logit_scale(backbone, self.options.scale)

    def _model(self, backbone: Backbone, text: Tensor, seed: int) -> _AptModel:
        refiner = PromptRefiner(
            text.shape[1], text.shape[0], self.options, torch.Generator().manual_seed(seed)
        )
        return _AptModel(backbone, text, refiner, self._scale(backbone))

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        o = self.options
        t0 = time.perf_counter()
        if ctx.text is None:
            raise ValueError(f"method {self.name!r} needs class text embeddings: use a CLIP backbone")
        val = ctx.val if (ctx.val is not None and o.validate) else None
        search = []
        best = None
        for lr in o.lr_grid if val is not None and o.lr_grid else (o.lr,):
            model, result = self._train(support, labels, ctx, val, lr)
            acc = result.best_val_accuracy
            search.append({"lr": lr, "val_accuracy": acc})
            if best is None or (acc is not None and acc > (best[1].best_val_accuracy or -1.0)):
                best = (model, result, lr)
        assert best is not None  # the loop ran at least once
        model, result, lr = best
        record = result.to_dict()
        record.pop("history", None)
        record.update(
            {
                "lr": lr,
                "search": search if len(search) > 1 else None,
                "fit_seconds": round(time.perf_counter() - t0, 3),
                "trained_params": sum(p.numel() for p in model.refiner.parameters()),
                "selected_on": "val" if val is not None else "last step (no validation split)",
            }
        )
        config = {"method": self.name, "options": self.options_dict(), "seed": ctx.seed}
        return AptFitted(self.name, model, o, config, record)

    def _train(
        self, support: Tensor, labels: Tensor, ctx: FitContext, val: tuple[Tensor, Tensor] | None, lr: float
    ) -> tuple[_AptModel, Any]:
        """One training run at learning rate ``lr``: the model and the loop's result."""
        o = self.options
        device = torch.device(ctx.device)
        assert ctx.text is not None  # fit checked it
        model = self._model(ctx.backbone, text_classifier(ctx.text).float(), ctx.seed).to(device)
        batch = min(o.batch_size, len(support))
        cfg = TrainConfig(
            optimizer="sgd",
            lr=lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            epochs=o.epochs,
            batch_size=batch,
            eval_every=math.ceil(len(support) / batch) if val is not None else 0,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        params = list(model.refiner.parameters())
        result = train(
            model,
            params,
            support.to(device),
            labels.to(device),
            cfg,
            modules=[model.refiner],
            val=val,
            device=device,
        )
        return model, result

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        method = cls(options_from_dict(cls.Options, config["options"], cls.name))
        model = method._model(backbone, state["text"], int(config.get("seed", 0)))
        model.refiner.load_state_dict(
            {k.removeprefix("refiner."): v for k, v in state.items() if k.startswith("refiner.")}
        )
        return AptFitted(cls.name, model, method.options, config, {})
