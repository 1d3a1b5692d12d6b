"""The contract every classifier head keeps (DESIGN principle 7, "Heads are pure").

A *head* is a small, immutable configuration object. ``head.fit(features, labels)`` reads support
features and returns a :class:`FittedHead`; nothing is stored on the head itself, so one head can
fit any number of episodes, in any order, from any thread. A fitted head holds only tensors and
JSON-able values and computes ``logits(query)``; it round-trips through
``state_dict()`` / ``config()`` / ``from_state()`` and through safetensors files
(:func:`save_fitted` / :func:`load_fitted`), never through pickle.

Shapes used throughout the package::

    features   (N, D)   support features           labels  (N,)  int64 in 0..C-1
    query      (M, D)   query features             logits  (M, C)

Heads that search a hyper-parameter (the logistic probe's C, Tip-Adapter's alpha and beta) take a
validation split as ``val_features`` (V, D) and ``val_labels`` (V,); the others ignore it.

Heads never import :mod:`focusshot.backbones`: they see features, never images or models.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor

__all__ = [
    "FittedHead",
    "Head",
    "HeadInputError",
    "check_query",
    "check_support",
    "check_validation",
    "create_head",
    "fitted_from_state",
    "list_heads",
    "load_fitted",
    "register_head",
    "save_fitted",
]

#: Key of the safetensors metadata entry that carries a fitted head's JSON config.
METADATA_KEY = "focusshot.head"


class HeadInputError(ValueError):
    """Features or labels handed to a head do not fit its contract (shape, range, a missing class)."""


# --------------------------------------------------------------------------------------------- checks


def _check_features(x: Tensor, name: str, ndim: int) -> None:
    if not isinstance(x, Tensor):
        raise HeadInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        want = "(N, D)" if ndim == 2 else "(E, N, D)"
        raise HeadInputError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise HeadInputError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # a traced graph (ONNX export, torch.compile) cannot branch on values: the check is eager-only
    if x.numel() and not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise HeadInputError(f"{name} contains NaN or infinite values")


def check_support(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    batched: bool = False,
    require_every_class: bool = True,
) -> int:
    """Validate a support set and return the number of classes C.

    Args:
        features: (N, D) support features, or (E, N, D) when ``batched``.
        labels: (N,) integer labels in ``0..C-1``, or (E, N) when ``batched``.
        num_classes: C; when ``None`` it is ``labels.max() + 1``.
        batched: whether a leading episode dimension E is expected.
        require_every_class: raise when a class in ``0..C-1`` has no support example (in any
            episode, when batched).

    Raises:
        HeadInputError: with a message naming what is wrong.
    """
    _check_features(features, "support features", 3 if batched else 2)
    if not isinstance(labels, Tensor):
        raise HeadInputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise HeadInputError(f"labels must be an integer tensor (int64), got {labels.dtype}")
    if tuple(labels.shape) != tuple(features.shape[:-1]):
        raise HeadInputError(
            f"labels must have shape {tuple(features.shape[:-1])} to match features "
            f"{tuple(features.shape)}, got {tuple(labels.shape)}"
        )
    if features.shape[-2] == 0 and num_classes is None:
        raise HeadInputError("an empty support set needs an explicit num_classes")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise HeadInputError(f"num_classes must be a positive int, got {num_classes!r}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise HeadInputError(
                f"label {bad} is out of range for {num_classes} classes (valid: 0..{num_classes - 1})"
            )
    if require_every_class:
        counts = torch.zeros(*labels.shape[:-1], num_classes, dtype=torch.long, device=labels.device)
        counts.scatter_add_(-1, labels.long(), torch.ones_like(labels, dtype=torch.long))
        empty = (counts == 0).nonzero()
        if len(empty):
            missing = sorted({int(row[-1]) for row in empty.tolist()})
            where = " in some episode" if batched else ""
            raise HeadInputError(
                f"class(es) {missing[:10]}{'...' if len(missing) > 10 else ''} have no support "
                f"example{where}; "
                f"every class in 0..{num_classes - 1} needs at least one (or pass num_classes)"
            )
    return num_classes


def check_query(query: Tensor, dim: int, *, episodes: int | None = None) -> None:
    """Validate query features: (M, D), or (E, M, D) when the head was fitted on E episodes at once."""
    _check_features(query, "query features", 2 if episodes is None else 3)
    if query.shape[-1] != dim:
        raise HeadInputError(
            f"query features have dimension {query.shape[-1]}, but the head was fitted on D={dim}"
        )
    if episodes is not None and query.shape[0] != episodes:
        raise HeadInputError(
            f"query features hold {query.shape[0]} episodes, but the head was fitted on {episodes}"
        )


def check_validation(
    val_features: Tensor | None, val_labels: Tensor | None, dim: int, num_classes: int
) -> tuple[Tensor, Tensor] | None:
    """Validate an optional validation split; ``None`` when none was given."""
    if val_features is None and val_labels is None:
        return None
    if val_features is None or val_labels is None:
        raise HeadInputError("give both val_features and val_labels, or neither")
    check_support(val_features, val_labels, num_classes, require_every_class=False)
    if val_features.shape[-1] != dim:
        raise HeadInputError(
            f"validation features have dimension {val_features.shape[-1]}, support has D={dim}"
        )
    if val_features.shape[0] == 0:
        raise HeadInputError("the validation split is empty")
    return val_features, val_labels.long()


# --------------------------------------------------------------------------------------------- fitted heads

_FITTED_TYPES: dict[str, type[FittedHead]] = {}

F = TypeVar("F", bound="FittedHead")


def class_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of the dataclass ``cls`` (heads and fitted heads are dataclasses)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    return dataclasses.fields(cls)


class FittedHead(ABC):
    """A head fitted to one support set (or to E episodes at once): tensors plus JSON-able settings.

    Subclasses are frozen dataclasses. Their tensor fields form :meth:`state_dict`; every other field
    forms :meth:`config` and must be JSON-able. ``FittedHead.from_state(state, config)`` rebuilds one.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _FITTED_TYPES[cls.__name__] = cls

    @abstractmethod
    def logits(self, query: Tensor) -> Tensor:
        """Class scores for query features: (M, D) -> (M, C) (or (E, M, D) -> (E, M, C))."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """C, the number of classes the head scores."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """D, the feature dimension the head expects."""

    def predict(self, query: Tensor) -> Tensor:
        """Predicted class per query: (M, D) -> (M,) int64."""
        return self.logits(query).argmax(-1)

    def __call__(self, query: Tensor) -> Tensor:
        return self.logits(query)

    # ---- serialisation
    def _fields(self) -> list[dataclasses.Field[Any]]:
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be a dataclass to use the default serialisation")
        return list(dataclasses.fields(self))

    def state_dict(self) -> dict[str, Tensor]:
        """The tensors of this fitted head (contiguous, detached), keyed by field name."""
        return {
            f.name: getattr(self, f.name).detach().contiguous()
            for f in self._fields()
            if isinstance(getattr(self, f.name), Tensor)
        }

    def config(self) -> dict[str, Any]:
        """The JSON-able settings of this fitted head, with ``"type"`` naming its class."""
        cfg: dict[str, Any] = {"type": type(self).__name__}
        for f in self._fields():
            value = getattr(self, f.name)
            if not isinstance(value, Tensor):
                cfg[f.name] = value
        try:
            json.dumps(cfg)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{type(self).__name__}.config() is not JSON-able: {exc}") from exc
        return cfg

    @classmethod
    def from_state(cls: type[F], state: dict[str, Tensor], config: dict[str, Any]) -> F:
        """Rebuild a fitted head from :meth:`state_dict` and :meth:`config`.

        Called on :class:`FittedHead` itself it dispatches on ``config["type"]``.
        """
        config = dict(config)
        kind = config.pop("type", cls.__name__)
        target = _FITTED_TYPES.get(kind)
        if target is None:
            raise ValueError(f"unknown fitted head type {kind!r}; known: {sorted(_FITTED_TYPES)}")
        if not issubclass(target, cls):
            raise ValueError(f"config describes a {kind}, not a {cls.__name__}")
        names = {f.name for f in class_fields(target)}
        given = set(state) | set(config)
        if given != names:
            missing, extra = sorted(names - given), sorted(given - names)
            raise ValueError(
                f"state/config for {kind} do not match its fields: missing {missing}, unexpected {extra}"
            )
        return target(**state, **config)

    def to(self: F, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> F:
        """A copy with floating-point tensors moved to ``device`` / cast to ``dtype``."""
        changes = {}
        for name, t in self.state_dict().items():
            changes[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        moved: F = dataclasses.replace(cast(Any, self), **changes)  # every fitted head is a dataclass
        return moved


def fitted_from_state(state: dict[str, Tensor], config: dict[str, Any]) -> FittedHead:
    """Rebuild any fitted head from its state dict and config (dispatches on ``config["type"]``)."""
    return FittedHead.from_state(state, config)


def save_fitted(fitted: FittedHead, path: str | Path) -> None:
    """Write a fitted head to a safetensors file (tensors + JSON config in the metadata; no pickle)."""
    from safetensors.torch import save_file

    state = {k: v.cpu() for k, v in fitted.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(fitted.config())})


def load_fitted(path: str | Path, device: torch.device | str = "cpu") -> FittedHead:
    """Read a fitted head written by :func:`save_fitted`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        if METADATA_KEY not in metadata:
            raise ValueError(
                f"{path}: no {METADATA_KEY!r} metadata; not a fitted head written by save_fitted"
            )
        state = {k: f.get_tensor(k) for k in f.keys()}
    return fitted_from_state(state, json.loads(metadata[METADATA_KEY]))


