"""One SAFE training step from the cached prefix, against steps that recompute the frozen network.

Run by hand (not part of the tests)::

    OMP_NUM_THREADS=1 python benchmarks/bench_safe.py --models world-clip clip-vit-b16 clip-rn50 --repeats 3

SAFE tunes only CLIP's last block (ViT) or its attention pool (RN50) and blends it with the frozen
one, so a step needs the prefix entering that part (cached once per image by focusshot) and runs
the tuned part twice forward (frozen and tuned) and once backward. Timed on the same batch of 8
(SAFE's batch) and the same trainable parameters, interleaved, median of ``--repeats`` rounds:

* ``prefix``: SAFE's step from the cached prefix (what focusshot does);
* ``full_frozen_trunk``: the same step from the images, the frozen network recomputed each step;
* ``full_finetune``: a full fine-tuning step of the image tower (forward and backward through
  every layer), the cost SAFE's issue compares against (target ``>= 0.7 L`` faster for a ViT).

Random weights for the OpenAI-sized models (no pretrained weights install here). Results go to
``benchmarks/results/safe/timing_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_prefix_training import step_timer

from focusshot import __version__, create_backbone
from focusshot.backbones.prefix import compute_prefix
from focusshot.heads.base import l2_normalize
from focusshot.methods.base import create_method
from focusshot.methods.finetune import frozen_copy, own_storage


def bench(name: str, batch: int, repeats: int) -> dict:
    backbone = create_backbone(name, pretrained=name == "world-clip", seed=0).eval()
    method = create_method("safe")
    tail, params = method.build(backbone)
    prefix = method.prefix(backbone).resolve(backbone)
    crop = backbone.preprocess.crop
    x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 5
    text = l2_normalize(torch.randn(5, backbone.num_features, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        cached = compute_prefix(backbone, prefix, x)

    def head(f: torch.Tensor) -> torch.Tensor:
        return 100.0 * l2_normalize(f) @ text.T

    def from_images(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = compute_prefix(backbone, prefix, images)
        return head(tail(p))

    whole = frozen_copy(backbone)
    all_params = own_storage(whole.visual)
    runs = {
        "prefix": step_timer(lambda t: head(tail(t)), params, cached, y),
        "full_frozen_trunk": step_timer(from_images, params, x, y),
        "full_finetune": step_timer(lambda im: head(whole.forward_features(im)), all_params, x, y),
    }
    times: dict[str, list[float]] = {key: [] for key in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for key, fn in runs.items():
            times[key].append(fn())
    med = {key: statistics.median(v) for key, v in times.items()}
    depth = backbone.token_blocks()
    return {
        "model": name,
        "tuned": "last block" if depth else "attention pool",
        "depth": depth or None,
        "batch": batch,
        "prefix": prefix.key(),
        "seconds_median": med,
        "seconds_all": times,
        "speedup_vs_full_frozen_trunk": med["full_frozen_trunk"] / med["prefix"],
        "speedup_vs_full_finetune": med["full_finetune"] / med["prefix"],
        "target_vs_full_finetune": 0.7 * depth if depth else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["world-clip", "clip-vit-b16", "clip-rn50"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "safe" / "timing_steps.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for name in args.models:
        r = bench(name, args.batch, args.repeats)
        results.append(r)
        print(
            f"{name} ({r['tuned']}): prefix step {r['seconds_median']['prefix'] * 1e3:.1f} ms; "
            f"{r['speedup_vs_full_frozen_trunk']:.1f}x faster than recomputing the frozen network, "
            f"{r['speedup_vs_full_finetune']:.1f}x faster than a full fine-tuning step"
            + (f" (target {r['target_vs_full_finetune']:.1f}x)" if r["target_vs_full_finetune"] else ""),
            flush=True,
        )
    out = {
        "command": "python " + " ".join(sys.argv),
        "results": results,
        "threads": torch.get_num_threads(),
        "versions": {
            "focusshot": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "machine": platform.machine(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
