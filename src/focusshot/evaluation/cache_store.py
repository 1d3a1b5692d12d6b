"""The shared cache's keys and on-disk entries (see :mod:`focusshot.evaluation.cache`).

An entry is one safetensors file holding one image's prefix (float16, or float32 when out of
float16's range) with its key, shape, dtype and a sha256 of its bytes in the metadata; writes go
through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

#: Version of the entry format and of the key recipe; bump it to invalidate every old entry.
CACHE_FORMAT = "focusshot-feature-cache/1"
_TENSOR_NAME = "features"


# --------------------------------------------------------------------------------------------
# keys


def _architecture(backbone: nn.Module) -> str:
    """The class and config of the image tower: what the weights hash cannot tell (activations, eps...)."""
    tower = getattr(backbone, "visual", backbone)
    return f"{type(backbone).__name__}/{type(tower).__name__}:{getattr(tower, 'cfg', None)!r}"


def entry_key(
    weights_sha256: str, preprocess: dict, prefix_key: str, image_sha256: str, architecture: str = ""
) -> str:
    """The cache key of one entry: sha256 (hex) of all that determines its value.

    Args:
        weights_sha256: ``backbone.identity.weights_sha256``.
        preprocess: the transform's settings (``make_transform(preprocess).to_dict()``).
        prefix_key: ``Prefix.key()`` of the resolved prefix.
        image_sha256: sha256 of the image file's bytes.
        architecture: class and config of the image tower.
    """
    payload = {
        "format": CACHE_FORMAT,
        "weights_sha256": weights_sha256,
        "architecture": architecture,
        "preprocess": preprocess,
        "prefix": prefix_key,
        "image_sha256": image_sha256,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# entries on disk


def _tensor_sha256(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _encode_entry(values: Tensor, key: str, extra: dict[str, str]) -> tuple[Tensor, bytes]:
    """One image's values (any float dtype) -> (stored tensor, safetensors bytes)."""
    values = values.detach().cpu()
    stored = values.to(torch.float16)
    if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(values).all()):
        stored = values.to(torch.float32)  # out of float16 range: keep it exact rather than inf
    stored = stored.contiguous()
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "shape": json.dumps(list(stored.shape)),
        "dtype": str(stored.dtype).removeprefix("torch."),
        "data_sha256": _tensor_sha256(stored),
        **extra,
    }
    return stored, st_save({_TENSOR_NAME: stored}, metadata=meta)


def _decode_entry(data: bytes, key: str, shape: tuple[int, ...]) -> Tensor | None:
    """Parse and verify an entry's bytes; ``None`` when anything is off."""
    try:
        if len(data) < 8:
            return None
        (header_len,) = struct.unpack("<Q", data[:8])
        if header_len > len(data) - 8:
            return None
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            return None
        tensors = st_load(data)
        t = tensors.get(_TENSOR_NAME)
        if t is None or len(tensors) != 1 or t.dtype not in (torch.float16, torch.float32):
            return None
        if tuple(t.shape) != shape or json.loads(meta.get("shape", "null")) != list(shape):
            return None
        if str(t.dtype).removeprefix("torch.") != meta.get("dtype"):
            return None
        if _tensor_sha256(t) != meta.get("data_sha256"):
            return None
        return t
    except Exception:  # any parse failure means a damaged entry
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:16]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
