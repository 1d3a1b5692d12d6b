"""One training step of last-k tuning from the cached prefix, against recomputing the frozen trunk.

Run by hand (not part of the tests)::

    python benchmarks/bench_prefix_training.py --models world-clip clip-vit-b16 --blocks 1 2 --repeats 5

For each model and k, the ``last_block`` method (``blocks=k``) builds its tuned tail over a frozen
copy of the backbone; one optimisation step (forward, cross-entropy, backward, AdamW update of
the last k blocks and the head) is timed three ways on the same batch and the same trainable
parameters:

* ``prefix``: from the cached tokens entering block ``L - k`` (what focusshot does);
* ``full_frozen_trunk``: from the images, running all L blocks forward; gradients flow only into
  the last k (what a tuner without the cache does). Its ideal ratio to ``prefix`` is
  ``(L f + k b) / (k f + k b)`` with ``b ~ 2 f`` the backward cost: ``(L + 2k) / 3k``;
* ``full_backward``: from the images with every block trainable (a full forward + backward, as
  full fine-tuning runs). Its ideal ratio is ``L / k``; the issue's target is ``>= 0.7 L / k``.

The three are interleaved, ``--repeats`` rounds, and the median of each is kept (the 2-core
build machine is noisy). ViT-B/16 is random-weight (no pretrained weights install here); its
batch is ``--batch-b16``. Results go to ``benchmarks/results/prefix_training.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from focusshot import __version__, create_backbone
from focusshot.backbones.prefix import Prefix, compute_prefix
from focusshot.methods.base import create_method
from focusshot.methods.finetune import Tail


def step_timer(forward, params, x: torch.Tensor, y: torch.Tensor):
    """A function that runs one AdamW step of ``forward`` on ``(x, y)`` and returns its seconds."""
    opt = torch.optim.AdamW(params, lr=1e-6)

    def run() -> float:
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return run


def bench(name: str, k: int, batch: int, repeats: int) -> dict:
    backbone = create_backbone(name, pretrained=name == "world-clip", seed=0).eval()
    depth = backbone.token_blocks()
    method = create_method("last_block", {"blocks": k})
    tail, params = method.build(backbone, torch.Generator().manual_seed(0))
    crop = backbone.preprocess.crop
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=g)
    y = torch.arange(batch) % 5
    with torch.no_grad():
        tokens = compute_prefix(backbone, Prefix.tokens(depth - k), x)
    head = torch.nn.Linear(backbone.num_features, 5)
    trainable = [*params, *head.parameters()]
    full = Tail(tail.backbone, None)
    runs = {
        "prefix": step_timer(lambda t: head(tail(t)), trainable, tokens, y),
        "full_frozen_trunk": step_timer(lambda im: head(full(im)), trainable, x, y),
    }
    # every block trainable: a copy whose whole tower has storage of its own
    whole, all_params = create_method("ft").build(backbone, torch.Generator().manual_seed(0))
    runs["full_backward"] = step_timer(lambda im: head(whole(im)), [*all_params, *head.parameters()], x, y)
    times: dict[str, list[float]] = {key: [] for key in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for key, fn in runs.items():
            times[key].append(fn())
    med = {key: statistics.median(v) for key, v in times.items()}
    return {
        "model": name,
        "depth": depth,
        "k": k,
        "batch": batch,
        "seconds_median": med,
        "seconds_all": times,
        "speedup_vs_full_frozen_trunk": med["full_frozen_trunk"] / med["prefix"],
        "ideal_vs_full_frozen_trunk": (depth + 2 * k) / (3 * k),
        "speedup_vs_full_backward": med["full_backward"] / med["prefix"],
        "ideal_vs_full_backward": depth / k,
        "target_vs_full_backward": 0.7 * depth / k,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["world-clip", "clip-vit-b16"])
    ap.add_argument("--blocks", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=25, help="batch for small models (5-way 5-shot)")
    ap.add_argument("--batch-b16", type=int, default=5, help="batch for ViT-B-sized models")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "prefix_training.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for name in args.models:
        for k in args.blocks:
            batch = args.batch_b16 if "b16" in name or "b32" in name else args.batch
            r = bench(name, k, batch, args.repeats)
            results.append(r)
            print(
                f"{name} k={k} batch={batch}: prefix {r['seconds_median']['prefix'] * 1e3:.1f} ms; "
                f"vs frozen trunk {r['speedup_vs_full_frozen_trunk']:.2f}x "
                f"(ideal {r['ideal_vs_full_frozen_trunk']:.2f}x); vs full backward "
                f"{r['speedup_vs_full_backward']:.2f}x (ideal {r['ideal_vs_full_backward']:.1f}x, "
                f"target {r['target_vs_full_backward']:.1f}x)",
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
