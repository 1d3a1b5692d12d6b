"""Backbones: owned ViT / Swin / CLIP towers, converters for real checkpoints, and the registry."""

from focusshot.backbones.base import Backbone, Capabilities, Identity, Preprocess
from focusshot.backbones.registry import BackboneSpec, create_backbone, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Capabilities",
    "Identity",
    "Preprocess",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
