"""``world-dino``: a small ViT self-distilled with DINO on FocusWorld scenes, shipped in DINO's layout.

Caron et al., *Emerging Properties in Self-Supervised Vision Transformers* (ICCV 2021). The
architecture is world-clip-deep's image tower in the layout of DINO's (timm's) ViTs: 64 x 64 input,
patch 8 (an 8 x 8 grid), width 144, depth 12, 6 heads of 24 channels, MLP 4x, ``qkv`` with bias,
LayerNorm eps 1e-6, no pre-norm, no output projection, [CLS] pooling. Twelve layers, as FORT's DINO
ViT-B/16, so the defaults of the attention methods (FALIP's last 4 of 12 layers, SAV's 20 heads of
72) mean what they mean there, and world-dino and world-clip-deep differ only in their objective.

The weights ship as ``assets/world_dino.safetensors``: DINO's full-checkpoint layout flattened to one
level (``teacher.backbone.*`` in timm naming, ``teacher.head.*``, ``dino_loss.center``), float16.
They load through :func:`focusshot.backbones.convert.timm_vit.convert_timm_vit`, the converter a
user's ``dino_vitb16.pth`` goes through; only the head count, which no tensor shape reveals (and
which here is not ``width // 64``), is passed. :mod:`focusshot.training.pretrain_dino` makes them.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from focusshot.backbones.base import IMAGENET_PREPROCESS
from focusshot.backbones.vit import VisionTransformer, ViTConfig

IMAGE_SIZE = 64
PATCH_SIZE = 8
#: ``name -> (width, depth, heads)``; ``world-dino-tiny`` is a test-size model for pretraining tests.
ARCHS: dict[str, tuple[int, int, int]] = {
    "world-dino": (144, 12, 6),
    "world-dino-tiny": (32, 2, 2),
}
WEIGHTS_NAME = "world_dino.safetensors"
#: DINO normalises with ImageNet statistics; FocusWorld scenes are drawn at the model's input size.
PREPROCESS = replace(IMAGENET_PREPROCESS, resize=IMAGE_SIZE, crop=IMAGE_SIZE)


def _arch(arch: str) -> tuple[int, int, int]:
    if arch not in ARCHS:
        raise ValueError(f"unknown world-dino arch {arch!r}; valid: {sorted(ARCHS)}")
    return ARCHS[arch]


def world_dino_config(arch: str = "world-dino") -> ViTConfig:
    """The :class:`ViTConfig` of ``arch`` (a key of :data:`ARCHS`): DINO/timm ViT conventions."""
    width, depth, heads = _arch(arch)
    return ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=4 * width,
        qkv_bias=True,
        patch_bias=True,
        pre_norm=False,
        act="gelu",
        eps=1e-6,
    )


def build_world_dino(arch: str = "world-dino") -> VisionTransformer:
    """``arch`` with random weights (torch's default initialisation; seed it from outside)."""
    return VisionTransformer(world_dino_config(arch), preprocess=PREPROCESS)


def shipped_weights() -> Path:
    """Path of the world-dino weights inside the installed package."""
    return Path(str(resources.files("focusshot") / "assets" / WEIGHTS_NAME))


def load_world_dino(path: str | Path | None = None, arch: str = "world-dino") -> VisionTransformer:
    """The teacher backbone of a world-dino checkpoint (the shipped file unless ``path`` is given).

    The file is read safely (safetensors, or ``torch.load(weights_only=True)``) and goes through the
    DINO/timm converter: ``teacher`` selected, ``backbone.`` stripped, ``head.`` dropped, ``qkv`` split.

    Raises:
        FileNotFoundError: when the file is missing (it says how to make it).
        ValueError: when the file does not hold ``arch``'s architecture.
    """
    from focusshot.backbones.convert.timm_vit import convert_timm_vit
    from focusshot.backbones.loading import read_tensors

    path = Path(path) if path is not None else shipped_weights()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: world-dino weights not found; run `focusshot world pretrain --arch world-dino "
            f"--output {path}` to make them"
        )
    width, depth, heads = _arch(arch)
    want = f"{arch} (width {width}, depth {depth}, {heads} heads, patch {PATCH_SIZE} at {IMAGE_SIZE} px)"
    try:
        model = convert_timm_vit(read_tensors(path), num_heads=heads, preprocess=PREPROCESS)
    except ValueError as exc:
        raise ValueError(f"{path}: not a {arch} checkpoint: {want} does not fit it ({exc})") from exc
    got = (model.cfg.width, model.cfg.depth, model.cfg.patch_size, model.cfg.image_size)
    if got != (width, depth, PATCH_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{path}: not a {arch} checkpoint: it holds a ViT of width {got[0]}, depth {got[1]}, "
            f"patch {got[2]} at {got[3]} px, not {want}"
        )
    return model.eval()
