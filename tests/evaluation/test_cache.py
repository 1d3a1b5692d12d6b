"""The shared feature cache: right values, computed once, keyed on all that matters, never corrupt."""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focusshot import create_backbone, record
from focusshot.backbones.base import Backbone
from focusshot.data.images import ImageError, ImageErrors, load_rgb
from focusshot.data.transforms import make_transform
from focusshot.evaluation.cache import (
    CACHE_FORMAT,
    FeatureCache,
    Prefix,
    _decode_entry,
    _encode_entry,
    expected_shape,
)

MODELS = ["tiny-vit", "tiny-clip-vit"]


def _write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small random images in a few formats, sizes and modes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(28, 60)), int(rng.integers(28, 60))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        if i % 3 == 0:
            path = folder / f"im{i}.png"
            img.save(path)
        elif i % 3 == 1:
            path = folder / f"im{i}.jpg"
            img.save(path, quality=90)
        else:
            path = folder / f"im{i}.png"
            img.convert("L").save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return _write_images(tmp_path / "images", 7)


def _tower(backbone: Backbone):
    return getattr(backbone, "visual", backbone)


def _pixels(backbone: Backbone, paths) -> torch.Tensor:
    t = make_transform(backbone.preprocess)
    return torch.stack([t(load_rgb(p)) for p in paths])


class Calls:
    """Counts forward passes through a backbone (a hook on its patch embedding)."""

    def __init__(self, backbone: Backbone) -> None:
        self.n = 0
        self.handle = _tower(backbone).patch_embed.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.n += 1


@pytest.mark.parametrize("name", MODELS)
def test_pooled_equals_forward_features(name: str, images: list[Path], tmp_path: Path) -> None:
    model = create_backbone(name)
    cache = FeatureCache(tmp_path / "cache")
    got = cache.get(model, images, Prefix.pooled(), batch_size=3, progress=False)
    with torch.inference_mode():
        ref = model.forward_features(_pixels(model, images))
    assert got.dtype == torch.float32 and got.shape == (len(images), model.num_features)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    assert cache.stats.misses == len(images) and cache.stats.hits == 0 and cache.stats.written == len(images)
    assert len(list((tmp_path / "cache").glob("*/*.safetensors"))) == len(images)


@pytest.mark.parametrize("name", MODELS)
def test_second_call_hits_without_backbone(name: str, images: list[Path], tmp_path: Path) -> None:
    model = create_backbone(name)
    calls = Calls(model)
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get(model, images, Prefix.pooled(), batch_size=4, progress=False)
    assert calls.n == 2  # 7 images in batches of 4
    calls.n = 0
    again = cache.get(model, images, Prefix.pooled(), progress=False)  # memory layer
    assert calls.n == 0 and cache.stats.memory_hits == len(images)
    other = FeatureCache(tmp_path / "cache")  # a new process would see only the disk
    from_disk = other.get(model, images[::-1], Prefix.pooled(), progress=False)
    assert calls.n == 0 and other.stats.disk_hits == len(images) and other.stats.misses == 0
    assert torch.equal(first, again) and torch.equal(first, from_disk.flip(0))
    # the returned tensor is an ordinary one: usable with autograd
    leaf = from_disk.clone().requires_grad_(True)
    (leaf * 2).sum().backward()


