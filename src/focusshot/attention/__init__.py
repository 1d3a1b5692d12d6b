"""The attention control point: biases in; probabilities, logits, per-head outputs and gradients out."""

from focusshot.attention.core import TAP_KINDS, Attention, AttentionTap
from focusshot.attention.record import Recording, RecordingError, attention_modules, record

__all__ = [
    "TAP_KINDS",
    "Attention",
    "AttentionTap",
    "Recording",
    "RecordingError",
    "attention_modules",
    "record",
]
