"""Batched feature extraction over image files (``focusshot embed`` and the Python API).

Images are decoded and preprocessed in a background thread while the backbone runs on the
previous batch; undecodable files are collected (each named) rather than stopping the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix, compute_prefix, expected_shape
from focusshot.data.images import ImageError, load_rgb
from focusshot.data.transforms import make_transform
from focusshot.versions import VERSION


@dataclass
class Embeddings:
    """Features of the images that decoded, in input order.

    Attributes:
        features: ``(N, D)`` float32, row ``i`` belongs to ``paths[i]``.
        paths: the images behind the rows.
        bad: one :class:`ImageError` per file that could not be read.
    """

    features: Tensor
    paths: list[str]
    bad: list[ImageError] = field(default_factory=list)


def _load(paths: Sequence[str], transform) -> tuple[list[int], list[Tensor], list[ImageError]]:
    kept, tensors, bad = [], [], []
    for i, p in enumerate(paths):
        try:
            tensors.append(transform(load_rgb(p)))
            kept.append(i)
        except ImageError as err:
            bad.append(err)
        except OSError as err:  # missing, a dangling link, a folder, no permission
            bad.append(ImageError(p, f"{type(err).__name__}: {err.strerror or err}"))
    return kept, tensors, bad


def _batches(
    paths: Sequence[str], batch_size: int, transform
) -> Iterator[tuple[list[int], Tensor | None, list]]:
    chunks = [list(range(s, min(s + batch_size, len(paths)))) for s in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(_load, [paths[i] for i in chunk], transform) for chunk in chunks[:2]]
        for n, chunk in enumerate(chunks):
            kept, tensors, bad = futures[n].result()
            if n + 2 < len(chunks):
                nxt = chunks[n + 2]
                futures.append(pool.submit(_load, [paths[i] for i in nxt], transform))
            yield [chunk[k] for k in kept], (torch.stack(tensors) if tensors else None), bad


@torch.inference_mode()
def embed_images(
    backbone: Backbone,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    progress: bool = False,
    device: str | torch.device = "cpu",
    prefix: Prefix | None = None,
) -> Embeddings:
    """Pooled features (``backbone.forward_features``; CLIP: the projected image embedding), or
    any other frozen ``prefix`` (computed as the shared cache computes it, not stored).

    Args:
        backbone: any focusshot backbone (put in eval mode here).
        paths: image files; rows of the result follow this order (bad files left out).
        batch_size: images per forward pass.
        progress: show a progress bar (tqdm) on stderr.
        device: where the backbone runs.
        prefix: what to compute per image (default: pooled features).

    Returns:
        :class:`Embeddings` with ``features`` ``(N_good, *expected_shape(backbone, prefix))``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = [str(p) for p in paths]
    prefix = (prefix or Prefix.pooled()).resolve(backbone)
    backbone.eval().to(device)
    transform = make_transform(backbone.preprocess)
    rows: list[Tensor] = []
    kept: list[int] = []
    bad: list[ImageError] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", desc="embed")
    for idx, batch, errors in _batches(files, batch_size, transform):
        bad.extend(errors)
        if batch is not None:
            rows.append(compute_prefix(backbone, prefix, batch.to(device)).float().cpu())
            kept.extend(idx)
        if bar is not None:
            bar.update(len(idx) + len(errors))
    if bar is not None:
        bar.close()
    features = torch.cat(rows) if rows else torch.zeros(0, *expected_shape(backbone, prefix))
    return Embeddings(features, [files[i] for i in kept], bad)


def gather_embeddings(emb: Embeddings, paths: Sequence[str | Path], ctx) -> Embeddings | None:
    """Rank 0: every rank's :class:`Embeddings` of its shard (``paths[rank::world]``) merged in
    the order of ``paths``; other ranks: ``None``. Sent with ``torch.distributed.gather_object``.
    """
    import torch.distributed as dist

    mine = (emb.features.cpu(), emb.paths, [(str(e.path), e.reason) for e in emb.bad])
    parts: list | None = [None] * ctx.world if ctx.main else None
    dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return None
    rows: dict[str, Tensor] = {}
    bad_by_path: dict[str, str] = {}
    for feats, names, bad in parts:
        rows.update(zip(names, feats, strict=True))
        bad_by_path.update(bad)
    order = [str(p) for p in paths]
    kept = [p for p in order if p in rows]
    features = torch.stack([rows[p] for p in kept]) if kept else emb.features[:0]
    errors = [ImageError(p, bad_by_path[p]) for p in order if p in bad_by_path]
    return Embeddings(features, kept, errors)


def save_embeddings(emb: Embeddings, output: str | Path, backbone: Backbone) -> Path:
    """Write ``features`` with safetensors; paths and the backbone identity go in its metadata."""
    from safetensors.torch import save_file

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "paths": json.dumps(emb.paths),
        "backbone": json.dumps(backbone.identity.to_dict()),
        "focusshot_version": VERSION,
        "torch_version": torch.__version__,
    }
    tmp = output.with_name(output.name + ".tmp")
    save_file({"features": emb.features.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(output)
    return output


def load_embeddings(path: str | Path) -> tuple[Tensor, list[str], dict]:
    """Read a file written by :func:`save_embeddings` -> ``(features (N, D), paths, backbone identity)``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        features = f.get_tensor("features")
    return features, json.loads(meta.get("paths", "[]")), json.loads(meta.get("backbone", "{}"))
