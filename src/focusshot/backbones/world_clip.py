"""``world-clip``: the small CLIP focusshot pretrains on FocusWorld scenes and ships in the package.

Architecture (our own modules): image 64 px, patch 8 (8 x 8 grid + [CLS]), width 192, depth 6,
3 heads; text tower width 128, depth 4, 2 heads, context 32; joint embedding 128. The tokenizer
is a byte-level BPE trained (deterministically) on FocusWorld's caption vocabulary.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from focusshot.backbones.base import CLIP_PREPROCESS
from focusshot.backbones.clip import CLIP, TextConfig, TextTransformer
from focusshot.backbones.vit import VisionTransformer, ViTConfig

WEIGHTS_NAME = "world_clip.safetensors"
IMAGE_SIZE = 64


def world_tokenizer():
    """The caption tokenizer (BPE trained on every word FocusWorld captions can contain)."""
    from focusshot.backbones.tokenizer import ClipTokenizer
    from focusshot.data.world import caption_vocabulary

    words = sorted(caption_vocabulary())
    return ClipTokenizer.train([" ".join(words)] * 4 + words, vocab_size=768)


def build_world_clip(tokenizer=None) -> CLIP:
    """The world-clip architecture with random weights."""
    tok = tokenizer or world_tokenizer()
    vcfg = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        width=192,
        depth=6,
        num_heads=3,
        mlp_dim=768,
        patch_bias=False,
        pre_norm=True,
        act="gelu",
        eps=1e-5,
        proj_dim=128,
    )
    tcfg = TextConfig(
        vocab_size=tok.vocab_size,
        context_length=32,
        width=128,
        depth=4,
        num_heads=2,
        mlp_dim=512,
        proj_dim=128,
        act="gelu",
        eps=1e-5,
        eot_token_id=tok.eot_token_id,
    )
    pre = replace(CLIP_PREPROCESS, resize=IMAGE_SIZE, crop=IMAGE_SIZE)
    return CLIP(
        VisionTransformer(vcfg, preprocess=pre), TextTransformer(tcfg), tokenizer=tok, logit_scale=2.6593
    )


def shipped_weights() -> Path:
    """Path of the weights inside the installed package."""
    return Path(str(resources.files("focusshot") / "assets" / WEIGHTS_NAME))


def load_world_clip(path: str | Path | None = None) -> CLIP:
    """world-clip with its pretrained weights (the shipped file unless ``path`` is given)."""
    from safetensors.torch import load_file

    from focusshot.backbones.convert.common import load_checked

    path = Path(path) if path is not None else shipped_weights()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: world-clip weights not found; run `focusshot world pretrain` to make them"
        )
    model = build_world_clip()
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    load_checked(model, state, f"world-clip weights {path}")
    return model.eval()
