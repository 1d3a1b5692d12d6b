"""focusshot: few-shot image classification with pretrained vision transformers and CLIP."""

__version__ = "0.1.0"

from focusshot.attention import record
from focusshot.backbones import create_backbone, list_backbones

__all__ = ["__version__", "create_backbone", "list_backbones", "record"]
