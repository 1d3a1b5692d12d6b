"""Reading checkpoints safely and turning them into focusshot backbones.

Files are read with safetensors or ``torch.load(weights_only=True)``; nothing is ever unpickled
with arbitrary code. A Hugging Face directory (``config.json`` + weights) is dispatched on its
``model_type``; a single file is recognised by its keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from focusshot.backbones.base import CLIP_PREPROCESS, IMAGENET_PREPROCESS, Backbone, Preprocess

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint could not be read or recognised; the message names the file."""


def read_tensors(path: str | Path) -> dict[str, Any]:
    """Read a weights file: safetensors, or a torch file through ``weights_only=True``.

    Raises:
        CheckpointError: naming ``path`` when it is missing, unreadable, or needs unpickling
            of code (e.g. OpenAI's TorchScript ``.pt`` archives).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises several error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        # official DINO / iBOT training checkpoints carry their argparse settings (``args``): a plain
        # namespace of values, allowed; any other object still refuses to load
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: {exc}). "
            "focusshot never unpickles code; TorchScript archives (OpenAI's released .pt files) must "
            "first be converted to a state dict, e.g. `torch.save(torch.jit.load(p).state_dict(), out)` "
            "on a trusted machine."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def read_directory_weights(directory: Path) -> dict[str, Tensor]:
    """All tensors of a Hugging Face model directory (sharded or not; safetensors preferred)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out: dict[str, Tensor] = {}
            for shard in shards:
                out.update(read_tensors(directory / shard))
            return out
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_tensors(directory / name)
    found = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin (found {found})")


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes and bytes), for result records."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def preprocess_from_hf(directory: Path, fallback: Preprocess) -> Preprocess:
    """Preprocessing from ``preprocessor_config.json`` when present, else ``fallback``."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return fallback
    cfg = json.loads(path.read_text())
    size = cfg.get("size", fallback.resize)
    if isinstance(size, dict):
        size = size.get("shortest_edge") or size.get("height") or fallback.resize
    crop = cfg.get("crop_size", size if not cfg.get("do_center_crop", True) else fallback.crop)
    if isinstance(crop, dict):
        crop = crop.get("height") or fallback.crop
    resample = {2: "bilinear", 3: "bicubic"}.get(cfg.get("resample", 3), "bicubic")
    mean = tuple(cfg.get("image_mean", fallback.mean))
    std = tuple(cfg.get("image_std", fallback.std))
    return Preprocess(int(size), int(crop), mean, std, resample)


def _tokenizer_from_dir(directory: Path):
    """A CLIP tokenizer from files beside a checkpoint: HF ``vocab.json`` + ``merges.txt``, or
    OpenAI's ``bpe_simple_vocab_16e6.txt.gz``; ``None`` when neither is there."""
    from focusshot.backbones.tokenizer import ClipTokenizer

    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return ClipTokenizer.from_hf(vocab, merges)
    bpe = directory / "bpe_simple_vocab_16e6.txt.gz"
    if bpe.is_file():
        return ClipTokenizer.from_bpe_gz(bpe)
    return None


def load_hf_directory(directory: str | Path) -> Backbone:
    """A Hugging Face model directory (``config.json`` + weights) -> backbone."""
    from focusshot.backbones.convert import hf

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no config.json, so this is not a Hugging Face model directory")
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type", "")
    sd = read_directory_weights(directory)
    model: Backbone
    if model_type in ("clip", "clip_vision_model"):
        model = hf.convert_hf_clip(config, sd, tokenizer=_tokenizer_from_dir(directory))
        vision = config.get("vision_config", config) if model_type == "clip" else config
        fallback = _sized(CLIP_PREPROCESS, vision.get("image_size", 224), crop_ratio=1.0)
    elif model_type in ("vit", "deit", "dinov2", "dinov2_with_registers"):
        model = hf.convert_hf_vit(config, sd)
        fallback = _sized(model.preprocess, config.get("image_size", 224))
    elif model_type == "swin":
        from focusshot.backbones.convert.hf_swin import convert_hf_swin

        model = convert_hf_swin(config, sd)
        fallback = _sized(model.preprocess, config.get("image_size", 224))
    else:
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not supported; supported: clip, clip_vision_model, "
            "vit, deit, dinov2, dinov2_with_registers, swin"
        )
    _set_preprocess(model, preprocess_from_hf(directory, fallback))
    if not (directory / "preprocessor_config.json").is_file():
        note = (
            f"no preprocessor_config.json: resize {model.preprocess.resize} / crop {model.preprocess.crop} "
            "from config.json's image_size"
        )
        logging.getLogger("focusshot").warning("%s: %s", directory, note)
        model.preprocess_source = note  # recorded in the identity by create_backbone
    else:
        model.preprocess_source = "preprocessor_config.json"
    return model


