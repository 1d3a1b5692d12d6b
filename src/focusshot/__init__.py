"""focusshot: few-shot image classification with pretrained vision transformers and CLIP."""

__version__ = "0.1.0"