# --------------------------------------------------------------------------------------------- heads

_HEADS: dict[str, type[Head]] = {}


class Head(ABC):
    """A classifier configuration: ``fit(features, labels) -> FittedHead``.

    Subclasses are frozen dataclasses registered with :func:`register_head`; they hold settings only.
    """

    #: Registry name, set by :func:`register_head`.
    name: ClassVar[str] = ""

    @abstractmethod
    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> FittedHead:
        """Fit to support ``features`` (N, D) with ``labels`` (N,) in ``0..C-1``.

        Args:
            features: (N, D) support features.
            labels: (N,) int64 class indices.
            num_classes: C; defaults to ``labels.max() + 1``.
            val_features: optional (V, D) validation features for heads that search hyper-parameters.
            val_labels: optional (V,) validation labels.
        """


H = TypeVar("H", bound=type[Head])


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator: register a :class:`Head` dataclass under ``name`` for :func:`create_head`."""

    def deco(cls: H) -> H:
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(f"head {name!r} is already registered by {_HEADS[name].__qualname__}")
        cls.name = name
        _HEADS[name] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`, sorted."""
    return sorted(_HEADS)


def head_arguments(name: str) -> list[str]:
    """The keyword arguments head ``name`` accepts."""
    cls = _lookup(name)
    return [f.name for f in class_fields(cls) if f.init]


