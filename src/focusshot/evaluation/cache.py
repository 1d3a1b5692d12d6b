"""The shared feature cache: pay for each image once (DESIGN, "Performance").

A method declares the deepest frozen prefix of the backbone it needs (:class:`Prefix`); the
runner asks :class:`FeatureCache` for that prefix of every image and gets a float32 tensor back.
Each (backbone weights, preprocessing, prefix, image content) combination is computed once,
stored on disk in float16, and reused across episodes, methods, runs and processes::

    cache = FeatureCache("~/.cache/focusshot/features")
    feats = cache.get(backbone, paths, Prefix.pooled())            # (N, num_features)
    toks = cache.get(backbone, paths, Prefix.tokens(-2))           # (N, T, C): entering block L-2
    heads = cache.get(backbone, paths, Prefix.head_out((9, 10)))   # (N, 2, H, D): [CLS] row per head

On-disk layout: one safetensors file per entry, ``root/<key[:2]>/<key>.safetensors``, where
``key`` is :func:`entry_key`. One file per entry keeps every write independent: a write goes
to a temporary file in the entry's own folder and is published with ``os.replace`` (atomic on
POSIX), so a reader sees either no entry or a whole one, any number of processes may fill one
cache without locks (two writers of one entry write the same bytes; the last rename wins),
and an interrupted run keeps every entry it finished. The two-hex-digit sub-folders keep
folders small (256 of them; 10^6 entries give ~4,000 files each).

Every entry is verified when read: it must parse as safetensors, carry this format's metadata
and its own key, have the shape its metadata states and the shape the backbone and prefix
imply, and its bytes must hash to the sha256 stored beside them. An entry that fails any check
(truncated by a killed process, damaged on disk, written by another version) is recomputed
and replaced, never returned. Because of the check no ``fsync`` is done on write.

Values are stored as float16 (half the disk and memory of float32; well inside the noise of
every few-shot head). An entry whose values do not fit in float16 (beyond +-65504) is stored
as float32 instead, so nothing is ever silently turned into ``inf``. ``get`` returns float32
computed from the stored values, so a result is bit-identical whether it was just computed,
read from disk, or found in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from focusshot.backbones.base import Backbone
from focusshot.backbones.loading import weights_digest
from focusshot.backbones.prefix import Prefix, compute_prefix, expected_shape
from focusshot.data.images import ImageError, ImageErrors, file_sha256, load_rgb
from focusshot.data.transforms import make_view_transform
from focusshot.evaluation.cache_store import (
    CACHE_FORMAT,
    _architecture,
    _decode_entry,
    _encode_entry,
    _write_atomic,
    entry_key,
)

__all__ = [
    "CACHE_FORMAT",
    "CacheStats",
    "FeatureCache",
    "Prefix",
    "entry_key",
    "expected_shape",
    "file_sha256",
]

# --------------------------------------------------------------------------------------------
# the cache


@dataclass
class CacheStats:
    """Counts over :meth:`FeatureCache.get` calls, one per requested image.

    Attributes:
        memory_hits: served from the in-memory layer.
        disk_hits: read (and verified) from disk.
        misses: computed with the backbone (``corrupt`` ones included).
        corrupt: on disk but failing verification, hence recomputed and replaced.
        written: entries written to disk.
    """

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    corrupt: int = 0
    written: int = 0

    @property
    def hits(self) -> int:
        """Images served without running the backbone."""
        return self.memory_hits + self.disk_hits

    def reset(self) -> None:
        self.memory_hits = self.disk_hits = self.misses = self.corrupt = self.written = 0


#: ``compile="auto"`` compiles the frozen forward when (images to compute) x (image-tower
#: parameters) reaches this: ViT-B/16 (86 M parameters) on a 2-core CPU ran 7.09 img/s compiled
#: against 6.11 eager after a 31 s compile, so the compile pays from about
#: 31 / (1/6.11 - 1/7.09) = 1,370 images; 1,500 ViT-B/16 images set the bar. A deterministic rule
#: (not a timing), so a run computes its features the same way every time.
COMPILE_MIN_WORK = 1500 * 86_000_000
COMPILE_CHOICES = ("auto", "always", "never")
AUTOCAST_CHOICES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class FeatureCache:
    """Frozen-prefix features of image files, computed once and kept on disk (see the module doc).

    Args:
        root: the cache folder (created on demand; may be shared by processes and runs).
        memory_bytes: budget of the in-memory layer (least recently used entries leave
            first); ``0`` turns it off.
        compile: ``torch.compile`` the frozen forward: ``"auto"`` when a call's images x the
            image tower's parameters reach :data:`COMPILE_MIN_WORK` (1,500 ViT-B/16 images; small
            models never), ``"always"``, or ``"never"``. Compiled forwards
            are kept per backbone and prefix and see one batch shape (the last batch is padded),
            so one compile serves a whole run. Outputs equal eager within 1e-4 (tested); the
            cache key does not change.
        autocast: ``"bf16"`` or ``"fp16"``: compute under ``torch.autocast`` in that precision
            (entries get their own keys: they are not the float32 values); ``"none"`` (default).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        memory_bytes: int = 2 << 30,
        compile: str = "auto",
        autocast: str = "none",
    ) -> None:
        if compile not in COMPILE_CHOICES:
            raise ValueError(f"compile: expected one of {COMPILE_CHOICES}, got {compile!r}")
        if autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast: expected one of {sorted(AUTOCAST_CHOICES)}, got {autocast!r}")
        self.compile = compile
        self.autocast = autocast
        self._compiled: weakref.WeakKeyDictionary[nn.Module, dict[str, Callable]] = (
            weakref.WeakKeyDictionary()
        )
        self.root = Path(os.path.expanduser(os.fspath(root)))
        self.memory_bytes = int(memory_bytes)
        self.stats = CacheStats()
        self._memory: OrderedDict[str, Tensor] = OrderedDict()
        self._memory_used = 0
        # absolute path -> ((size, mtime_ns, inode, device), sha256): images are not re-read
        # while their stat signature is unchanged.
        self._image_sha: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        self._weights_memo: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], str]] = (
            weakref.WeakKeyDictionary()
        )
        #: ``False`` after a write failed (read-only file system, full disk): the run goes on with
        #: the in-memory cache only, warned about once
        self.disk_writable = True

    # ---- paths and keys

    def path_for(self, key: str) -> Path:
        """Where the entry ``key`` lives: ``root/<key[:2]>/<key>.safetensors``."""
        return self.root / key[:2] / f"{key}.safetensors"

    def image_sha256(self, path: str | os.PathLike[str]) -> str:
        """sha256 of an image file's bytes, remembered while its size, mtime and inode hold."""
        full = os.path.abspath(os.fspath(path))
        st = os.stat(full)
        sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        known = self._image_sha.get(full)
        if known is not None and known[0] == sig:
            return known[1]
        digest = file_sha256(full)
        self._image_sha[full] = (sig, digest)
        return digest

    def keys(self, backbone: Backbone, paths: Sequence[str | os.PathLike[str]], prefix: Prefix) -> list[str]:
        """The entry key of every image in ``paths`` for ``prefix`` of ``backbone``."""
        base = self._key_base(backbone, prefix.resolve(backbone))
        return [entry_key(*base[:3], self.image_sha256(p), base[3]) for p in paths]

    def _weights_sha256(self, backbone: Backbone) -> str:
        """``identity.weights_sha256``, or when empty a hash of the state dict (redone after in-place edits).

        A filled-in ``identity.weights_sha256`` is trusted: whoever changes the weights of such a
        backbone in place must update it (or clear it).
        """
        if backbone.identity.weights_sha256:
            return backbone.identity.weights_sha256
        try:
            versions = tuple(t._version for t in backbone.state_dict().values())  # bumped by in-place writes
        except RuntimeError:  # inference tensors keep no version counter: hash every time
            return weights_digest(backbone)
        known = self._weights_memo.get(backbone)
        if known is None or known[0] != versions:
            known = (versions, weights_digest(backbone))
            self._weights_memo[backbone] = known
        return known[1]

    def _key_base(self, backbone: Backbone, prefix: Prefix) -> tuple[str, dict, str, str]:
        transform = make_view_transform(backbone.preprocess, prefix.view, prefix.augment_seed).to_dict()
        key = prefix.key() + ("" if self.autocast == "none" else f"@autocast={self.autocast}")
        return self._weights_sha256(backbone), transform, key, _architecture(backbone)

    def _forward(self, backbone: Backbone, prefix: Prefix, images: int, batch_size: int) -> Callable:
        """``(B, 3, H, W) -> (B, *shape)`` for ``prefix``: eager, or compiled (see ``compile``)."""
        dtype = AUTOCAST_CHOICES[self.autocast]

        def eager(x: Tensor) -> Tensor:
            if dtype is None:
                return compute_prefix(backbone, prefix, x)
            with torch.autocast(x.device.type, dtype=dtype):
                return compute_prefix(backbone, prefix, x)

        if not (
            self.compile == "always"
            or (self.compile == "auto" and images * _tower(backbone) >= COMPILE_MIN_WORK)
        ):
            return eager
        per_backbone = self._compiled.setdefault(backbone, {})
        key = f"{prefix.key()}|{batch_size}|{self.autocast}"
        if key not in per_backbone:
            per_backbone[key] = torch.compile(eager, dynamic=False)

        def padded(x: Tensor) -> Tensor:  # one batch shape: a short last batch is padded with zeros
            n = len(x)
            if n < batch_size:
                x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
            try:
                return per_backbone[key](x)[:n]
            except Exception as exc:  # no C++ compiler, an unsupported op...: eager from here on
                if per_backbone[key] is eager:
                    raise
                logging.getLogger("focusshot").warning(
                    "torch.compile of the %s forward failed (%s: %s); extracting eagerly",
                    prefix.key(),
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                per_backbone[key] = eager
                return eager(x)[:n]

        return padded

    # ---- memory layer

    def _remember(self, key: str, t: Tensor) -> None:
        if self.memory_bytes <= 0 or key in self._memory:
            return
        size = t.numel() * t.element_size()
        if size > self.memory_bytes:
            return
        self._memory[key] = t
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._memory_used -= old.numel() * old.element_size()

    def clear_memory(self) -> None:
        """Drop the in-memory layer (the disk entries stay)."""
        self._memory.clear()
        self._memory_used = 0
        self._image_sha.clear()

    # ---- disk

    def _store(self, key: str, data: bytes) -> bool:
        """Write an entry to disk; after the first failure warn once and keep to memory."""
        if not self.disk_writable:
            return False
        try:
            _write_atomic(self.path_for(key), data)
            return True
        except OSError as exc:
            self.disk_writable = False
            logging.getLogger("focusshot").warning(
                "feature cache %s is not writable (%s); going on without the disk cache (features are "
                "kept in memory for this run only)",
                self.root,
                exc.strerror or exc,
            )
            return False

    def read(self, key: str, shape: tuple[int, ...]) -> Tensor | None:
        """The verified stored tensor of entry ``key`` (float16 or float32), ``None`` if absent or damaged."""
        try:
            data = self.path_for(key).read_bytes()
        except OSError:  # absent, or the cache folder cannot be read: compute it
            return None
        return _decode_entry(data, key, shape)

    def verify(self) -> list[Path]:
        """Files under ``root`` that are not a valid entry for their own name (shape unchecked)."""
        bad: list[Path] = []
        for path in sorted(self.root.glob("*/*.safetensors")):
            key = path.stem
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # replaced or removed meanwhile
                continue
            try:
                (n,) = struct.unpack("<Q", data[:8])
                shape = tuple(json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["shape"]))
            except Exception:
                bad.append(path)
                continue
            if _decode_entry(data, key, shape) is None:
                bad.append(path)
        return bad

    def temporary_files(self) -> list[Path]:
        """Left-over temporary files (from killed writers, or writers still running)."""
        return sorted(self.root.glob("*/.*.tmp"))

    def remove_temporary_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files untouched for ``older_than_s`` seconds; returns how many went.

        Those are killed writers' leftovers; younger ones may belong to a writer at work and stay.
        """
        now, removed = time.time(), 0
        for path in self.temporary_files():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= older_than_s:
                    path.unlink()
                    removed += 1
        return removed

    # ---- the main call

    def get(
        self,
        backbone: Backbone,
        paths: Sequence[str | os.PathLike[str]],
        prefix: Prefix,
        batch_size: int = 32,
        progress: bool = True,
        request_images: int | None = None,
    ) -> Tensor:
        """``prefix`` of every image in ``paths``: float32 ``(N, *expected_shape(backbone, prefix))``.

        ``prefix`` is resolved here first (:meth:`~focusshot.backbones.prefix.Prefix.resolve`:
        ``Prefix.tokens(-2)`` is the tokens entering block ``L - 2``); :meth:`get_resolved` takes one
        that already is.

        ``request_images``: the size of the whole request this call is a share of (a rank's shard
        of a multi-process job); ``compile="auto"`` decides on it (default ``len(paths)``), so
        every share and every resume computes the same way as one process would.

        Entries found in memory or (verified) on disk are reused; the rest are computed in
        batches of ``batch_size`` under ``torch.inference_mode`` on the backbone's device (in
        eval mode; its mode is restored afterwards), written to disk as they are computed, and
        returned. The next batch's images are decoded in a background thread while the
        backbone runs.

        Raises:
            ImageErrors: images that do not exist, cannot be opened or cannot be decoded, every
                one listed (``errors``). Every other image is still computed and stored first,
                so nothing is lost and a rerun computes only what was missing.
            ValueError: the backbone cannot produce ``prefix``.
        """
        return self.get_resolved(
            backbone, paths, prefix.resolve(backbone), batch_size, progress, request_images
        )

    def get_resolved(
        self,
        backbone: Backbone,
        paths: Sequence[str | os.PathLike[str]],
        prefix: Prefix,
        batch_size: int = 32,
        progress: bool = True,
        request_images: int | None = None,
    ) -> Tensor:
        """:meth:`get` of a ``prefix`` already resolved on ``backbone``
        (:meth:`~focusshot.backbones.prefix.Prefix.resolve`), such as a method request's
        (:class:`~focusshot.methods.request.Resolved`): derived once where the request was
        resolved, not again here. The same entries, keys and errors as :meth:`get`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shape = expected_shape(backbone, prefix)
        weights, transform_cfg, prefix_key, arch = self._key_base(backbone, prefix)
        str_paths: list[str] = []
        keys: list[str] = []
        unreadable: list[ImageError] = []
        for p in paths:  # a missing, dangling or unreadable file is listed, not fatal: the rest go on
            try:
                keys.append(entry_key(weights, transform_cfg, prefix_key, self.image_sha256(p), arch))
                str_paths.append(os.fspath(p))
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                unreadable.append(
                    ImageError(p, f"{reason} (missing, a dangling link, a folder or not readable)")
                )

        found: dict[str, Tensor] = {}
        source: dict[str, str] = {}  # key -> "memory", "disk" or "computed"
        todo: dict[str, str] = {}  # key -> a path to compute it from
        for key, path in zip(keys, str_paths, strict=True):
            if key in source:
                continue
            t = self._memory.get(key)
            if t is not None:
                self._memory.move_to_end(key)
                found[key], source[key] = t, "memory"
                continue
            t = self.read(key, shape)
            if t is not None:
                self._remember(key, t)
                found[key], source[key] = t, "disk"
                continue
            if self.path_for(key).exists():
                self.stats.corrupt += 1
            todo[key], source[key] = path, "computed"

        errors: list[ImageError] = []
        if todo:
            extra = {"prefix": prefix_key, "backbone": str(backbone.identity.name), "weights_sha256": weights}
            size = len(keys) if request_images is None else request_images
            errors = self._fill(backbone, prefix, shape, todo, found, batch_size, progress, extra, size)
        for key in keys:
            kind = source[key]
            if kind == "memory":
                self.stats.memory_hits += 1
            elif kind == "disk":
                self.stats.disk_hits += 1
            else:
                self.stats.misses += 1
        if unreadable or errors:
            raise ImageErrors(unreadable + errors)
        if not keys:
            return torch.zeros((0, *shape), dtype=torch.float32)
        rows = [found[k] for k in keys]
        if len({t.dtype for t in rows}) > 1:  # float32 entries (out of float16 range) among float16 ones
            rows = [t.float() for t in rows]
        return torch.stack(rows).float()

    def _fill(
        self,
        backbone: Backbone,
        prefix: Prefix,
        shape: tuple[int, ...],
        todo: dict[str, str],
        found: dict[str, Tensor],
        batch_size: int,
        progress: bool,
        extra: dict[str, str],
        request_images: int,
    ) -> list[ImageError]:
        """Compute, store and remember every entry of ``todo``; returns the images that failed."""
        transform = make_view_transform(backbone.preprocess, prefix.view, prefix.augment_seed)
        items = list(todo.items())
        chunks = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]
        try:
            device = next(backbone.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        errors: list[ImageError] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="img", desc=f"cache {prefix.key()}")
        was_training = backbone.training
        backbone.eval()
        forward = self._forward(backbone, prefix, request_images, batch_size)
        try:
            for chunk, (ok, batch, bad) in zip(chunks, _prefetched(chunks, transform), strict=True):
                errors.extend(bad)
                if batch is not None:  # the images of ``ok`` decoded (none: no batch)
                    with torch.inference_mode():
                        out = forward(batch.to(device)).float().cpu()
                    if tuple(out.shape[1:]) != shape:
                        raise RuntimeError(
                            f"{type(backbone).__name__} gave {tuple(out.shape[1:])} per image for "
                            f"{prefix.key()}, expected {shape}"
                        )
                    for (key, _), values in zip(ok, out, strict=True):
                        stored, data = _encode_entry(values.clone(), key, extra)
                        if self._store(key, data):
                            self.stats.written += 1
                        self._remember(key, stored)
                        found[key] = stored
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            backbone.train(was_training)
            if bar is not None:
                bar.close()
        return errors


