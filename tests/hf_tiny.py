"""Tiny random Hugging Face models shared by the converter and adapter-export tests."""

from typing import Any


def tiny_clip_config(transformers: Any, heads: int = 4, eos: int = 98) -> Any:
    """A ``CLIPConfig``: 32-px images, patch 8, width 32, 2 layers of ``heads`` heads, text vocab 99."""
    return transformers.CLIPConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=heads,
            max_position_embeddings=16,
            eos_token_id=eos,
            bos_token_id=97,
            pad_token_id=0,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=heads,
        ),
        projection_dim=16,
    )
