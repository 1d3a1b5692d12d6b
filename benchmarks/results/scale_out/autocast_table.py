"""bf16 and fp16 autocast extraction against float32: features and accuracy on the same episodes.

Runs (world-clip, world:clutter, 5-way 1-shot, 200 episodes, seed 0; CPU autocast)::

    for p in none bf16 fp16; do focusshot evaluate --backbone world-clip --data world:clutter \\
      --method protonet,logistic,zeroshot --ways 5 --shots 1 --episodes 200 --seed 0 --autocast $p \\
      --quiet --no-report --output benchmarks/results/scale_out/autocast_$p; done
    python benchmarks/results/scale_out/autocast_table.py > benchmarks/results/scale_out/autocast.md
"""

from pathlib import Path

import torch

from focusshot import create_backbone
from focusshot.api import default_cache_dir
from focusshot.data.sources import open_source
from focusshot.evaluation.cache import FeatureCache, Prefix
from focusshot.evaluation.metrics import mean_ci95, paired_difference
from focusshot.evaluation.results import read_results

HERE = Path(__file__).parent


def rows(run: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in read_results(HERE / run):
        out.setdefault(r["method"], {})[r["episode"]] = r["accuracy"]
    return out


model, data = create_backbone("world-clip"), open_source("world:clutter")
full = FeatureCache(default_cache_dir()).get(model, data.paths, Prefix.pooled(), progress=False)
a = rows("autocast_none")
for precision in ("bf16", "fp16"):
    cache = FeatureCache(default_cache_dir(), autocast=precision)
    half = cache.get(model, data.paths, Prefix.pooled(), progress=False)
    cos = torch.nn.functional.cosine_similarity(full, half, dim=-1)
    rel = (full - half).norm(dim=-1) / full.norm(dim=-1)
    print(
        f"{precision} (CPU autocast), pooled features of {len(data.paths)} images: max |{precision} - fp32| "
        f"{float((full - half).abs().max()):.4f} (features up to {float(full.abs().max()):.2f}); relative L2 "
        f"error mean {float(rel.mean()):.2e}, max {float(rel.max()):.2e}; cosine min {float(cos.min()):.6f}\n"
    )
    b = rows(f"autocast_{precision}")
    p = precision
    print(f"| method | float32 | {p} autocast | {p} - float32 (paired) | episodes that differ |")
    print("|---|---|---|---|---|")
    for m in a:
        eps = sorted(a[m])
        res = paired_difference([b[m][e] for e in eps], [a[m][e] for e in eps])
        fa, fb = mean_ci95([a[m][e] for e in eps]), mean_ci95([b[m][e] for e in eps])
        differ = sum(a[m][e] != b[m][e] for e in eps)
        print(
            f"| {m} | {fa[0]:.4f} ± {fa[1]:.3f} | {fb[0]:.4f} ± {fb[1]:.3f} | "
            f"{res.mean:+.4f} ± {res.half_width:.4f} | {differ} of {len(eps)} |"
        )
    print()
