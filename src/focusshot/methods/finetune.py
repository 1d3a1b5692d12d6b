"""Fine-tuning a backbone on the support set: the machinery every tuning recipe shares.

The recipes (``ft``, ``last_block``, ``lora``, ``ssf``, ``vpt`` in
:mod:`focusshot.methods.tuning`; FORT and SAFE later) differ only in which parameters they add or
unfreeze and in an optional extra loss. What they share, following FORT's protocol (Wang et al.,
*Focus Your Attention when Few-Shot Classification*, NeurIPS 2023, Sec. 5 and its code):

1. **What is tuned reads a cached prefix.** With ``blocks = k > 0`` only the last ``k`` blocks of
   the token path (and the final norm and projection) are copied and tuned, and the method reads
   the cached tokens entering block ``L - k``: a training step costs ``k`` blocks, not ``L``.
   With ``blocks = 0`` the whole image tower is tuned from the cached preprocessed images.
2. **The copy shares frozen storage.** The backbone is copied with every parameter re-wrapped as a
   frozen parameter over the *same* storage, so an episode costs no second copy of the weights
   and the caller's backbone (its tensors and ``requires_grad`` flags) is never touched; only the
   parameters a recipe trains get storage of their own.
3. **The head starts from a solver** (:func:`focusshot.heads.trainable.linear_form`): MetaOptNet
   by default, as FORT's code does, fitted on the support features of the untrained copy.
4. **One training loop** (:func:`focusshot.training.loop.train`), batch = the number of classes
   by default (FORT: ``n_way``), epochs over the support set; validation picks the best step when
   the protocol has a validation split (the split protocol), and otherwise the last step is kept
   (episodic runs have no validation data).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from focusshot.adapters.base import AdapterError, load_trainable_state, trainable_state
from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.graph_mode import inference
from focusshot.heads import create_head
from focusshot.heads.trainable import LinearHead, linear_form
from focusshot.methods.base import FitContext, Fitted, Method
from focusshot.options import Checked, option
from focusshot.training.loop import TrainConfig, TrainResult, train

__all__ = [
    "AdaptedFitted",
    "FinetuneMethod",
    "FinetuneOptions",
    "Objective",
    "Tail",
    "frozen_copy",
    "image_tower",
]

#: an extra training loss ``(x (B, ...), y (B,), logits (B, C), idx (B,)) -> scalar``
ExtraLoss = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass
class Objective:
    """What a recipe adds to one fit's training (:meth:`FinetuneMethod.objective`): an extra loss,
    and the per-fit state it computed, which goes into the fitted result (never onto the method).

    Attributes:
        loss: ``(x, y, logits, idx) -> scalar`` added to the cross-entropy, or ``None``.
        prompts: FORT's position prompts of the training inputs ``(N, P)`` (support, then views), or
            ``None``; the fit keeps the support images' rows.
    """

    loss: ExtraLoss | None = None
    prompts: Tensor | None = None


INIT_SOLVERS = ("metaoptnet", "protonet", "r2d2", "ridge", "svm", "logistic", "zeros")


@dataclass(frozen=True)
class FinetuneOptions(Checked):
    """Options every tuning recipe shares (recipes override the defaults with their papers').

    The training fields are :class:`~focusshot.training.loop.TrainConfig`'s (:meth:`train_config`
    builds it, and its checks run when the options are created); a 0 for ``steps`` or
    ``batch_size`` means what the help says."""

    optimizer: str = option("adamw", "adamw or sgd")
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(0.01, "weight decay (matrices only)")
    momentum: float = option(0.9, "SGD momentum")
    epochs: int = option(10, "epochs over the support set (0: use steps)")
    steps: int = option(0, "optimisation steps when epochs is 0")
    batch_size: int = option(0, "support images per step (0: the number of classes, as FORT's code)")
    warmup_steps: int = option(0, "linear warm-up steps before the cosine decay")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    grad_clip: float = option(0.0, "clip the global gradient norm (0: off)")
    amp: bool = option(False, "bf16 autocast on CUDA")
    blocks: int = option(
        0, "tune the last k blocks from the cached tokens entering block L-k (0: all, from images)"
    )
    init: str = option("metaoptnet", f"solver that initialises the linear head: {', '.join(INIT_SOLVERS)}")
    temperature: float = option(1.0, "logits = (W f + b) / temperature; W, b start at temperature x solver")
    validate: bool = option(True, "when validation data exist, evaluate every epoch and keep the best step")
    views: int = option(0, "augmented views per support image (random resized crop + flip), cached; 0: none")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {self.blocks}")
        if self.init not in INIT_SOLVERS:
            raise ValueError(f"init must be one of {list(INIT_SOLVERS)}, got {self.init!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.epochs < 0 or self.steps < 0 or self.batch_size < 0:
            raise ValueError("epochs, steps and batch_size must be >= 0")
        if self.epochs == 0 and self.steps == 0:
            raise ValueError("give epochs or steps (both are 0)")
        if self.views < 0:
            raise ValueError(f"views must be >= 0, got {self.views}")
        self.train_config(classes=1, n=1, seed=0)  # the training loop's own checks, now

    def train_config(
        self, classes: int, n: int, seed: int, validate: bool = False, progress: bool = False
    ) -> TrainConfig:
        """The :class:`~focusshot.training.loop.TrainConfig` of a fit: ``classes`` ways, ``n``
        training inputs; with ``validate``, evaluate once per epoch."""
        batch = self.batch_size or classes
        return TrainConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            steps=self.steps or 1,
            epochs=self.epochs,
            batch_size=batch,
            warmup_steps=self.warmup_steps,
            label_smoothing=self.label_smoothing,
            grad_clip=self.grad_clip,
            amp=self.amp,
            eval_every=math.ceil(n / min(batch, n)) if validate else 0,
            seed=seed,
            progress=progress,
        )


def image_tower(model: nn.Module) -> nn.Module:
    """The image tower of a backbone: CLIP's ``visual``, else the backbone itself."""
    return getattr(model, "visual", None) or model


