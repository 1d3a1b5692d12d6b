"""The few-shot training loop that every trainable method uses.

:func:`train` minimises the cross-entropy (with optional label smoothing) of ``forward(inputs)``
plus an optional extra loss over a list of parameters, with AdamW or SGD, a linear warm-up then
cosine learning-rate schedule, global gradient-norm clipping, optional bf16 autocast on CUDA and
optional validation-based selection of the weights with patience early stopping.

Conventions:

* Steps are numbered from 1; step ``s`` is the ``s``-th optimiser update. ``TrainResult.steps``,
  ``diverged_at``, ``best_step`` and the ``step`` of every history row use this numbering.
* Weight decay applies only to parameters with ``ndim >= 2`` (weight matrices, convolution kernels,
  embeddings); 1-d and 0-d parameters (biases, scales, norm weights, temperatures) get none, because
  shrinking them towards zero changes what the layer computes rather than regularising it.
* Only ``params`` are optimised: gradients are computed with ``torch.autograd.grad`` for those
  parameters alone, so other tensors that require grad are neither updated nor given a ``.grad``.
  Every ``param.grad`` is ``None`` when :func:`train` returns.
* Deterministic for a seed on CPU, bit for bit: the mini-batch order comes from a private
  ``torch.Generator`` seeded with ``cfg.seed`` (a fresh permutation of the N examples each epoch,
  batches drawn without replacement, the last batch of an epoch smaller when B does not divide N),
  and all other randomness (dropout) runs inside ``torch.random.fork_rng`` with the CPU generator
  (and, on CUDA, the training device's generator) seeded with ``cfg.seed``; the caller's global
  random state is left as it was. Thread settings are not touched.
* Divergence: a non-finite loss, a non-finite global gradient norm (computed in float32, so an
  overflowing norm counts) or an update that makes a parameter non-finite stops training at once.
  No update of that step is kept: the parameters are left at their last finite values (the copy
  taken before the step is restored when the update itself produced non-finite values), and the
  result says ``diverged=True, diverged_at=step``. With validation, the best validated weights are
  restored at the end as always, and ``best_step`` says which step they come from.
* Deadline: inside ``with deadline(t):`` (:mod:`focusshot.deadlines`, whose names this module
  re-exports; ``t`` on the :func:`now` clock, seconds of ``time.monotonic``), every step first
  checks the clock and raises :class:`DeadlineExceeded` once ``t`` has passed (a deadline already
  past stops training before its first step), or once the pace of the steps so far says the run
  would not end by ``t`` (:func:`deadline`). The caller, not the loop, decides what a stopped fit
  means (``fit --method auto`` lists the method as skipped); modules get their modes back as on
  any other exception. No option or result field is involved, so every method that trains
  through :func:`train` keeps a deadline its caller sets.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.deadlines import PACE_STEPS, DeadlineExceeded, check_deadline, deadline, now
from focusshot.options import option

__all__ = [
    "PACE_STEPS",
    "DeadlineExceeded",
    "TrainConfig",
    "TrainResult",
    "check_deadline",
    "deadline",
    "learning_rate",
    "now",
    "total_steps",
    "train",
]

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_float(
    name: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        upper = "" if high == math.inf else f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}{upper}, got {value!r}")


@dataclass
class TrainConfig:
    """Settings of the few-shot training loop (see the module docstring for the conventions)."""

    optimizer: str = option("adamw", "optimiser: adamw, or sgd (momentum, no nesterov)")
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(1e-4, "weight decay, on parameters with ndim >= 2 only (not biases/scales)")
    momentum: float = option(0.9, "SGD momentum (ignored by adamw)")
    steps: int = option(50, "optimisation steps (used when epochs is 0)")
    epochs: int = option(0, "> 0: train epochs * ceil(N / batch_size) steps")
    batch_size: int = option(16, "examples per step (clipped to N)")
    warmup_steps: int = option(0, "linear warm-up steps before the cosine decay")
    min_lr: float = option(0.0, "learning rate the cosine decay heads to")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    grad_clip: float = option(0.0, "max global gradient norm (0: no clipping)")
    amp: bool = option(False, "bf16 autocast (CUDA only; off on CPU)")
    eval_every: int = option(0, "> 0 with validation data: evaluate every k steps and keep the best")
    patience: int = option(0, "> 0: stop after this many evaluations without improvement")
    seed: int = option(0, "seed of the batch order and of dropout")
    progress: bool = option(False, "show a progress bar")

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _check_float("lr", self.lr, 0.0, open_low=True)
        _check_float("weight_decay", self.weight_decay, 0.0)
        _check_float("momentum", self.momentum, 0.0)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {self.momentum!r}")
        _check_int("steps", self.steps, 1)
        _check_int("epochs", self.epochs, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_float("min_lr", self.min_lr, 0.0, self.lr)
        _check_float("label_smoothing", self.label_smoothing, 0.0)
        if self.label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing must be < 1, got {self.label_smoothing!r}")
        _check_float("grad_clip", self.grad_clip, 0.0)
        for name in ("amp", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _check_int("eval_every", self.eval_every, 0)
        _check_int("patience", self.patience, 0)
        if self.patience > 0 and self.eval_every == 0:
            raise ValueError("patience needs eval_every > 0 (early stopping counts evaluations)")
        _check_int("seed", self.seed, 0)


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        steps: optimiser updates applied (the diverged step, if any, is not counted).
        final_loss: training loss of the last applied step (nan when no step was applied).
        diverged: training stopped on a non-finite loss, gradient norm or updated parameter.
        diverged_at: the step that diverged, else None.
        best_step: step whose weights were kept by validation, else None.
        best_val_accuracy: validation accuracy of those weights, else None.
        history: one row per step: ``step``, ``loss``, ``lr``, ``grad_norm`` (before clipping) and,
            on evaluation steps, ``val_accuracy``.
        seconds: wall-clock time of the call.
        diverged_reason: ``"loss"``, ``"gradient"`` or ``"parameters"`` when diverged, else None.
        amp: bf16 autocast was used (only ever on CUDA).
        device: the device training ran on.
    """

    steps: int
    final_loss: float
    diverged: bool
    diverged_at: int | None
    best_step: int | None
    best_val_accuracy: float | None
    history: list[dict[str, Any]]
    seconds: float
    diverged_reason: str | None = None
    amp: bool = False
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (strict JSON: non-finite floats become None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(asdict(self))


def total_steps(cfg: TrainConfig, n: int) -> int:
    """Optimisation steps for N training examples: ``epochs * ceil(N / batch_size)`` or ``steps``."""
    if cfg.epochs > 0:
        return cfg.epochs * math.ceil(n / min(cfg.batch_size, n))
    return cfg.steps


def learning_rate(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (1-based) out of ``total``.

    With ``W = warmup_steps``: steps ``1..W`` ramp linearly, ``lr * s / (W + 1)`` (the line from 0 at
    step 0 to ``lr`` at step ``W + 1``); steps ``s > W`` follow a cosine from ``lr`` (at ``W + 1``)
    towards ``min_lr``, ``min_lr + (lr - min_lr) (1 + cos(pi (s - W - 1) / (total - W))) / 2``, so the
    last step is one cosine increment above ``min_lr`` (torch's ``CosineAnnealingLR`` convention: no
    step is spent at ``min_lr``). ``min_lr == lr`` gives a constant rate after warm-up.
    """
    w = cfg.warmup_steps
    if step <= w:
        return cfg.lr * step / (w + 1)
    progress = (step - w - 1) / max(1, total - w)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_params(params: Sequence[nn.Parameter]) -> list[Tensor]:
    out: list[Tensor] = list(params)
    if not out:
        raise ValueError("params is empty: nothing to train")
    seen: set[int] = set()
    for i, p in enumerate(out):
        if not isinstance(p, Tensor) or not p.is_leaf or not p.requires_grad:
            raise ValueError(f"params[{i}] must be a leaf tensor with requires_grad=True")
        if not p.is_floating_point():
            raise ValueError(f"params[{i}] must be floating point, got {p.dtype}")
        if id(p) in seen:
            raise ValueError(f"params[{i}] appears more than once")
        seen.add(id(p))
    return out


def _check_data(inputs: Tensor, labels: Tensor, what: str) -> None:
    if labels.dtype != torch.int64 or labels.ndim != 1:
        raise ValueError(
            f"{what} labels must be int64 of shape (N,), got {labels.dtype} {tuple(labels.shape)}"
        )
    if inputs.ndim < 1 or inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{what} inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)} disagree on N"
        )
    if labels.numel() == 0:
        raise ValueError(f"{what} data is empty")
    if int(labels.min()) < 0:
        raise ValueError(f"{what} labels must be >= 0")


def _check_classes(labels: Tensor, val: tuple[Tensor, Tensor] | None, classes: int) -> None:
    """Refuse labels >= C before they reach the loss (on CUDA an assert would kill the process)."""
    for what, y in (("training", labels), ("validation", None if val is None else val[1])):
        if y is not None and int(y.max()) >= classes:
            raise ValueError(f"{what} labels reach {int(y.max())} but forward returns {classes} classes")


def _optimizer(params: list[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": ps, "weight_decay": wd} for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if ps
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _batches(n: int, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless (B,) index batches: a fresh permutation of range(n) per epoch, cut into chunks."""
    while True:
        order = torch.randperm(n, generator=gen)
        yield from order.split(batch)


def _as_grad(grad: Tensor | None, param: Tensor) -> Tensor | None:
    """A gradient fit to be ``param.grad``: its own memory, laid out like ``param``.

    ``torch.autograd.grad`` may return an expanded view (stride 0) or one tensor for two parameters;
    ``backward()`` would have copied those too (the gradient layout contract).
    """
    if grad is None or grad.stride() == param.stride():
        return grad
    return torch.empty_like(param).copy_(grad)


def _global_norm(grads: Sequence[Tensor], device: torch.device) -> Tensor:
    """L2 norm of all gradients together (a 0-d float32 tensor; 0 when there are none)."""
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).float() for g in grads]))


