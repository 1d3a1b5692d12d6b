"""A method request resolved once: name (or alias) + options + backbone -> one :class:`Resolved`.

The command line and the Python API both turn what a user asked for -- ``--method lora+fort``
with ``--set lora.rank=8``, or ``fit(..., method="lora+fort", options={"rank": 8})`` -- into the
method instance with its options and the frozen prefix it reads on the backbone. That object
flows through extraction, the fit and the :class:`~focusshot.classifier.Classifier`, so the
registry is asked once, the options are checked once (one unknown-option rule, one message),
the backbone is checked once, before any image is read, and the prefix is derived and resolved
once.

``auto`` is not a method but a request to choose one (:mod:`focusshot.auto`); :data:`AUTO` and
:func:`fit_options` are the one place that knows it takes no options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.methods.base import Method, create_method, method_class, options_for

__all__ = ["AUTO", "Resolved", "fit_options", "resolve", "settings_for"]

#: ``fit --method auto``: choose the method by cross-validation on the support set
AUTO = "auto"


@dataclass(frozen=True)
class Resolved:
    """A method with its options, checked against a backbone, and the prefix it reads there.

    The prefix is derived here once per request and handed on as a value: extraction, the cache,
    the fit and the :class:`~focusshot.classifier.Classifier` read it, none derives it again.

    Attributes:
        method: the method instance (its ``name`` is the name or alias asked for).
        prefix: the frozen prefix of the backbone it reads, resolved there
            (:meth:`Prefix.resolve <focusshot.backbones.prefix.Prefix.resolve>`: absolute layers,
            ``head_in`` of a ViT as ``tokens`` at ``L``): what is computed, cached and fitted on.
        declared: the same prefix as the method declares it (:meth:`Method.prefix`), which a
            classifier file records.
    """

    method: Method[Any]
    prefix: Prefix
    declared: Prefix

    @property
    def name(self) -> str:
        """The registry name or alias (``safe@b0``)."""
        return self.method.name


def settings_for(
    names: Sequence[str], settings: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Each of ``names``' options out of ``settings`` (``{method: {option: value}}``, as ``--set``
    and options files give them): a recipe's options reach the recipes that extend it
    (:func:`~focusshot.methods.base.options_for`).

    Raises:
        ValueError: settings name a method that is not being run (the one unknown-method-option
            rule), or ``auto`` is given options.
    """
    settings = settings or {}
    if AUTO in names:
        if settings:
            raise ValueError(
                f"method {AUTO!r} takes no options (it chooses a method with its defaults); "
                f"options were given for {sorted(settings)}"
            )
        return {AUTO: {}}
    extends = {method_class(n).extends for n in names}
    unknown = sorted(set(settings) - set(names) - extends)
    if unknown:
        raise ValueError(f"options given for method(s) {unknown} that are not being run ({list(names)})")
    return {n: options_for(n, settings) for n in names}


def fit_options(name: str, settings: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The options of the one method ``fit`` runs (``{}`` for ``auto``), out of ``settings``."""
    return settings_for([name], settings)[name]


def resolve(name: str, options: Any, backbone: Backbone) -> Resolved:
    """Method ``name`` (or an alias) with ``options`` (a dataclass, a dict or ``None``), checked
    against ``backbone``.

    Raises:
        ValueError: an unknown method or option (listing the valid ones), a bad value, or a
            method that cannot run on ``backbone`` (saying why, naming the method).
    """
    if name == AUTO:
        raise ValueError(f"{AUTO!r} chooses a method; resolve the method it chose")
    method = create_method(name, options)
    try:  # before any image is read: a method that cannot run here says why
        declared = method.prefix(backbone)
        prefix = declared.resolve(backbone)
        method.check_backbone(backbone, prefix)
    except ValueError as exc:
        raise ValueError(f"method {method.name!r} cannot run on {backbone.identity.name}: {exc}") from None
    return Resolved(method, prefix, declared)