def _tower(backbone: Backbone) -> int:
    """Parameters of the image tower (a CLIP's text tower does not run during extraction)."""
    return sum(p.numel() for p in getattr(backbone, "visual", backbone).parameters())


def _load_chunk(
    chunk: list[tuple[str, str]], transform: Callable
) -> tuple[list[tuple[str, str]], Tensor | None, list[ImageError]]:
    ok: list[tuple[str, str]] = []
    tensors: list[Tensor] = []
    bad: list[ImageError] = []
    for key, path in chunk:
        try:
            tensors.append(transform(load_rgb(path)))
            ok.append((key, path))
        except ImageError as err:
            bad.append(err)
        except OSError as err:  # missing, a dangling link, a folder, no permission
            bad.append(ImageError(path, f"{type(err).__name__}: {err.strerror or err}"))
    return ok, (torch.stack(tensors) if tensors else None), bad


def _prefetched(
    chunks: list[list[tuple[str, str]]], transform: Callable
) -> Iterator[tuple[list[tuple[str, str]], Tensor | None, list[ImageError]]]:
    """Decoded chunks in order; chunk ``i + 1`` is decoded in a thread while ``i`` is consumed."""
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load_chunk, chunks[0], transform)
        for i in range(len(chunks)):
            result = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(_load_chunk, chunks[i + 1], transform)
            yield result