@torch.no_grad()
def _copy(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    for d, s in zip(dst, src, strict=True):
        d.copy_(s)


def _finite(tensors: Sequence[Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the CPU generator (and the CUDA device's one) and seed them; the caller's state returns after."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        # Seed only the forked generators: torch.manual_seed would also (lazily) seed every CUDA
        # device, outside the fork.
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _set_mode(modules: Sequence[nn.Module], training: bool) -> None:
    for m in modules:
        m.train(training)


@torch.no_grad()
def _accuracy(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    labels: Tensor,
    batch: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> float:
    """Top-1 accuracy of ``forward`` on inputs (V, ...) and labels (V,), in chunks of ``batch``."""
    correct = 0
    for start in range(0, labels.shape[0], batch):
        x = inputs[start : start + batch].to(device)
        with autocast():
            logits = forward(x)
        correct += int((logits.argmax(-1) == labels[start : start + batch].to(device)).sum())
    return correct / labels.shape[0]


def train(
    forward: Callable[[Tensor], Tensor],
    params: Sequence[nn.Parameter],
    inputs: Tensor,
    labels: Tensor,
    cfg: TrainConfig,
    *,
    modules: Sequence[nn.Module] = (),
    extra_loss: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None,
    val: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train ``params`` so that ``forward`` classifies ``inputs`` as ``labels``.

    Each step draws a batch of B = min(batch_size, N) examples and minimises
    ``cross_entropy(forward(x), y, label_smoothing) + extra_loss(x, y, logits, idx)``.

    Args:
        forward: batch (B, ...) on ``device`` -> logits (B, C).
        params: the parameters to optimise, and only these (leaf tensors requiring grad).
        inputs: (N, ...) training inputs (any device; each batch is moved to ``device``).
        labels: (N,) int64 class indices.
        cfg: the settings.
        modules: put in ``train()`` mode for the training steps (dropout on) and in ``eval()`` mode
            for validation; every submodule's own mode is restored afterwards.
        extra_loss: ``(x (B, ...), y (B,), logits (B, C), idx (B,)) -> scalar`` added to the
            cross-entropy; ``idx`` are the batch's row indices into ``inputs`` (per-example targets).
        val: optional (V, ...) inputs and (V,) labels; used when ``cfg.eval_every > 0``: top-1
            accuracy is measured (under no_grad, modules in eval mode) every ``eval_every`` steps and
            at the last step, the weights at the best accuracy (ties: the earlier step) are restored
            at the end, and ``cfg.patience`` evaluations without improvement stop training. The
            initial weights are not a candidate.
        device: where batches go; default the device of ``params[0]``. bf16 autocast is used only
            when ``cfg.amp`` and this is a CUDA device.

    Returns:
        A :class:`TrainResult`. Runs with autograd enabled even inside ``torch.inference_mode``.

    Raises:
        DeadlineExceeded: a step was due after the deadline of an enclosing :func:`deadline`, or
            the pace of the steps so far says the run would end after it.
    """
    start_time = time.perf_counter()
    plist = _check_params(params)
    _check_data(inputs, labels, "training")
    use_val = val is not None and cfg.eval_every > 0
    if use_val:
        assert val is not None
        _check_data(val[0], val[1], "validation")
    dev = torch.device(device) if device is not None else plist[0].device
    use_amp = cfg.amp and dev.type == "cuda"

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    n = labels.shape[0]
    batch = min(cfg.batch_size, n)
    total = total_steps(cfg, n)
    modes = [(m, m.training) for top in modules for m in top.modules()]
    history: list[dict[str, Any]] = []
    final_loss = math.nan
    done = 0
    diverged_at: int | None = None
    reason: str | None = None
    best_step: int | None = None
    best_acc: float | None = None
    best: list[Tensor] | None = None
    stale = 0

    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="train", unit="step")
    try:
        with torch.inference_mode(False), torch.enable_grad(), _seeded_rng(cfg.seed, dev):
            opt = _optimizer(plist, cfg)
            backup = [p.detach().clone() for p in plist]
            gen = torch.Generator().manual_seed(cfg.seed)
            batches = _batches(n, batch, gen)
            y_all = labels.detach().to(dev)
            _set_mode(modules, True)
            paced: float | None = None  # the clock at step 2: the pace is timed from there
            for step in range(1, total + 1):
                # None (and no clock read) without an enclosing deadline
                t = check_deadline(
                    f"training at step {step} of {total}", done=step - 2, total=total, since=paced
                )
                paced = t if step == 2 else paced
                lr = learning_rate(step, total, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = next(batches)
                x = inputs[idx.to(inputs.device)].to(dev)
                y = y_all[idx.to(dev)]
                with autocast():
                    logits = forward(x)
                    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                        raise ValueError(f"forward must return logits (B, C), got {tuple(logits.shape)}")
                    if step == 1:
                        _check_classes(labels, val if use_val else None, logits.shape[1])
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    if extra_loss is not None:
                        extra = extra_loss(x, y, logits, idx)
                        if extra.ndim != 0:
                            raise ValueError(f"extra_loss must return a scalar, got {tuple(extra.shape)}")
                        loss = loss + extra.float()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    diverged_at, reason = step, "loss"
                    break
                if not loss.requires_grad:
                    raise ValueError("the loss does not depend on params")
                grads = [
                    _as_grad(g, p)
                    for g, p in zip(torch.autograd.grad(loss, plist, allow_unused=True), plist, strict=True)
                ]
                norm = _global_norm([g for g in grads if g is not None], dev)
                grad_norm = float(norm)
                if not math.isfinite(grad_norm):
                    diverged_at, reason = step, "gradient"
                    break
                if cfg.grad_clip > 0:  # torch.nn.utils.clip_grad_norm_'s rule, out of place
                    coef = (cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
                    grads = [None if g is None else g * coef.to(g.device, g.dtype) for g in grads]
                for p, g in zip(plist, grads, strict=True):
                    p.grad = g
                _copy(backup, plist)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if not _finite(plist):
                    _copy(plist, backup)
                    diverged_at, reason = step, "parameters"
                    break
                done, final_loss = step, loss_value
                row: dict[str, Any] = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm}
                history.append(row)
                stop = False
                if use_val and (step % cfg.eval_every == 0 or step == total):
                    assert val is not None
                    _set_mode(modules, False)
                    acc = _accuracy(forward, val[0], val[1], cfg.batch_size, dev, autocast)
                    _set_mode(modules, True)
                    row["val_accuracy"] = acc
                    if best_acc is None or acc > best_acc:
                        best_acc, best_step, stale = acc, step, 0
                        if best is None:
                            best = [p.detach().clone() for p in plist]
                        else:
                            _copy(best, plist)
                    else:
                        stale += 1
                        stop = cfg.patience > 0 and stale >= cfg.patience
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
                if stop:
                    break
            opt.zero_grad(set_to_none=True)
            if best is not None:
                _copy(plist, best)
    finally:
        for m, mode in modes:
            m.training = mode
        if bar is not None:
            bar.close()
    return TrainResult(
        steps=done,
        final_loss=final_loss,
        diverged=diverged_at is not None,
        diverged_at=diverged_at,
        best_step=best_step,
        best_val_accuracy=best_acc,
        history=history,
        seconds=time.perf_counter() - start_time,
        diverged_reason=reason,
        amp=use_amp,
        device=str(dev),
    )
