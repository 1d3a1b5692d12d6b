"""FALIP's cost per region against a full forward (issue 8).

Run by hand (not part of the tests)::

    python benchmarks/bench_falip.py --threads 1

FALIP biases only the last k blocks, so focusshot caches the tokens entering the first biased
block once per image and runs only those k blocks (and the head) per region. For each model this
times, on the same random images and boxes, best of ``--repeats``:

* full forward: ``forward_features`` from pixels (what a tool without the prefix cache runs for
  every region);
* FALIP per region: :func:`focusshot.methods.falip.falip_features` from the cached tokens, the
  official last 4 blocks, alpha 0.2;
* the prefix itself: the first L - 4 blocks (paid once per image, then cached).

Random weights: cost does not depend on them. Writes ``benchmarks/results/falip/cost.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from focusshot import __version__, create_backbone
from focusshot.backbones.prefix import Prefix, compute_prefix
from focusshot.methods.falip import falip_features


def best_of(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["world-clip", "world-clip-deep", "clip-vit-b16"])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4, help="biased blocks (the official last 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "falip" / "cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        model = create_backbone(name, pretrained=False).eval()
        size = model.preprocess.crop
        x = torch.randn(args.images, 3, size, size)
        lo = torch.rand(args.images, 2) * 0.5
        boxes = torch.cat([lo, lo + 0.3 + torch.rand(args.images, 2) * 0.2], dim=1).clamp(max=1.0)
        depth = model.token_blocks()
        start = depth - args.layers
        prefix = Prefix.tokens(start).resolve(model)
        with torch.inference_mode():
            tokens = compute_prefix(model, prefix, x)
        full = best_of(lambda m=model, x=x: m.forward_features(x), args.repeats)
        region = best_of(
            lambda m=model, t=tokens, b=boxes, s=start: falip_features(m, t, b, s, batch_size=args.images),
            args.repeats,
        )
        once = best_of(lambda m=model, p=prefix, x=x: compute_prefix(m, p, x), args.repeats)
        row = {
            "model": name,
            "depth": depth,
            "biased_blocks": args.layers,
            "images": args.images,
            "full_forward_ms_per_image": 1e3 * full / args.images,
            "falip_per_region_ms_per_image": 1e3 * region / args.images,
            "prefix_once_ms_per_image": 1e3 * once / args.images,
            "region_over_full": region / full,
            "cached_tokens_kib_per_image_fp16": tokens[0].numel() * 2 / 1024,
        }
        rows.append(row)
        print(
            f"{name}: full forward {row['full_forward_ms_per_image']:.2f} ms/img, FALIP per region "
            f"{row['falip_per_region_ms_per_image']:.2f} ms/img ({row['region_over_full']:.2f}x), "
            f"prefix once {row['prefix_once_ms_per_image']:.2f} ms/img",
            flush=True,
        )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "seed": 0,
                "threads": args.threads,
                "focusshot": __version__,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
