"""Shared machinery of the adapters: find modules by name, swap them, freeze and save what trains.

Adapters inject into any :class:`torch.nn.Module` by qualified module name (DESIGN principle 6,
after peft's ``inject_adapter_in_model``). Names are the ones :meth:`torch.nn.Module.named_modules`
gives, matched with shell-style :func:`fnmatch.fnmatchcase` patterns, where ``*`` also crosses dots:
``"*.attn.q"`` matches ``blocks.0.attn.q`` in a ViT and both ``visual.blocks.0.attn.q`` and
``text.blocks.0.attn.q`` in a CLIP (use ``"visual.*.attn.q"`` or inject into ``clip.visual`` to
adapt only the image tower).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TypeVar

import torch
from torch import Tensor, nn


class AdapterError(ValueError):
    """An adapter cannot be injected, merged or loaded as asked (the message says why)."""


class AdapterModule(nn.Module, metaclass=ABCMeta):
    """Base class of the layer wrappers (:class:`~focusshot.adapters.lora.LoRALinear`, SSF).

    A wrapper keeps the layer it adapts as ``base`` and can fold itself into it (``merge``) and
    take itself out again (``unmerge``). Modules inside a wrapper are never targets of another
    injection, so injecting twice cannot wrap a wrapped base a second time.
    """

    base: nn.Module
    merged: bool

    @abstractmethod
    def merge(self) -> None:
        """Fold the adaptation into ``base`` (forward then skips it)."""

    @abstractmethod
    def unmerge(self) -> None:
        """Take the adaptation out of ``base`` again."""


def describe_model(model: nn.Module) -> str:
    """``"ClassName (identity name)"`` when ``model.identity.name`` exists, else ``"ClassName"``."""
    name = getattr(getattr(model, "identity", None), "name", None)
    cls = type(model).__name__
    return f"{cls} ({name})" if isinstance(name, str) and name and name != cls else cls


def _as_patterns(patterns: str | Sequence[str]) -> list[str]:
    if isinstance(patterns, str):
        return [patterns]
    out = list(patterns)
    if not all(isinstance(p, str) for p in out):
        raise TypeError(f"patterns must be strings, got {out!r}")
    return out


def find_modules(
    model: nn.Module,
    patterns: str | Sequence[str],
    kind: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Module,
) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` whose qualified name matches any pattern, in ``named_modules`` order.

    Args:
        model: any module.
        patterns: :func:`fnmatch.fnmatchcase` patterns over qualified names (``"*.attn.q"``,
            ``"blocks.3.*"``, ``"norm"``). The root module has the empty name, which ``"*"``
            matches.
        kind: keep only instances of this type (or tuple of types).

    Returns:
        ``(qualified_name, module)`` pairs.
    """
    pats = _as_patterns(patterns)
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, kind) and any(fnmatchcase(name, p) for p in pats)
    ]


def _inside_wrapper(name: str, wrapper_names: Iterable[str]) -> bool:
    return any(name.startswith(w + ".") for w in wrapper_names)


def injection_targets(
    model: nn.Module,
    patterns: Sequence[str],
    kind: type[nn.Module] | tuple[type[nn.Module], ...],
    wrapper: type[AdapterModule],
    method: str,
    need: str,
) -> list[tuple[str, nn.Module]]:
    """The modules an injector should wrap, with clear errors when there are none.

    Skips the root and anything inside an existing :class:`AdapterModule`; refuses when a pattern
    names a module that ``wrapper`` already wraps.

    Args:
        model: the model to inject into.
        patterns: target-name patterns (see :func:`find_modules`).
        kind: the layer type(s) the adapter can wrap.
        wrapper: the adapter's wrapper class (to detect a second injection).
        method: adapter name for messages (``"LoRA"``).
        need: the end of the "nothing matched" message (``"LoRA needs attention q/v projections"``).
    """
    pats = _as_patterns(patterns)
    wrappers = [n for n, m in model.named_modules() if isinstance(m, AdapterModule)]
    matched = [(n, m) for n, m in find_modules(model, pats) if n]
    again = [n for n, m in matched if isinstance(m, wrapper)]
    if again:
        raise AdapterError(f"{describe_model(model)} already has {method} on {again}; inject it only once")
    targets = [(n, m) for n, m in matched if isinstance(m, kind) and not _inside_wrapper(n, wrappers)]
    if not targets:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        kind_names = "/".join(
            f"nn.{k.__name__}" if k.__module__.startswith("torch.nn") else k.__name__ for k in kinds
        )
        raise AdapterError(f"no {kind_names} modules matching {pats} in {describe_model(model)}; {need}")
    return targets