def _sized(base: Preprocess, image_size: Any, crop_ratio: float = 224 / 256) -> Preprocess:
    """``base`` at the model's configured input size: crop = ``image_size``, resize = crop /
    ``crop_ratio`` (ImageNet's 224/256; CLIP resizes to the crop itself)."""
    side = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    return dataclasses.replace(base, resize=round(side / crop_ratio), crop=side)


def _set_preprocess(model: Backbone, preprocess: Preprocess) -> None:
    model.preprocess = preprocess
    visual = getattr(model, "visual", None)
    if isinstance(visual, Backbone):
        visual.preprocess = preprocess


def _recorded_architecture(path: Path) -> dict[str, int]:
    """The architecture a safetensors file's focusshot metadata records (``architecture``, as
    world-dino's pretraining writes it: ``heads``, ``image``, ...), else ``{}``. The weights cannot
    tell 6 heads of 24 channels from 2 of 72, nor the input size a model was trained at."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("focusshot", "{}"))
    except (OSError, ValueError):
        return {}
    arch = meta.get("architecture", {}) if isinstance(meta, dict) else {}
    if not isinstance(arch, dict):
        return {}
    return {k: int(v) for k, v in arch.items() if isinstance(v, int) and v > 0}


def load_file(path: str | Path, num_heads: int | None = None) -> Backbone:
    """A single checkpoint file -> backbone, recognised by its keys.

    Recognised: OpenAI CLIP state dicts (``visual.conv1.weight``; a tokenizer beside the file is
    attached, see :func:`_tokenizer_from_dir`), timm / DINO / iBOT / DINOv2
    ViTs (``blocks.0.attn.qkv.weight``), original Swin / iBOT Swin (``layers.0.blocks.0.attn.qkv``)
    and EfficientNet-Lite0 (``_conv_stem.weight``).
    """
    from focusshot.backbones.convert import timm_vit

    path = Path(path)
    obj = read_tensors(path)
    sd = timm_vit.unwrap_checkpoint(obj)
    if any(k.endswith("visual.conv1.weight") for k in sd):
        from focusshot.backbones.convert.openai_clip import convert_openai_clip

        return convert_openai_clip(sd, tokenizer=_tokenizer_from_dir(path.parent))
    if timm_vit.is_timm_vit(sd):
        arch = _recorded_architecture(path)
        size = arch.get("image")
        # a recorded input size is what the model saw in training: resize to it, no crop margin
        preprocess = dataclasses.replace(IMAGENET_PREPROCESS, resize=size, crop=size) if size else None
        return timm_vit.convert_timm_vit(sd, num_heads=num_heads or arch.get("heads"), preprocess=preprocess)
    if any(".blocks.0.attn.relative_position_bias_table" in k for k in sd):
        from focusshot.backbones.convert.hf_swin import convert_original_swin_inferred

        return convert_original_swin_inferred(sd)
    if "_conv_stem.weight" in sd:
        from focusshot.backbones.efficientnet import efficientnet_from_state_dict

        return efficientnet_from_state_dict(sd)
    sample = sorted(sd)[:8]
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (first keys: {sample}); supported: OpenAI CLIP, timm/DINO/"
        "iBOT/DINOv2 ViT, original Swin, EfficientNet-Lite0 state dicts, or a Hugging Face model directory"
    )