def _lookup(name: str) -> type[Head]:
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(list_heads())}")
    return _HEADS[name]


def create_head(name: str, **kwargs: Any) -> Head:
    """Build the head registered as ``name`` with keyword settings.

    Args:
        name: the registered head name (:func:`list_heads`), e.g. ``"protonet"`` or ``"logistic"``.
        **kwargs: the head's settings, fields of its dataclass (:func:`head_arguments` lists them
            for ``name``); settings left out keep the class's defaults.

    Raises:
        ValueError: for an unknown name (the message lists the valid names) or an invalid value.
        TypeError: for unknown keyword arguments (the message lists the valid ones).
    """
    cls = _lookup(name)
    valid = head_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(
            f"unknown argument(s) {unknown} for head {name!r}; valid arguments: {', '.join(valid)}"
        )
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------- helpers


def solve_dtype(x: Tensor) -> torch.dtype:
    """float64 for the small dense solves (exactness), except on devices without float64 (MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def solver_features(features: Tensor, normalize: bool) -> Tensor:
    """Features ``(..., N, D)`` in the solver dtype (:func:`solve_dtype`), L2-normalised per row if asked."""
    x = features.to(solve_dtype(features))
    return l2_normalize(x) if normalize else x


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(..., N) int64 -> (..., N, C) one-hot in ``dtype``."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


def l2_normalize(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(x, dim=-1)


def positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive (or non-negative) finite number."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )
    if not ok or (value < 0 if allow_zero else value <= 0):
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {need} finite number, got {value!r}")


def one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