def replace_module(model: nn.Module, qualified_name: str, new_module: nn.Module) -> None:
    """Put ``new_module`` where ``model.get_submodule(qualified_name)`` is (not the root).

    ``new_module`` takes the training mode of the module it replaces (a freshly built wrapper is in
    training mode, and its dropout would otherwise act inside a model in eval mode).
    """
    if not qualified_name:
        raise AdapterError(f"cannot replace the root module of {describe_model(model)}")
    parent_name, _, child = qualified_name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
        old = parent.get_submodule(child)
    except AttributeError as err:
        raise AdapterError(f"{describe_model(model)} has no module {qualified_name!r}") from err
    new_module.train(old.training)
    setattr(parent, child, new_module)


def freeze(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(model: nn.Module, patterns: str | Sequence[str]) -> list[str]:
    """Set ``requires_grad=True`` on every parameter of the modules matching ``patterns``.

    Parameters of a matched module's children count too (``"blocks.11"`` unfreezes the whole
    block); ``["*"]`` unfreezes everything (full fine-tuning).

    Returns:
        Qualified names of the parameters now trainable because of this call.

    Raises:
        AdapterError: no parameter lies in a matching module.
    """
    pats = _as_patterns(patterns)
    names: list[str] = []
    seen: set[int] = set()
    for mod_name, mod in find_modules(model, pats):
        for p_name, p in mod.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            p.requires_grad_(True)
            names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    if not names:
        raise AdapterError(f"no parameters in modules matching {pats} in {describe_model(model)}")
    return names


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """``{name: detached clone}`` of every parameter with ``requires_grad=True``."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` (from :func:`trainable_state`) into the trainable parameters of ``model``.

    Strict: the names must be exactly those of the trainable parameters and the shapes must agree.

    Raises:
        AdapterError: naming the missing and unexpected keys, or the mismatched shapes.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise AdapterError(
            f"trainable state does not fit {describe_model(model)}: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    bad = [
        f"{n}: {tuple(state[n].shape)} vs {tuple(p.shape)}"
        for n, p in params.items()
        if tuple(state[n].shape) != tuple(p.shape)
    ]
    if bad:
        raise AdapterError(f"trainable state shapes do not fit {describe_model(model)}: {bad}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def new_parameter(
    shape: Sequence[int],
    like: Tensor,
    init: str,
    generator: torch.Generator | None,
    **kwargs: float,
) -> nn.Parameter:
    """A trainable parameter of ``shape`` on ``like``'s device and dtype, initialised on the CPU.

    Initialising on the CPU in float32 with ``generator`` makes the values the same on every device.
    ``init`` is ``"zeros"``, ``"ones"``, ``"normal"`` (``mean``, ``std``), ``"uniform"``
    (``a``, ``b``) or ``"kaiming_uniform"`` (``a``).
    """
    t = torch.empty(tuple(shape), dtype=torch.float32)
    if init == "zeros":
        t.zero_()
    elif init == "ones":
        t.fill_(1.0)
    elif init == "normal":
        std = kwargs.get("std", 1.0)
        mean = kwargs.get("mean", 0.0)
        if std == 0.0:
            t.fill_(mean)
        else:
            nn.init.normal_(t, mean=mean, std=std, generator=generator)
    elif init == "uniform":
        nn.init.uniform_(t, kwargs.get("a", 0.0), kwargs.get("b", 1.0), generator=generator)
    elif init == "kaiming_uniform":
        nn.init.kaiming_uniform_(t, a=kwargs.get("a", 0.0), generator=generator)
    else:  # pragma: no cover - internal callers only
        raise ValueError(f"unknown init {init!r}")
    return nn.Parameter(t.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None))


A = TypeVar("A", bound=AdapterModule)


def adapter_layers(model: nn.Module, kind: type[A]) -> list[tuple[str, A]]:
    """``(qualified_name, layer)`` of every adapter of type ``kind`` in ``model``, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]


def merge_all(model: nn.Module, kind: type[AdapterModule], merge: bool, name: str, inject: str) -> list[str]:
    """Merge (or unmerge) every ``kind`` adapter of ``model``; returns their names.

    Raises:
        AdapterError: ``model`` has none (``name`` and ``inject`` word the message).
    """
    layers = adapter_layers(model, kind)
    if not layers:
        raise AdapterError(f"{describe_model(model)} has no {name} layers (call {inject} first)")
    for _, layer in layers:
        layer.merge() if merge else layer.unmerge()
    return [n for n, _ in layers]