B = TypeVar("B", bound=Backbone)


def frozen_copy(backbone: B) -> B:
    """A structural copy of ``backbone`` whose parameters are frozen views of the same storage.

    Buffers are copied; so is the text tower of a CLIP, the same way (frozen parameters over the
    same storage), so a fit's trainable state never holds it; the tokenizer is shared. Nothing
    done to the copy's parameter *objects* reaches ``backbone``; writing into their storage in
    place would, so recipes give what they train storage of its own (:func:`own_storage`).
    """
    memo: dict[int, Any] = {}
    for p in backbone.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    tokenizer = getattr(backbone, "tokenizer", None)
    if tokenizer is not None:  # read-only vocabulary tables: shared
        memo[id(tokenizer)] = tokenizer
    return copy.deepcopy(backbone, memo)


def own_storage(module: nn.Module) -> list[nn.Parameter]:
    """Give every parameter of ``module`` storage of its own and make it trainable; returns them."""
    out = []
    for p in module.parameters():
        p.data = p.data.clone()
        p.requires_grad_(True)
        out.append(p)
    return out


class TunedTail(nn.Module):
    """What :class:`AdaptedFitted` holds: a module ``(B, *prefix) -> (B, num_features)`` over a tuned
    ``backbone`` (the model whose attention is recorded), tuned from block ``start``."""

    backbone: Backbone
    start: int | None


