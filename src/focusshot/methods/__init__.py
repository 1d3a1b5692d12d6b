"""Methods: published recipes composed from backbones, attention, adapters and heads."""
