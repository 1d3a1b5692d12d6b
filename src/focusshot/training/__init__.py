"""Training loops (contrastive pretraining of the FocusWorld CLIP)."""