class Tail(TunedTail):
    """The part of the backbone after the cached prefix: ``(B, *prefix) -> (B, num_features)``.

    ``start = None``: the prefix is the preprocessed image and the whole tower runs;
    ``start = s``: the prefix is the tokens entering block ``s`` and blocks ``s..L-1`` run.
    """

    def __init__(self, backbone: Backbone, start: int | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.start = start

    def forward(self, x: Tensor) -> Tensor:
        b = self.backbone
        if self.start is None:
            if not b.token_blocks():
                return b.forward_features(x)
            x, start = b.embed_tokens(x), 0
        else:
            start = self.start
        return b.forward_head(b.forward_blocks(x, start))


def train_modules(module: nn.Module) -> list[nn.Module]:
    """The leaf modules of ``module`` that training puts in train mode: all but batch norms.

    Batch-norm statistics stay frozen (eval mode) while few-shot tuning: a handful of images per
    step would overwrite running statistics that were never saved with the fit.
    """
    return [
        m
        for m in module.modules()
        if not any(True for _ in m.children()) and not isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def with_views(
    method: str, support: Tensor, labels: Tensor, views: Tensor | None, count: int
) -> tuple[Tensor, Tensor]:
    """Training inputs ``(N (1 + V), ...)`` and labels: the support prefix then its ``count``
    augmented views ``(V, N, ...)`` (``ctx.views``); the support alone when ``count`` is 0."""
    if not count:
        return support, labels
    if views is None or views.shape[:2] != (count, len(support)):
        got = None if views is None else tuple(views.shape)
        raise ValueError(
            f"method {method!r} asked for {count} augmented views of each of the {len(support)} support "
            f"images, got {got}"
        )
    return torch.cat([support, views.flatten(0, 1)]), labels.repeat(count + 1)


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, size: int = 64) -> Tensor:
    if torch.compiler.is_compiling():  # a traced graph (ONNX export): one pass, the batch size symbolic
        return fn(x)
    return torch.cat([fn(x[i : i + size]) for i in range(0, len(x), size)]) if len(x) else fn(x)


def _device_of(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class AdaptedFitted(Fitted):
    """A tuned tail plus a linear head: ``logits(query prefix (M, ...)) -> (M, C)``."""

    def __init__(
        self,
        method: str,
        tail: TunedTail,
        head: LinearHead,
        config: dict[str, Any],
        record: dict[str, Any],
        prompts: Tensor | None = None,
    ) -> None:
        self.method = method
        self.tail = tail.eval()
        self.head = head.eval()
        self._config = config
        self._record = record
        #: ``(S, P)`` position prompts of the support images (FORT), else ``None``
        self.prompts = prompts

    @inference
    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """``(M, *prefix) -> (M, C)``; ``regions`` (handed to methods that read boxes) are unused."""
        device = _device_of(self.head)
        return _batched(lambda q: self.head(self.tail(q.to(device))).float().cpu(), query)

    @property
    def num_classes(self) -> int:
        return int(self.head.weight.shape[0])

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"tail.{k}": v.detach().cpu().contiguous() for k, v in trainable_state(self.tail).items()}
        state["head.weight"] = self.head.weight.detach().cpu().contiguous()
        state["head.bias"] = self.head.bias.detach().cpu().contiguous()
        if self.prompts is not None:  # FORT's support prompts (S, P): kept for inspection
            state["prompts"] = self.prompts.detach().cpu().float().contiguous()
        return state

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def info(self) -> dict[str, Any]:
        return dict(self._record)

    def attention_model(self) -> Backbone:
        return self.tail.backbone


#: a tuning recipe's options
FO = TypeVar("FO", bound=FinetuneOptions)


class FinetuneMethod(Method[FO]):
    """A recipe that tunes (part of) the backbone and a solver-initialised linear head.

    Subclasses name their options (a :class:`FinetuneOptions` subclass) as the type argument and
    implement :meth:`adapt`; FORT adds its attention loss through :meth:`objective`.
    """

    trains: ClassVar[bool] = True

    def prefix(self, backbone: Backbone) -> Prefix:
        k = self.options.blocks
        depth = backbone.token_blocks()
        if k == 0 or (depth and k >= depth):
            return Prefix.images()
        if not depth:
            raise ValueError(
                f"method {self.name!r} with blocks={k} tunes the last blocks of a token path, which "
                f"{type(backbone).__name__} ({backbone.identity.name}) does not have; use blocks=0"
            )
        return Prefix.tokens(depth - k)

    def augment_views(self) -> int:
        return int(self.options.views)

    def start(self, backbone: Backbone) -> int | None:
        """First tuned block (``None``: the whole tower, from images)."""
        return self.tail_start(self.prefix(backbone).resolve(backbone))

    @staticmethod
    def tail_start(prefix: Prefix) -> int | None:
        """First tuned block of a tail that reads ``prefix`` (resolved; ``None``: the images, the
        whole tower)."""
        return None if prefix.kind == "images" else prefix.block

    def adapt(self, model: Backbone, start: int | None, generator: torch.Generator) -> list[nn.Parameter]:
        """Add or unfreeze what this recipe trains in ``model`` (a :func:`frozen_copy`); return it."""
        raise TypeError(f"{type(self).__name__} must implement adapt()")

    @contextmanager
    def objective(
        self, tail: Tail, head: LinearHead, inputs: Tensor, labels: Tensor, ctx: FitContext
    ) -> Iterator[Objective]:
        """Open what training needs and yield this fit's :class:`Objective`.

        Held open for the whole training run (FORT records the last layer's attention in it and
        computes its position prompts before yielding). ``inputs`` ``(N, ...)`` and ``labels``
        ``(N,)`` are what training reads (support, then augmented views); ``idx`` are batch rows
        into them. The plain recipes add nothing.
        """
        yield Objective()

    def train_config(self, n: int, ctx: FitContext) -> TrainConfig:
        val = ctx.val is not None and self.options.validate
        return self.options.train_config(ctx.num_classes, n, ctx.seed, validate=val, progress=ctx.progress)

    def build(self, backbone: Backbone, generator: torch.Generator) -> tuple[Tail, list[nn.Parameter]]:
        """The adapted tail over a frozen copy of ``backbone`` and the parameters it trains."""
        start = self.start(backbone)
        model = frozen_copy(backbone)
        params = self.adapt(model, start, generator)
        if not params:
            raise AdapterError(f"method {self.name!r} found nothing to train in {backbone.identity.name}")
        return Tail(model, start), params

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(ctx.seed)
        tail, params = self.build(ctx.backbone, gen)
        device = torch.device(ctx.device)
        tail.to(device)
        tail.eval()
        with torch.no_grad():
            feats = _batched(lambda x: tail(x.to(device)).float(), support)
        head = self._init_head(feats.cpu(), labels, ctx).to(device)
        head.train()
        inputs, targets = with_views(self.name, support, labels, ctx.views, self.augment_views())
        cfg = self.train_config(len(inputs), ctx)
        with self.objective(tail, head, inputs, targets, ctx) as objective:
            result: TrainResult = train(
                lambda x: head(tail(x)),
                [*params, head.weight, head.bias],
                inputs.to(device),
                targets.to(device),
                cfg,
                modules=train_modules(tail),
                extra_loss=objective.loss,
                val=None if (ctx.val is None or not self.options.validate) else ctx.val,
                device=device,
            )
        record: dict[str, Any] = {
            "train": result.to_dict(),
            "diverged": result.diverged,
            "trained_params": int(sum(p.numel() for p in params) + head.weight.numel() + head.bias.numel()),
            "fit_seconds": round(time.perf_counter() - t0, 3),
            "selected_on": "val" if cfg.eval_every else "last step (no validation split)",
        }
        record["train"].pop("history", None)
        config = {
            "method": self.name,
            "options": self.options_dict(),
            "start": tail.start,
            "seed": ctx.seed,
            "num_classes": ctx.num_classes,
            "normalize": head.normalize,
        }
        prompts = None if objective.prompts is None else objective.prompts[: len(support)]
        return AdaptedFitted(self.name, tail, head, config, record, prompts=prompts)

    def _init_head(self, feats: Tensor, labels: Tensor, ctx: FitContext) -> LinearHead:
        o = self.options
        if o.init == "zeros":
            w, b, norm = torch.zeros(ctx.num_classes, feats.shape[1]), torch.zeros(ctx.num_classes), False
        else:
            fitted = create_head(o.init).fit(feats, labels, ctx.num_classes)
            w, b, norm = linear_form(fitted)
        return LinearHead(w, b, normalize=norm, temperature=o.temperature)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        method = cls(config["options"])
        tail, _ = method.build(backbone, torch.Generator().manual_seed(int(config.get("seed", 0))))
        if tail.start != config.get("start"):
            raise ValueError(
                f"the classifier tuned from block {config.get('start')}, this backbone gives {tail.start}"
            )
        tail_state = {k.removeprefix("tail."): v for k, v in state.items() if k.startswith("tail.")}
        load_trainable_state(tail, tail_state)
        w, b = state["head.weight"], state["head.bias"]
        head = LinearHead(w, b, normalize=bool(config.get("normalize", False)))
        head.temperature = float(config["options"].get("temperature", 1.0))
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b)
        return AdaptedFitted(cls.name, tail, head, config, {}, prompts=state.get("prompts"))
