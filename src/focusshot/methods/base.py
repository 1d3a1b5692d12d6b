"""The one method contract every recipe keeps (DESIGN principle 8, "Methods are recipes").

A :class:`Method` is a registered class with a typed options dataclass. It declares

* the frozen **prefix** of the backbone it consumes (:class:`~focusshot.backbones.prefix.Prefix`:
  pooled features, tokens entering block ``L - k``, per-head outputs, or the images), which the
  runner computes once per image through the shared cache;
* whether it **trains** (per episode or per split), and whether it needs class **text**
  embeddings (CLIP backbones only).

``method.fit(support, labels, ctx) -> Fitted`` reads the support set's prefix ``(N, *prefix)``
and labels ``(N,)``; ``fitted.logits(query)`` maps the query prefix ``(M, *prefix)`` to class
scores ``(M, C)``. A fitted method is tensors plus JSON (``state_dict()`` / ``config()``) and is
rebuilt with :func:`fitted_from_state` given the same backbone, so a classifier saves to and
loads from one safetensors file and nothing is ever pickled.

Methods see backbones but never import :mod:`focusshot.evaluation` (the runner sits above them).
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, get_args

from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.methods.open_set import logit_support
from focusshot.option_types import check_option_types
from focusshot.options import option, option_help, options_dict

__all__ = [
    "FitContext",
    "Fitted",
    "Method",
    "auto_candidates",
    "auto_fallback",
    "create_method",
    "describe_prefixes",
    "fitted_from_state",
    "list_methods",
    "method_class",
    "method_groups",
    "methods_in_group",
    "option_help",
    "options_for",
    "options_from_dict",
    "register_method",
    "unregister_method",
]


@dataclass
class FitContext:
    """Everything a method may use beside the support set.

    Attributes:
        backbone: the frozen backbone the prefix came from (methods that train copy what they tune).
        num_classes: C.
        class_names: the C class names (zero-shot and prompt methods).
        text: class text embeddings ``(C, T, D)`` (L2-normalised; ``None`` unless the method
            needs text).
        val: validation prefix ``(V, *prefix)`` and labels ``(V,)``, or ``None`` (episodic runs
            have none).
        views: augmented views of the support set ``(V, N, *prefix)`` when the method asks for
            them (:meth:`Method.augment_views`), computed once per image and view by the cache.
        seed: seeds everything random in the fit (initialisation, batches, dropout).
        device: where training runs.
        progress: show progress bars for long training.
        regions: the support images' regions ``(N, 4)`` (``x0, y0, x1, y1`` in ``[0, 1]`` of the
            evaluation crop; a NaN row: the image has none), given to methods that read regions
            (:attr:`Method.needs_regions`), else ``None``.
        val_regions: the same for the validation images ``(V, 4)``.
    """

    backbone: Backbone
    num_classes: int
    class_names: list[str] | None = None
    text: Tensor | None = None
    val: tuple[Tensor, Tensor] | None = None
    views: Tensor | None = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    regions: Tensor | None = None
    val_regions: Tensor | None = None


class Fitted(ABC):
    """A method fitted to one support set: ``logits(query prefix (M, ...)) -> (M, C)``.

    Every fit takes ``logits(query, regions=None)``; fits of methods that read regions
    (:attr:`Method.needs_regions`) use them, ``(M, 4)`` boxes in ``[0, 1]`` crop coordinates (a
    NaN row: the image has none); the others ignore them.
    """

    #: registry name of the method that made it (set by the method)
    method: str = ""

    @abstractmethod
    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """Class scores ``(M, C)`` for the query prefix ``(M, *prefix)``, before any softmax or
        temperature.

        Args:
            query: the query images' prefix ``(M, *prefix)`` (the prefix :meth:`Method.prefix`
                names).
            regions: ``(M, 4)`` query boxes ``(x0, y0, x1, y1)`` in ``[0, 1]`` crop coordinates, a
                NaN row for an image without one; read by fits of region methods only
                (:attr:`Method.needs_regions`), ignored by the others.
        """

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """C."""

    @abstractmethod
    def state_dict(self) -> dict[str, Tensor]:
        """The fitted tensors (adapter weights, head), detached and contiguous."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able settings that, with :meth:`state_dict` and the backbone, rebuild this fit."""

    def info(self) -> dict[str, Any]:
        """JSON-able facts about the fit (selected hyper-parameters, training record)."""
        return {}

    def attention_model(self) -> Backbone | None:
        """The adapted backbone whose attention can be recorded (``None``: the frozen backbone's)."""
        return None

    def voting_heads(self, query: Tensor) -> tuple[list[tuple[int, int]], Tensor] | None:
        """For a fit that classifies by the votes of single attention heads (SAV): the heads as
        ``(attention layer, head)`` pairs (layers counted from 0) and each query's vote per head
        ``(M, K)`` (class indices); ``None`` for every other fit. ``focusshot explain`` shows such a
        fit's own heads' attention instead of a gradient map (votes have no useful gradient).

        Args:
            query: the query prefix ``(M, *prefix)``.
        """
        return None

    def export_logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """:meth:`logits` as one fixed graph, what ``focusshot export --format onnx`` traces: the
        batch size symbolic, nothing random. The default is :meth:`logits`; a fit whose eager path
        is not such a graph overrides it (APT: one pass with dropout off instead of MC samples).

        Args:
            query: the query prefix ``(M, *prefix)``.
            regions: ``(M, 4)`` query regions, for a fit that reads them.
        """
        return self.logits(query, regions)

    def open_scores(self) -> dict[str, str]:
        """The open-set scores this fit gives (:data:`focusshot.methods.open_set.SCORES`): name ->
        ``""`` when it gives it, else why not. Every fit gives the logit scores (``msp``,
        ``max_logit``, ``energy``); a fit that also gives ``distance`` or ``mcm`` overrides this and
        :meth:`nearest_distance` / :meth:`text_similarities`."""
        return logit_support()

    def nearest_distance(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """Distance ``(M,)`` of each query's feature to the nearest class prototype or support
        feature (the ``distance`` score is minus it); fits that classify by distance give it.

        Args:
            query: the query prefix ``(M, *prefix)``.
            regions: ``(M, 4)`` query regions, for a fit that reads them.

        Raises:
            ValueError: the fit keeps no prototypes or support features (the reason).
        """
        raise ValueError(self.open_scores()["distance"])

    def text_similarities(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """Cosine similarities ``(M, C)`` of each query's image feature to the class texts (the
        ``mcm`` score reads them); CLIP fits that keep them apart from their logits give them.

        Args:
            query: the query prefix ``(M, *prefix)``.
            regions: ``(M, 4)`` query regions, for a fit that reads them.

        Raises:
            ValueError: the fit keeps no such similarities (the reason).
        """
        raise ValueError(self.open_scores()["mcm"])


M = TypeVar("M", bound=type["Method[Any]"])
#: a method's options dataclass
OptionsT = TypeVar("OptionsT")
_METHODS: dict[str, type[Method[Any]]] = {}


class Method(ABC, Generic[OptionsT]):
    """A few-shot method: options, the prefix it reads, and ``fit``.

    A method is generic over its options dataclass ``OptionsT``, which a registered class names once, as
    its base's type argument (``class LoRAFinetune(FinetuneMethod[LoRAOptions])``): the type
    checker reads ``self.options.rank`` as a field of it, and :attr:`Options` is set from it.
    Subclasses set the class attributes and are registered with :func:`register_method`.

    Args:
        options: an instance of :attr:`Options`, a mapping ``{option: value}`` (names and types
            checked, JSON lists turned into tuples: :func:`options_from_dict`), or ``None`` (the
            default) for the default options.

    Raises:
        TypeError: ``options`` is neither an :attr:`Options` instance, a mapping nor ``None``.
        ValueError: a mapping with an unknown option (the message lists the valid ones) or a bad
            value.
    """

    #: the registry name (an instance made for an alias ``METHOD@LABEL`` carries the alias)
    name: str = ""
    #: the options dataclass (every field an :func:`~focusshot.options.option`, with its help): the
    #: type argument ``OptionsT`` of the class's base, set when the class is made
    Options: ClassVar[type[Any]] = type(None)
    #: this method's options (an instance of :attr:`Options`)
    options: OptionsT
    #: trains something per support set (adapters, a head by gradient descent, prompts)
    trains: ClassVar[bool] = False
    #: needs class text embeddings (a CLIP backbone)
    needs_text: ClassVar[bool] = False
    #: one line for ``focusshot methods``
    summary: ClassVar[str] = ""
    #: set by :func:`register_method` (each registered class its own, never inherited): the
    #: groups ``--method`` expands that hold it, its place among auto's candidates, auto's fallback
    groups: ClassVar[tuple[str, ...]] = ()
    auto_order: ClassVar[float | None] = None
    auto_fallback: ClassVar[str] = ""
    #: the registry name of the recipe this one composes (``lora+fort`` extends ``lora``): options
    #: given for that recipe reach this one too (:func:`options_for`)
    extends: ClassVar[str] = ""
    #: the open-set score this method's classifiers reject unknown images by, unless another is
    #: asked for (:mod:`focusshot.methods.open_set`; every fit of the method gives it)
    open_score: ClassVar[str] = "msp"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):  # the bases as written, type arguments kept
            args = get_args(base)
            if args and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
                cls.Options = args[0]
                break

    def __init__(self, options: OptionsT | Mapping[str, Any] | None = None) -> None:
        self.options = self._checked_options(options)

    @classmethod
    def _checked_options(cls, options: object) -> Any:
        if options is None:
            return cls.Options()
        if isinstance(options, Mapping):
            return options_from_dict(cls.Options, options, cls.name)
        if not isinstance(options, cls.Options):
            raise TypeError(f"options of {cls.name!r} must be a {cls.Options.__name__} or a dict")
        return options

    @property
    def needs_regions(self) -> bool:
        """Reads a region per image (FALIP, drawn visual prompts; FORT with box prompts): the runner
        hands the support regions over in ``FitContext.regions`` and the query regions as
        ``logits(query, regions=...)``."""
        return False

    @abstractmethod
    def prefix(self, backbone: Backbone) -> Prefix:
        """The frozen prefix of ``backbone`` this method reads (raises when it cannot be served).

        Args:
            backbone: the backbone the prefix would be computed with.
        """

    @abstractmethod
    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        """Fit to the support prefix ``(N, *prefix)`` with labels ``(N,)`` in ``0..C-1``.

        Args:
            support: the support images' prefix ``(N, *prefix)`` (:meth:`prefix`).
            labels: ``(N,)`` integer class ids in ``0 .. ctx.num_classes - 1``.
            ctx: everything else the fit may use: the backbone, class names, text embeddings,
                validation set, augmented views, regions, seed and device (:class:`FitContext`).

        Returns:
            the fitted method, whose :meth:`Fitted.logits` scores ``ctx.num_classes`` classes.
        """

    def check_backbone(self, backbone: Backbone, prefix: Prefix) -> None:
        """Raise ``ValueError`` saying why this method (with its options) cannot run on ``backbone``
        beyond its prefix: recipes that adapt the backbone check what they adapt; the base checks
        nothing more. Resolving the prefix is the first check
        (:func:`~focusshot.methods.request.resolve` derives it once and hands it here).

        Args:
            backbone: the backbone the method would run on.
            prefix: the prefix the method reads there (:meth:`prefix`), resolved on it.
        """

    def uses_boxes(self) -> bool:
        """Whether, with its options, this method takes its regions from the data's boxes (then an
        image without a box is an error unless :meth:`missing_box` is ``"whole"``)."""
        return self.needs_regions

    def missing_box(self) -> str:
        """What an image without a box gets: ``"error"`` (the run stops, naming the image) or
        ``"whole"`` (no region: the whole image, counted as ``regions_missing``)."""
        return "error"

    def augment_views(self) -> int:
        """How many augmented views per support image the runner should hand over in ``ctx.views``."""
        return 0

    def export_refusal(self) -> str:
        """Why a fit of this method (with its options) cannot be exported as one fixed graph
        (``focusshot export --format onnx``, :meth:`Fitted.export_logits`); ``""`` when it can."""
        return ""

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        """Rebuild a :class:`Fitted` this method made, from its tensors and config.

        The base class raises ``TypeError``; a method whose fits can be saved overrides it.

        Args:
            state: the fit's tensors, as its :meth:`Fitted.state_dict` gave them.
            config: the fit's settings, as its :meth:`Fitted.config` gave them.
            backbone: the backbone the fit was made on (the same weights); fits that adapt the
                backbone rebuild their adapted copy from it.
        """
        raise TypeError(f"method {cls.name!r} cannot be loaded from a file")

    def options_dict(self) -> dict[str, Any]:
        """The options as JSON-able values."""
        return options_dict(self.options)


def register_method(
    name: str, *, groups: tuple[str, ...] = (), auto_order: float | None = None, auto_fallback: str = ""
) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass under ``name``.

    Args:
        name: the registry name (``--method NAME``).
        groups: the ``--method`` groups that hold it (``("tuning",)``); ``all`` is computed
            (:data:`COMPUTED_GROUPS`), never declared.
        auto_order: its place among ``fit --method auto``'s candidates, cheapest first (frozen-
            feature methods always before those that train); ``None``: not a candidate.
        auto_fallback: ``"text"`` or ``"any"``: auto's choice, on a backbone with or without a
            text tower, when no honest estimate exists (a class with one image).
    """
    if auto_fallback not in ("", "text", "any"):
        raise ValueError(f"auto_fallback must be '', 'text' or 'any', got {auto_fallback!r}")
    if "all" in groups or any(not g or "," in g for g in groups):
        raise ValueError(f"method {name!r}: bad groups {groups!r} ('all' is computed, not declared)")

    def deco(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__qualname__}")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"method {name!r}: Options must be a dataclass")
        cls.name = name
        cls.groups = tuple(groups)
        cls.auto_order = auto_order
        cls.auto_fallback = auto_fallback
        _METHODS[name] = cls
        return cls

    return deco


def unregister_method(name: str) -> None:
    """Remove ``name`` from the registry (tests and plug-ins that register a method for a while).

    Args:
        name: the registry name; a name that is not registered is ignored.
    """
    _METHODS.pop(name, None)


#: recipe modules in listing order: frozen-feature heads first, then the tuning baselines, FORT,
#: the training-free attention methods, and the CLIP adaptation methods
_RECIPES = (
    "feature_heads",
    "tuning",
    "fort",
    "falip",
    "drawn_prompts",
    "sav",
    "coop",
    "clip_lora",
    "safe",
    "apt",
)


def _load_all() -> None:
    """Import every recipe module so their registrations run, and order the registry as
    :data:`_RECIPES` lists the modules (whichever was imported first), each module's methods in the
    order it registers them; methods registered elsewhere (plug-ins, tests) come last."""
    for name in _RECIPES:
        importlib.import_module(f"focusshot.methods.{name}")
    rank = {f"focusshot.methods.{name}": i for i, name in enumerate(_RECIPES)}
    ordered = sorted(_METHODS.items(), key=lambda item: rank.get(item[1].__module__, len(rank)))
    if list(_METHODS.items()) != ordered:
        _METHODS.clear()
        _METHODS.update(ordered)


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    _load_all()
    return list(_METHODS)


#: ``--method`` groups that are queries, not declarations: name -> what it holds
COMPUTED_GROUPS = {"all": "every training-free method the backbone runs without boxes"}


def method_groups() -> dict[str, str]:
    """Every group ``--method`` accepts -> what it holds: ``all`` and each group a method declares."""
    _load_all()
    out = dict(COMPUTED_GROUPS)
    for cls in _METHODS.values():
        for g in cls.groups:
            out.setdefault(g, "")
    for g in out:
        if not out[g]:
            out[g] = ", ".join(n for n, c in _METHODS.items() if g in c.groups)
    return out


#: the backbone :func:`describe_prefixes` names prefixes on: a CLIP with 6 blocks (random weights)
PREFIX_PROBE = "world-clip"


def describe_prefixes(names: Sequence[str]) -> dict[str, str]:
    """The prefix each method reads with its default options, in words: ``pooled``, ``images``,
    ``head_in``, ``tokens entering block L-1``, ``tokens after block L``, ``head_out of every
    layer`` (``L``: the number of blocks), or ``? (why)`` where it cannot run. Named on
    :data:`PREFIX_PROBE` with random weights, built once for all of them (``focusshot methods``).

    Args:
        names: registered method names.
    """
    from focusshot.backbones.registry import create_backbone

    probe = create_backbone(PREFIX_PROBE, pretrained=False)  # 6 blocks: prefixes named relative to L
    return {name: _prefix_in_words(method_class(name)(), probe) for name in names}


def _prefix_in_words(method: Method[Any], probe: Backbone) -> str:
    try:
        p = method.prefix(probe).resolve(probe)
    except ValueError as exc:
        return f"? ({exc})"
    depth = probe.token_blocks()
    if p.kind == "tokens":
        return f"tokens entering block L-{depth - p.block}" if p.block < depth else "tokens after block L"
    if p.kind == "head_out":
        return "head_out of every layer" if len(p.layers) == depth else f"head_out of {len(p.layers)} layers"
    return p.kind


def runs_on(name: str, backbone: Backbone) -> bool:
    """Whether method ``name`` (default options) runs on ``backbone`` with no more input: text
    methods need a text tower, region methods need boxes (asked for by name), and the prefix must
    exist on the backbone."""
    return not cannot_run(name, backbone)


def cannot_run(name: str, backbone: Backbone) -> str:
    """Why method ``name`` does not run on ``backbone`` with no more input (:func:`runs_on`); ``""``
    when it does."""
    method = create_method(name)
    if method.needs_text and not backbone.capabilities.text:
        return "needs a CLIP backbone (a text tower)"
    if method.needs_regions:
        return "needs regions (boxes)"
    try:
        method.check_backbone(backbone, method.prefix(backbone).resolve(backbone))
    except ValueError as exc:
        return str(exc).split(";")[0]
    return ""


def methods_in_group(group: str, backbone: Backbone) -> list[str]:
    """The methods of ``group`` in registration order (``all``: :data:`COMPUTED_GROUPS`).

    Args:
        group: a group name (:func:`method_groups` lists them).
        backbone: the backbone the methods are to run on; only ``all`` reads it (the
            training-free methods that run on it without boxes, :func:`runs_on`).

    Raises:
        ValueError: an unknown group (the message lists the groups).
    """
    _load_all()
    if group == "all":
        return [n for n, c in _METHODS.items() if not c.trains and runs_on(n, backbone)]
    if group not in method_groups():
        raise ValueError(f"unknown method group {group!r}; groups: {', '.join(method_groups())}")
    return [n for n, c in _METHODS.items() if group in c.groups]


def auto_candidates() -> list[str]:
    """``fit --method auto``'s candidates, cheapest first: every method with an ``auto_order``,
    frozen-feature methods before those that train."""
    _load_all()
    ranked = [(c.trains, c.auto_order, n) for n, c in _METHODS.items() if c.auto_order is not None]
    return [n for _, _, n in sorted(ranked)]


def auto_fallback(backbone: Backbone) -> str:
    """The method ``auto`` falls back to without an estimate (see :attr:`Method.auto_fallback`).

    Args:
        backbone: the backbone ``auto`` chooses for: the first method registered with
            ``auto_fallback="text"`` when it has a text tower, else with ``auto_fallback="any"``.

    Raises:
        ValueError: no registered method declares that fallback.
    """
    _load_all()
    kind = "text" if backbone.capabilities.text else "any"
    for n, c in _METHODS.items():
        if c.auto_fallback == kind:
            return n
    raise ValueError(f"no method declares auto_fallback={kind!r}")


def split_alias(name: str) -> tuple[str, str]:
    """``"safe@b0"`` -> ``("safe", "b0")``; ``"safe"`` -> ``("safe", "")``.

    An alias runs a registered method under another name, so one run can hold several option
    sets of one method (``--method safe,safe@b0 --set safe@b0.beta=0``), scored on the same
    episodes and splits and paired like any two methods.
    """
    base, _, label = name.partition("@")
    if "@" in name and (not label or not all(c.isalnum() or c in "_-=." for c in label)):
        raise ValueError(
            f"bad method alias {name!r}: write METHOD@LABEL with a label of letters, digits, _ - = ."
        )
    return base, label


def method_class(name: str) -> type[Method[Any]]:
    """The registered class of method ``name`` (an alias ``METHOD@LABEL`` gives METHOD's class).

    Args:
        name: a registry name, or an alias ``METHOD@LABEL`` of one.

    Raises:
        ValueError: an unknown method (the message lists the valid ones) or a malformed alias.
    """
    _load_all()
    base, _ = split_alias(name)
    if base not in _METHODS:
        raise ValueError(f"unknown method {base!r}; valid methods: {', '.join(_METHODS)}")
    return _METHODS[base]


def create_method(name: str, options: Any = None, **overrides: Any) -> Method[Any]:
    """The method ``name`` (or an alias ``METHOD@LABEL``, :func:`split_alias`) with ``options`` (a
    dataclass or a dict) and keyword overrides.

    Args:
        name: a registry name, or an alias ``METHOD@LABEL`` (the method then carries the alias as
            its :attr:`~Method.name`).
        options: the method's :attr:`~Method.Options` instance, a mapping ``{option: value}``, or
            ``None`` for the defaults.
        **overrides: option values that replace those in ``options``.

    Raises:
        ValueError: an unknown method (listing the valid ones) or an unknown option (listing the
            valid options), or an invalid value.
    """
    cls = method_class(name)
    if overrides:
        is_instance = dataclasses.is_dataclass(options) and not isinstance(options, type)
        base = dataclasses.asdict(options) if is_instance else dict(options or {})
        options = {**base, **overrides}
    method = cls(options)
    if name != cls.name:  # an alias: results, options and saved fits carry the alias
        method.name = name
    return method


def options_for(name: str, settings: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """Method ``name``'s options out of ``settings`` (``{method: {option: value}}``, as ``--set``
    and options files give them): those of the recipe it extends (:attr:`Method.extends`; e.g.
    ``lora``'s for ``lora+fort``) first, then its own, which win.

    Args:
        name: the method's name (an alias ``METHOD@LABEL`` finds its own settings under the
            alias, and those of the recipe its method extends).
        settings: ``{method: {option: value}}``; ``None`` counts as empty.

    Returns:
        a new ``{option: value}`` dict (unchecked: :func:`create_method` checks the options).
    """
    settings = settings or {}
    cls = method_class(name)
    out: dict[str, Any] = dict(settings.get(cls.extends, {})) if cls.extends else {}
    out.update(settings.get(name, {}))
    return out


def options_from_dict(options_cls: type, values: Mapping[str, Any], method: str = "") -> Any:
    """Build ``options_cls`` from ``values``, checking names and coercing JSON lists to tuples.

    Args:
        options_cls: the options dataclass to build (a method's :attr:`~Method.Options`).
        values: ``{option: value}``; options left out keep their defaults. A list becomes a tuple
            where the field's default is a tuple (or the field has no default).
        method: the method's name, for error messages only.

    Raises:
        ValueError: an unknown option (the message lists the valid ones), a value of the wrong
            type, or one the dataclass refuses.
    """
    fields = {f.name: f for f in dataclasses.fields(options_cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; valid options: {', '.join(fields)}"
        )
    check_option_types(options_cls, values, method)
    clean: dict[str, Any] = {}
    for key, value in values.items():
        default = fields[key].default
        if isinstance(value, list) and (isinstance(default, tuple) or default is dataclasses.MISSING):
            value = tuple(value)
        clean[key] = value
    try:
        return options_cls(**clean)
    except TypeError as exc:
        raise ValueError(f"bad options for method {method!r}: {exc}") from exc


def fitted_from_state(state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
    """Rebuild any fitted method from its state dict and config (dispatches on ``config["method"]``).

    Args:
        state: the fit's tensors (:meth:`Fitted.state_dict`).
        config: the fit's settings (:meth:`Fitted.config`); ``config["method"]`` names the method
            (or alias) whose :meth:`Method.from_state` rebuilds the fit.
        backbone: the backbone the fit was made on.

    Raises:
        ValueError: the config names no method, or an unknown one.
        TypeError: the method's fits cannot be loaded from a file.
    """
    name = config.get("method")
    if not isinstance(name, str):
        raise ValueError("the fitted method's config names no method")
    fitted = method_class(name).from_state(state, config, backbone)
    fitted.method = name  # an alias's fit loads under the alias it was saved with
    return fitted


def no_options() -> Any:
    """``field()`` for option dataclasses that hold nothing."""
    return option(None, "no options")
