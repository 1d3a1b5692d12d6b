"""focusshot: few-shot image classification with pretrained vision transformers and CLIP."""

from typing import TYPE_CHECKING, Any

from focusshot.attention import record
from focusshot.backbones import create_backbone, list_backbones
from focusshot.versions import VERSION as __version__

if TYPE_CHECKING:  # what __getattr__ imports on first use, for type checkers
    from focusshot.api import evaluate, fit
    from focusshot.classifier import Classifier
    from focusshot.methods.base import create_method, list_methods

_LAZY = {
    "evaluate": ("focusshot.api", "evaluate"),
    "fit": ("focusshot.api", "fit"),
    "Classifier": ("focusshot.classifier", "Classifier"),
    "create_method": ("focusshot.methods.base", "create_method"),
    "list_methods": ("focusshot.methods.base", "list_methods"),
}


def __getattr__(name: str) -> Any:
    """The workflow API, imported on first use (``focusshot.evaluate``, ``focusshot.fit``, ...)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'focusshot' has no attribute {name!r}")


__all__ = [
    "Classifier",
    "__version__",
    "create_backbone",
    "create_method",
    "evaluate",
    "fit",
    "list_backbones",
    "list_methods",
    "record",
]
