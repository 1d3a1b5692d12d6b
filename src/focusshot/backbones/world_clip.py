"""``world-clip`` and ``world-clip-deep``: small CLIPs focusshot pretrains on FocusWorld scenes.

``world-clip`` (our own modules): image 64 px, patch 8 (8 x 8 grid + [CLS]), width 192, depth 6,
3 heads. ``world-clip-deep`` has ViT-B's depth and more heads, so the papers' layer and head
defaults (FALIP's last 4 of 12 layers, SAV's 20 heads) mean what they mean on ViT-B/16: width
144, depth 12, 6 heads of 24 channels. Both: text tower width 128, depth 4, 2 heads, context 32;
joint embedding 128. The tokenizer is a byte-level BPE trained (deterministically) on
FocusWorld's caption vocabulary. Both ship in the package as float16 safetensors.

Pretraining data reaches this module as arguments, never as an import of :mod:`focusshot.data`: the
words the tokenizer is trained on ship beside the weights (``assets/world_clip_vocabulary.txt``,
written once from :func:`focusshot.data.world.caption_vocabulary`; a test holds the two equal), and
pretraining (:mod:`focusshot.training.pretrain_clip`) passes FocusWorld's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from importlib import resources
from pathlib import Path

from focusshot.backbones.base import CLIP_PREPROCESS
from focusshot.backbones.clip import CLIP, TextConfig, TextTransformer
from focusshot.backbones.tokenizer import ClipTokenizer
from focusshot.backbones.vit import VisionTransformer, ViTConfig

IMAGE_SIZE = 64
# name -> (vision width, depth, heads, weights file in the package)
ARCHS: dict[str, tuple[int, int, int, str]] = {
    "world-clip": (192, 6, 3, "world_clip.safetensors"),
    "world-clip-deep": (144, 12, 6, "world_clip_deep.safetensors"),
}
WEIGHTS_NAME = ARCHS["world-clip"][3]
#: The words the shipped models' tokenizer is trained on, one a line, in the package's assets.
VOCABULARY_NAME = "world_clip_vocabulary.txt"


def _arch(arch: str) -> tuple[int, int, int, str]:
    if arch not in ARCHS:
        raise ValueError(f"arch: unknown world-clip architecture {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]


def shipped_vocabulary() -> list[str]:
    """The words the shipped world-clip tokenizer is trained on (every word a FocusWorld caption can
    contain), sorted, from the package's assets."""
    text = (resources.files("focusshot") / "assets" / VOCABULARY_NAME).read_text(encoding="utf-8")
    return sorted(text.split())


def world_tokenizer(vocabulary: Iterable[str]) -> ClipTokenizer:
    """The caption tokenizer: a byte-level BPE trained (deterministically) on the words of
    ``vocabulary``, e.g. :func:`shipped_vocabulary` or FocusWorld's ``caption_vocabulary()``."""
    words = sorted(vocabulary)
    return ClipTokenizer.train([" ".join(words)] * 4 + words, vocab_size=768)


def build_world_clip(tokenizer: ClipTokenizer | None = None, arch: str = "world-clip") -> CLIP:
    """The ``arch`` architecture (a key of ``ARCHS``) with random weights; ``tokenizer`` defaults to
    the shipped one (:func:`world_tokenizer` over :func:`shipped_vocabulary`)."""
    width, depth, heads, _ = _arch(arch)
    tok = tokenizer if tokenizer is not None else world_tokenizer(shipped_vocabulary())
    vcfg = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=4 * width,
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


def shipped_weights(arch: str = "world-clip") -> Path:
    """Path of ``arch``'s weights inside the installed package."""
    return Path(str(resources.files("focusshot") / "assets" / _arch(arch)[3]))


def load_world_clip(path: str | Path | None = None, arch: str = "world-clip") -> CLIP:
    """``arch`` with its pretrained weights (the shipped file unless ``path`` is given)."""
    from safetensors.torch import load_file

    from focusshot.backbones.convert.common import load_checked

    path = Path(path) if path is not None else shipped_weights(arch)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: {arch} weights not found; run `focusshot world pretrain --arch {arch}` to make them"
        )
    model = build_world_clip(arch=arch)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    load_checked(model, state, f"{arch} weights {path}")
    return model.eval()
