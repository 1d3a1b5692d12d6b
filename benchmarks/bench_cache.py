"""The shared feature cache against re-encoding every episode (DESIGN, "pay for each image once").

Run by hand (not part of the tests)::

    python benchmarks/bench_cache.py                      # clothing-small/train, efficientnet-lite0 @224 px
    python benchmarks/bench_cache.py --backbone vit-s192  # a random ViT (width 192, depth 6) at 64 px

Episodes: ``--episodes`` (600) 5-way 5-shot 15-query tasks from ``EpisodeSampler`` over a pool of
images (``../shared/datasets/clothing-small/train``, 3,068 photos of 10 classes, when present;
otherwise ``--synthetic`` generated images). Classifier: ProtoNet (nearest class mean of
L2-normalised features, squared Euclidean distance), written inline below.

(a) cache: a fresh (cold) ``FeatureCache`` encodes the pool once (``get`` on every image, in
    ``--baseline-episodes`` shares), then every episode indexes the returned features. Also
    timed: the same pool read back from disk by a new cache object (a second run), and
    per-episode ``get`` calls served from memory.
(b) re-encoding: what few-shot libraries usually do, decoding and encoding the 100 images of each
    episode anew (``focusshot.embedding.embed_images``, batched, with background decoding). To
    keep the run bounded it is timed on the first ``--baseline-episodes`` episodes and its
    per-episode time is extrapolated to all episodes (stated in the results).

The fill shares and the re-encoded episodes are timed alternately, so that both arms see the same
load when the machine is shared; wall-clock and this process's CPU time are both reported.

Both arms use the same backbone, transform, batch size and episodes; the accuracies of the
episodes run by both are compared. Results go to ``benchmarks/results/cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

import focusshot
from focusshot.backbones.base import IMAGENET_PREPROCESS, Backbone
from focusshot.backbones.loading import weights_digest
from focusshot.data.episodes import Episode, EpisodeSampler
from focusshot.data.sources import from_folder
from focusshot.embedding import embed_images
from focusshot.evaluation.cache import FeatureCache, Prefix

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-small" / "train"
RESULTS = Path(__file__).resolve().parent / "results" / "cache.json"


def protonet_accuracy(support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor) -> float:
    """ProtoNet: support ``(N*K, D)``, query ``(N*Q, D)`` -> accuracy of nearest class mean."""
    support = torch.nn.functional.normalize(support.float(), dim=1)
    query = torch.nn.functional.normalize(query.float(), dim=1)
    ways = int(support_labels.max()) + 1
    centroids = torch.stack([support[support_labels == c].mean(0) for c in range(ways)])  # (N, D)
    pred = torch.cdist(query, centroids).argmin(dim=1)
    return float((pred == query_labels).float().mean())


def _labels(ep: Episode) -> tuple[Tensor, Tensor]:
    return torch.tensor(ep.support_labels), torch.tensor(ep.query_labels)


def build_backbone(name: str, image_size: int | None) -> Backbone:
    """``efficientnet-lite0`` (ImageNet weights), ``vit-s192`` (random ViT) or any registry name."""
    if name == "vit-s192":
        from focusshot.backbones.vit import VisionTransformer, ViTConfig

        size = image_size or 64
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            cfg = ViTConfig(image_size=size, patch_size=8, width=192, depth=6, num_heads=3, mlp_dim=768)
            model = VisionTransformer(cfg, preprocess=replace(IMAGENET_PREPROCESS, resize=size, crop=size))
        model.eval()
        model.identity.name, model.identity.source = "vit-s192", "random(seed=0)"
        model.identity.weights_sha256 = weights_digest(model)
        return model
    model = focusshot.create_backbone(name)
    if image_size is not None:
        model.preprocess = replace(model.preprocess, resize=round(image_size * 256 / 224), crop=image_size)
    return model


def synthesise(folder: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """``n`` JPEGs in ``classes`` class folders: coloured blobs on textured backgrounds."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (classes, 3))
    yy, xx = np.mgrid[0:96, 0:128]
    for i in range(n):
        c = i % classes
        base = rng.integers(0, 256, 3)
        img = np.empty((96, 128, 3), np.float64)
        img[:] = base
        cy, cx, r = rng.integers(20, 76), rng.integers(20, 108), rng.integers(12, 30)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colours[c]
        img += rng.normal(0, 20, img.shape)
        out = folder / f"class{c}"
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / f"{i:05d}.jpg", quality=90)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="class-folder image pool")
    ap.add_argument("--synthetic", type=int, default=3000, help="images to generate when --data is absent")
    ap.add_argument(
        "--backbone", default="efficientnet-lite0", help="efficientnet-lite0, vit-s192 or a registry name"
    )
    ap.add_argument("--image-size", type=int, default=None, help="crop size (default: the backbone's own)")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument(
        "--baseline-episodes", type=int, default=20, help="episodes timed for the re-encoding arm"
    )
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary folder (cold)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    scratch = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        data = args.data
        synthetic = not data.is_dir()
        if synthetic:
            data = scratch / "images"
            print(f"{args.data} not found: generating {args.synthetic} images", file=sys.stderr)
            synthesise(data, args.synthetic, seed=args.seed)
        pool = from_folder(data)
        assert not isinstance(pool, dict), "give a folder of class folders (e.g. .../train)"
        model = build_backbone(args.backbone, args.image_size)
        sampler = EpisodeSampler(
            pool.labels,
            args.ways,
            args.shots,
            args.queries,
            args.episodes,
            args.seed,
            class_names=pool.class_names,
        )
        episodes = list(sampler)
        cache_dir = args.cache_dir or scratch / "cache"
        print(
            f"pool {len(pool)} images / {pool.num_classes} classes; {args.backbone} at "
            f"{model.preprocess.crop}px; {len(episodes)} episodes",
            file=sys.stderr,
        )

        # The two arms are timed interleaved -- fill a 1/n share of the pool, re-encode one
        # episode, repeat -- so that both see the same load on a shared machine.
        n_base = min(args.baseline_episodes, len(episodes))
        cache = FeatureCache(cache_dir)
        shares = np.array_split(np.arange(len(pool)), n_base)
        fill_s = fill_cpu = base_s = base_cpu = 0.0
        base_features: list[Tensor] = []
        for share, ep in tqdm(
            list(zip(shares, episodes[:n_base], strict=True)), desc="interleaved", unit="step"
        ):
            # (a) the shared cache, cold: its share of the pool
            t0, c0 = time.perf_counter(), time.process_time()
            cache.get(model, [pool.paths[i] for i in share], Prefix.pooled(), args.batch_size, progress=False)
            fill_s, fill_cpu = fill_s + time.perf_counter() - t0, fill_cpu + time.process_time() - c0
            # (b) re-encode one episode's images
            t0, c0 = time.perf_counter(), time.process_time()
            idx = [*ep.support, *ep.query]
            emb = embed_images(model, [pool.paths[i] for i in idx], batch_size=args.batch_size)
            base_s, base_cpu = base_s + time.perf_counter() - t0, base_cpu + time.process_time() - c0
            assert not emb.bad and len(emb.paths) == len(idx)
            base_features.append(emb.features)
        cold = cache.stats.misses == len(pool)

        # (a) continued: all features (memory hits, counted in the fill), then every episode
        t0, c0 = time.perf_counter(), time.process_time()
        feats = cache.get(model, pool.paths, Prefix.pooled(), progress=False)
        fill_s, fill_cpu = fill_s + time.perf_counter() - t0, fill_cpu + time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        acc_cached = []
        for ep in episodes:
            s_lab, q_lab = _labels(ep)
            acc_cached.append(protonet_accuracy(feats[list(ep.support)], s_lab, feats[list(ep.query)], q_lab))
        episodes_s, episodes_cpu = time.perf_counter() - t0, time.process_time() - c0
        cached_total_s, cached_total_cpu = fill_s + episodes_s, fill_cpu + episodes_cpu

        # (b) continued: ProtoNet on the re-encoded features (timed, added to the re-encoding arm)
        acc_base, max_diff = [], 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for ep, f in zip(episodes[:n_base], base_features, strict=True):
            s_lab, q_lab = _labels(ep)
            acc_base.append(protonet_accuracy(f[: len(ep.support)], s_lab, f[len(ep.support) :], q_lab))
        base_s, base_cpu = base_s + time.perf_counter() - t0, base_cpu + time.process_time() - c0
        for ep, f in zip(episodes[:n_base], base_features, strict=True):
            max_diff = max(max_diff, float((f - feats[[*ep.support, *ep.query]]).abs().max()))

        # the cache used episode by episode: per-episode get() calls, served by the memory layer
        t0 = time.perf_counter()
        for ep in episodes:
            paths = [pool.paths[i] for i in (*ep.support, *ep.query)]
            cache.get(model, paths, Prefix.pooled(), progress=False)
        per_episode_get_s = time.perf_counter() - t0
        # a second run: a new cache object reads the whole pool back from disk
        warm = FeatureCache(cache_dir)
        t0 = time.perf_counter()
        again = warm.get(model, pool.paths, Prefix.pooled(), progress=False)
        warm_disk_s = time.perf_counter() - t0
        assert torch.equal(again, feats) and warm.stats.disk_hits == len(pool)

        acc_both = acc_cached[:n_base]
        base_per_episode = base_s / n_base
        base_extrapolated_s = base_per_episode * len(episodes)
        ratio = base_extrapolated_s / cached_total_s
        ratio_cpu = base_cpu / n_base * len(episodes) / cached_total_cpu
        identical = acc_base == acc_both

        acc = np.asarray(acc_cached)
        result = {
            "benchmark": "feature cache vs re-encoding per episode",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "seed": args.seed,
            "data": {
                "pool": "synthetic" if synthetic else str(args.data),
                "images": len(pool),
                "classes": pool.num_classes,
            },
            "episodes": {**sampler.config(), "fingerprint": sampler.fingerprint()},
            "backbone": {
                "name": args.backbone,
                "identity": model.identity.to_dict(),
                "preprocess": model.preprocess.to_dict(),
                "num_features": model.num_features,
            },
            "batch_size": args.batch_size,
            "classifier": "ProtoNet: nearest class mean, L2-normalised features, squared Euclidean",
            "cache": {
                "cold": cold,
                "fill_s": round(fill_s, 3),
                "fill_images_per_s": round(len(pool) / fill_s, 2),
                "episodes_s": round(episodes_s, 3),
                "total_s": round(cached_total_s, 3),
                "total_cpu_s": round(cached_total_cpu, 3),
                "per_episode_get_from_memory_ms": round(1000 * per_episode_get_s / len(episodes), 3),
                "warm_read_from_disk_s": round(warm_disk_s, 3),
                "disk_bytes": sum(p.stat().st_size for p in Path(cache_dir).glob("*/*.safetensors")),
                "stats": vars(cache.stats),
            },
            "reencode": {
                "episodes_timed": n_base,
                "timed_s": round(base_s, 3),
                "per_episode_s": round(base_per_episode, 4),
                "extrapolated_s": round(base_extrapolated_s, 2),
                "timed_cpu_s": round(base_cpu, 3),
                "extrapolated_cpu_s": round(base_cpu / n_base * len(episodes), 2),
                "note": f"timed on the first {n_base} episodes, interleaved with the cache fill (same load); "
                f"per-episode time x {len(episodes)} episodes",
            },
            "speedup": round(ratio, 2),
            "speedup_cpu_time": round(ratio_cpu, 2),
            "speedup_note": "wall-clock re-encode (extrapolated) / cache total; speedup_cpu_time is the same "
            "ratio of this process's CPU time, less sensitive to other load on a shared machine",
            "accuracy": {
                "cached_mean": round(float(acc.mean()), 4),
                "cached_ci95": round(float(1.96 * acc.std(ddof=1) / np.sqrt(len(acc))), 4),
                "episodes_compared": n_base,
                "identical_on_compared": identical,
                "cached_on_compared": round(float(np.mean(acc_both)), 4),
                "reencode_on_compared": round(float(np.mean(acc_base)), 4),
                "max_abs_feature_diff": max_diff,
            },
            "versions": {
                "focusshot": focusshot.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"cache: fill {fill_s:.1f}s + {len(episodes)} episodes {episodes_s:.2f}s = "
            f"{cached_total_s:.1f}s | "
            f"re-encode: {base_per_episode:.2f}s/episode x {len(episodes)} = {base_extrapolated_s:.0f}s "
            f"(timed on {n_base}) | speedup {ratio:.1f}x (CPU time {ratio_cpu:.1f}x) | "
            f"accuracy {acc.mean():.4f} "
            f"(identical on {n_base} shared episodes: {identical}) -> {args.out}"
        )
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