def test_keys_follow_weights_preprocessing_prefix_and_bytes(images: list[Path], tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    a = create_backbone("tiny-vit", seed=0)
    base = cache.keys(a, images, Prefix.pooled())
    assert len(set(base)) == len(images)
    assert cache.keys(create_backbone("tiny-vit", seed=0), images, Prefix.pooled()) == base
    # other weights
    assert not set(cache.keys(create_backbone("tiny-vit", seed=1), images, Prefix.pooled())) & set(base)
    # other preprocessing
    b = create_backbone("tiny-vit", seed=0)
    b.preprocess = replace(b.preprocess, interpolation="bilinear")
    assert not set(cache.keys(b, images, Prefix.pooled())) & set(base)
    b.preprocess = replace(a.preprocess, resize=40)
    assert not set(cache.keys(b, images, Prefix.pooled())) & set(base)
    # other prefix
    assert not set(cache.keys(a, images, Prefix.tokens(1))) & set(base)
    # negative and absolute layers name the same prefix
    assert cache.keys(a, images, Prefix.tokens(-1)) == cache.keys(a, images, Prefix.tokens(1))
    # no weights hash in the identity: the state dict is hashed instead
    c0, c1 = create_backbone("tiny-vit", seed=0), create_backbone("tiny-vit", seed=1)
    c0.identity.weights_sha256 = c1.identity.weights_sha256 = ""
    k0 = cache.keys(c0, images, Prefix.pooled())
    assert set(k0).isdisjoint(cache.keys(c1, images, Prefix.pooled()))
    assert cache.keys(c0, images, Prefix.pooled()) == k0
    with torch.no_grad():
        next(c0.parameters()).add_(0.5)  # an in-place edit is seen
    assert set(cache.keys(c0, images, Prefix.pooled())).isdisjoint(k0)
    # same bytes at another path: same key; changed bytes: new key, recomputed
    copy = tmp_path / "copy.png"
    copy.write_bytes(images[0].read_bytes())
    assert cache.keys(a, [copy], Prefix.pooled()) == base[:1]
    first = cache.get(a, images, Prefix.pooled(), progress=False)
    Image.fromarray(255 - np.asarray(load_rgb(images[0]))).save(images[0])
    os.utime(images[0], ns=(1, 1))  # a new mtime even on coarse-grained file systems
    assert cache.keys(a, images, Prefix.pooled())[0] != base[0]
    cache.stats.reset()
    second = cache.get(a, images, Prefix.pooled(), progress=False)
    assert cache.stats.misses == 1 and cache.stats.hits == len(images) - 1
    assert torch.equal(first[1:], second[1:]) and not torch.equal(first[0], second[0])


@pytest.mark.parametrize("name", MODELS)
def test_tokens_prefix_continues_to_forward_features(name: str, images: list[Path], tmp_path: Path) -> None:
    model = create_backbone(name)
    vit = _tower(model)
    depth = len(vit.blocks)
    cache = FeatureCache(tmp_path / "cache")
    x = _pixels(model, images)
    with torch.inference_mode():
        full = model.forward_features(x)
        for k in (1, 2):
            cached = cache.get(model, images, Prefix.tokens(depth - k), progress=False)
            ref = vit.forward_blocks(vit.embed(x), 0, depth - k)
            assert (
                cached.shape == ref.shape == (len(images), *expected_shape(model, Prefix.tokens(depth - k)))
            )
            torch.testing.assert_close(cached, ref, rtol=1e-3, atol=2e-3)
            resumed = model.forward_head(vit.forward_blocks(cached, depth - k))
            torch.testing.assert_close(resumed, full, rtol=1e-2, atol=1e-2)
        last = cache.get(model, images, Prefix.tokens(depth), progress=False)  # output of the last block
        torch.testing.assert_close(model.forward_head(last), full, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", MODELS)
def test_head_out_prefix(name: str, images: list[Path], tmp_path: Path) -> None:
    model = create_backbone(name)
    cache = FeatureCache(tmp_path / "cache")
    got = cache.get(model, images, Prefix.head_out((0, -1)), progress=False)
    attn = _tower(model).blocks[0].attn
    assert got.shape == (len(images), 2, attn.num_heads, attn.head_dim)
    with torch.inference_mode(), record(model, "head_out", layers=[0, 1]) as rec:
        model.forward_features(_pixels(model, images))
    ref = torch.stack([rec.get("head_out", 0)[:, :, 0], rec.get("head_out", 1)[:, :, 0]], dim=1)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


def test_corrupt_entries_are_recomputed(images: list[Path], tmp_path: Path) -> None:
    model = create_backbone("tiny-vit")
    root = tmp_path / "cache"
    good = FeatureCache(root).get(model, images, Prefix.pooled(), progress=False)
    cache = FeatureCache(root)
    keys = cache.keys(model, images, Prefix.pooled())
    files = [cache.path_for(k) for k in keys]
    whole = files[0].read_bytes()
    files[0].write_bytes(whole[: len(whole) // 2])  # truncated (a killed writer without atomic rename)
    files[1].write_bytes(b"\x00" * 12)  # garbage
    damaged = bytearray(files[2].read_bytes())
    damaged[-3] ^= 0x40  # one flipped bit in the data: parses, fails the checksum
    files[2].write_bytes(bytes(damaged))
    files[3].write_bytes(files[4].read_bytes())  # a valid entry under another entry's name
    files[5].write_bytes(b"")  # empty (power loss after rename)
    assert sorted(cache.verify()) == sorted(files[:4] + files[5:6])
    calls = Calls(model)
    got = cache.get(model, images, Prefix.pooled(), progress=False)
    assert torch.equal(got, good)
    assert cache.stats.corrupt == 5 and cache.stats.misses == 5 and cache.stats.disk_hits == 2
    assert calls.n == 1 and cache.verify() == []
    assert cache.read(keys[0], (model.num_features,)) is not None
    assert cache.read(keys[0], (model.num_features + 1,)) is None  # shape disagreeing with the model
    # a killed writer's temporary file is ignored by readers and removed once stale
    stale = files[0].parent / f".{files[0].name[:16]}.abc.tmp"
    stale.write_bytes(whole[:10])
    assert cache.temporary_files() == [stale] and cache.verify() == []
    assert cache.remove_temporary_files(older_than_s=3600) == 0
    os.utime(stale, (1, 1))
    assert cache.remove_temporary_files(older_than_s=3600) == 1 and not stale.exists()


def test_interrupted_run_leaves_only_whole_entries(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_backbone("tiny-vit")
    cache = FeatureCache(tmp_path / "cache")
    real_replace, published = os.replace, []

    def interrupted_replace(src, dst):  # Ctrl-C while the third entry is being published
        if len(published) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)
        published.append(dst)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        cache.get(model, images, Prefix.pooled(), batch_size=2, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(list((tmp_path / "cache").glob("*/*.safetensors"))) == 2
    assert cache.verify() == [] and cache.temporary_files() == []
    fresh = FeatureCache(tmp_path / "cache")
    fresh.get(model, images, Prefix.pooled(), progress=False)
    assert fresh.stats.disk_hits == 2 and fresh.stats.misses == len(images) - 2


def test_float16_overflow_kept_as_float32() -> None:
    values = torch.tensor([1.0, -2.5, 1e6])
    stored, data = _encode_entry(values, "k", {})
    assert stored.dtype == torch.float32
    assert torch.equal(_decode_entry(data, "k", (3,)), values)
    small, data16 = _encode_entry(torch.tensor([1.0, 2.0]), "k", {})
    assert small.dtype == torch.float16 and _decode_entry(data16, "other-key", (2,)) is None
    assert CACHE_FORMAT in data16[:400].decode(errors="ignore")


def _fill_worker(root: str, paths: list[str], reverse: bool, start, barrier, rounds: int, written) -> None:
    torch.set_num_threads(1)
    model = create_backbone("tiny-vit")
    order = paths[::-1] if reverse else paths
    cache = FeatureCache(root, memory_bytes=0)
    start.wait()
    for _ in range(rounds):
        barrier.wait()
        cache.get(model, order, Prefix.pooled(), batch_size=1, progress=False)
    written.put(cache.stats.written)


def _victim_worker(root: str, paths: list[str], start, running) -> None:
    torch.set_num_threads(1)
    model = create_backbone("tiny-vit")
    cache = FeatureCache(root, memory_bytes=0)
    start.wait()
    while True:  # until SIGKILL
        cache.get(model, paths[len(paths) // 2 :] + paths, Prefix.pooled(), batch_size=1, progress=False)
        running.set()


def test_two_processes_fill_one_cache(tmp_path: Path) -> None:
    """Two writers race on every entry while a reader checks and a third writer is SIGKILLed."""
    paths = [str(p) for p in _write_images(tmp_path / "images", 16, seed=3)]
    root = tmp_path / "cache"
    model = create_backbone("tiny-vit")
    with torch.inference_mode():
        ref = model.forward_features(_pixels(model, paths))
    cache = FeatureCache(root, memory_bytes=0)
    keys = cache.keys(model, paths, Prefix.pooled())
    shape = (model.num_features,)
    ctx = mp.get_context("spawn")
    rounds = 3
    start, barrier, written = ctx.Barrier(3), ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_fill_worker, args=(str(root), paths, rev, start, barrier, rounds, written))
        for rev in (False, True)
    ]
    running = ctx.Event()
    victim = ctx.Process(target=_victim_worker, args=(str(root), paths, start, running))
    for p in [*procs, victim]:
        p.start()
    seen = 0
    try:
        # read while they write: an entry is either absent or whole and right, never partial
        while any(p.is_alive() for p in procs) or not (running.is_set() or not victim.is_alive()):
            for i, key in enumerate(keys):
                try:
                    data = cache.path_for(key).read_bytes()
                except FileNotFoundError:
                    continue
                t = _decode_entry(data, key, shape)
                assert t is not None, "a reader saw a partly written entry"
                seen += 1
                torch.testing.assert_close(t.float(), ref[i], rtol=1e-3, atol=1e-3)
            # between rounds, drop entries so that the writers race on them again
            for key in keys[::3]:
                cache.path_for(key).unlink(missing_ok=True)
    finally:
        victim.kill()  # SIGKILL, most likely in the middle of its work
        for p in [*procs, victim]:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs) and victim.exitcode == -9
    # both found the empty cache and computed every entry in round 1: each entry had two writers
    assert written.get(timeout=5) + written.get(timeout=5) >= 2 * len(keys)
    assert seen > 0
    # the last round may have followed the last unlink: fill what is missing, then check everything
    final = FeatureCache(root).get(model, paths, Prefix.pooled(), progress=False)
    torch.testing.assert_close(final, ref, rtol=1e-3, atol=1e-3)
    assert cache.verify() == []  # a killed writer may leave a temporary file, never a bad entry
    cache.remove_temporary_files(older_than_s=0)
    assert cache.temporary_files() == []
    assert sorted(p.stem for p in root.glob("*/*.safetensors")) == sorted(keys)


def test_bad_image_names_file_and_keeps_the_rest(images: list[Path], tmp_path: Path) -> None:
    model = create_backbone("tiny-vit")
    bad = tmp_path / "images" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    bad2 = tmp_path / "images" / "broken2.jpg"
    bad2.write_bytes(b"nope")
    cache = FeatureCache(tmp_path / "cache")
    paths = [*images[:3], bad, *images[3:], bad2]
    gone = tmp_path / "images" / "gone.png"
    dangling = tmp_path / "images" / "dangling.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match="broken.png") as info:
        cache.get(model, [*paths, gone, dangling], Prefix.pooled(), batch_size=2, progress=False)
    # every bad file is named in one error, the missing and dangling ones too
    assert isinstance(info.value, ImageErrors) and len(info.value.errors) == 4
    assert {e.path.name for e in info.value.errors} == {
        "broken.png",
        "broken2.jpg",
        "gone.png",
        "dangling.png",
    }
    assert all(name in str(info.value) for name in ("broken2.jpg", "gone.png", "dangling.png"))
    keys = FeatureCache(tmp_path / "cache").keys(model, images, Prefix.pooled())
    assert all(cache.path_for(k).is_file() for k in keys)
    calls = Calls(model)
    fresh = FeatureCache(tmp_path / "cache")
    fresh.get(model, images, Prefix.pooled(), progress=False)
    assert calls.n == 0 and fresh.stats.disk_hits == len(images)
    with pytest.raises(ImageErrors, match="missing.png"):
        fresh.get(model, [tmp_path / "missing.png"], Prefix.pooled(), progress=False)


def test_eval_mode_empty_input_and_memory_budget(images: list[Path], tmp_path: Path) -> None:
    model = create_backbone("tiny-vit").train()
    cache = FeatureCache(tmp_path / "cache", memory_bytes=3 * 32 * 2)  # room for three entries
    got = cache.get(model, images, Prefix.pooled(), progress=False)
    assert model.training  # the mode is restored
    with torch.inference_mode():
        ref = model.eval().forward_features(_pixels(model, images))
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    cache.stats.reset()
    cache.get(model, images, Prefix.pooled(), progress=False)
    assert cache.stats.memory_hits <= 3 and cache.stats.hits == len(images)
    empty = cache.get(model, [], Prefix.tokens(0), progress=False)
    assert empty.shape == (0, *expected_shape(model, Prefix.tokens(0)))


def test_prefix_validation() -> None:
    with pytest.raises(ValueError, match="unknown prefix kind"):
        Prefix("logits")
    with pytest.raises(ValueError, match="one int layer"):
        Prefix("tokens")
    with pytest.raises(ValueError, match="distinct"):
        Prefix.head_out([1, 1])
    with pytest.raises(ValueError, match="no layer"):
        Prefix("pooled", 3)
    assert Prefix.head_out([2, 0]).key() == "head_out:2,0" and Prefix.head_out(1).layer == (1,)
    vit = create_backbone("tiny-vit")
    with pytest.raises(ValueError, match="out of range"):
        Prefix.tokens(3).resolve(vit)
    with pytest.raises(ValueError, match="out of range"):
        Prefix.head_out([2]).resolve(vit)
    cnn = create_backbone("tiny-efficientnet")
    with pytest.raises(ValueError, match="token path"):
        Prefix.tokens(1).resolve(cnn)
    with pytest.raises(ValueError, match="CLS"):
        Prefix.head_out([0]).resolve(cnn)


def test_unwritable_cache_folder_warns_once_and_the_run_goes_on(
    images: list[Path], tmp_path: Path, caplog
) -> None:
    import logging

    model = create_backbone("tiny-vit")
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder should be")  # writes fail even for root
    cache = FeatureCache(blocked)
    with caplog.at_level(logging.WARNING, logger="focusshot"):
        got = cache.get(model, images, Prefix.pooled(), batch_size=2, progress=False)
        again = cache.get(model, images, Prefix.pooled(), progress=False)
    ref = FeatureCache(tmp_path / "ok").get(model, images, Prefix.pooled(), progress=False)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(again, got)
    assert not cache.disk_writable and caplog.text.count("not writable") == 1
    assert cache.stats.written == 0 and cache.stats.memory_hits == len(images)


@pytest.mark.parametrize("prefix", [Prefix.pooled(), Prefix.head_out((0, 1))])
def test_compiled_extraction_equals_eager_and_compiles_once(images, tmp_path, prefix) -> None:
    model = create_backbone("tiny-vit")
    eager = FeatureCache(tmp_path / "eager", compile="never").get(model, images, prefix, batch_size=3)
    compiled_cache = FeatureCache(tmp_path / "compiled", compile="always")
    got = compiled_cache.get(model, images[:5], prefix, batch_size=3, progress=False)  # batches of 3 and 2
    got2 = compiled_cache.get(model, images[5:], prefix, batch_size=3, progress=False)
    assert (torch.cat([got, got2]) - eager).abs().max() < 1e-4
    assert len(compiled_cache._compiled[model]) == 1  # one graph for every batch (short ones padded)
    # same keys: compiled and eager entries are interchangeable
    eager_keys = FeatureCache(tmp_path / "e").keys(model, images, prefix)
    assert compiled_cache.keys(model, images, prefix) == eager_keys


def test_auto_compile_leaves_small_models_eager_and_bad_choices_are_named(images, tmp_path) -> None:
    model = create_backbone("tiny-vit")
    cache = FeatureCache(tmp_path)
    cache.get(model, images, Prefix.pooled(), progress=False)
    assert not cache._compiled.get(model)  # 7 images x a tiny tower: far below the bar
    with pytest.raises(ValueError, match="compile"):
        FeatureCache(tmp_path, compile="sometimes")
    with pytest.raises(ValueError, match="autocast"):
        FeatureCache(tmp_path, autocast="int8")


def test_autocast_features_are_cached_apart_and_close_to_float32(images, tmp_path) -> None:
    model = create_backbone("tiny-vit")
    full = FeatureCache(tmp_path).get(model, images, Prefix.pooled(), progress=False)
    half_cache = FeatureCache(tmp_path, autocast="bf16")
    half = half_cache.get(model, images, Prefix.pooled(), progress=False)
    assert half_cache.stats.misses == len(images)  # not served the float32 entries
    assert not torch.equal(half, full)
    cos = torch.nn.functional.cosine_similarity(half, full, dim=-1)
    assert cos.min() > 0.99


def test_a_failing_compile_falls_back_to_eager_and_auto_decides_on_the_whole_request(
    images, tmp_path, monkeypatch, caplog
) -> None:
    import focusshot.evaluation.cache as cache_mod

    def broken(fn, **kw):
        def run(x):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler")

        return run

    monkeypatch.setattr(cache_mod.torch, "compile", broken)
    model = create_backbone("tiny-vit")
    eager = FeatureCache(tmp_path / "eager", compile="never").get(
        model, images, Prefix.pooled(), progress=False
    )
    with caplog.at_level("WARNING", logger="focusshot"):
        got = FeatureCache(tmp_path / "c", compile="always").get(
            model, images, Prefix.pooled(), progress=False
        )
    assert torch.equal(got, eager) and "extracting eagerly" in caplog.text
    # auto: a rank's share of 3 images decides as the whole request of 7 would
    tower = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(cache_mod, "COMPILE_MIN_WORK", 7 * tower)
    share = FeatureCache(tmp_path / "s")
    share.get(model, images[:3], Prefix.pooled(), progress=False, request_images=7)
    assert share._compiled.get(model)
    alone = FeatureCache(tmp_path / "a")
    alone.get(model, images[:3], Prefix.pooled(), progress=False)
    assert not alone._compiled.get(model)
