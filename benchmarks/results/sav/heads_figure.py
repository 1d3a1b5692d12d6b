"""Where SAV's selected heads sit: how often each (layer, head) of world-clip is chosen.

python benchmarks/results/sav/heads_figure.py   # writes benchmarks/results/sav/heads.png and heads.json
python benchmarks/results/sav/heads_figure.py --backbone world-clip-deep --heads 20 \
    --output benchmarks/results/deep           # the deeper model (12 x 6 heads), the paper's 20

The same episodes as run.sh (5-way, 10 queries, 100 episodes, seed 0) on world:clutter and
world:single at K = 1, 5, 20; SAV keeps 3 of world-clip's 6 x 3 = 18 heads per episode (the
best-3 setting of the README's table). Counts are over episodes: a cell of 100 means the head
was chosen in every episode.
"""

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from focusshot.api import default_cache_dir
from focusshot.backbones.registry import create_backbone
from focusshot.data.episodes import EpisodeSampler
from focusshot.data.sources import open_source
from focusshot.evaluation.cache import FeatureCache
from focusshot.methods.base import FitContext, create_method

parser = argparse.ArgumentParser()
parser.add_argument("--backbone", default="world-clip")
parser.add_argument("--heads", type=int, default=3)
parser.add_argument("--output", default=str(Path(__file__).parent))
args = parser.parse_args()
HERE = Path(args.output)
model = create_backbone(args.backbone)
cache = FeatureCache(default_cache_dir())
method = create_method("sav", {"heads": args.heads, "selection": "best"})
prefix = method.prefix(model)
layers, heads = len(model.attention_modules()), model.attention_modules()[0].num_heads
counts: dict[str, list[list[int]]] = {}
fig, axes = plt.subplots(2, 3, figsize=(9, 5.2), sharex=True, sharey=True)
for row, suite in enumerate(("clutter", "single")):
    data = open_source(f"world:{suite}")
    feats = cache.get(model, data.paths, prefix, progress=False)
    for col, k in enumerate((1, 5, 20)):
        grid = np.zeros((layers, heads), dtype=int)
        sampler = EpisodeSampler(data.labels, 5, k, 10, 100, 0, class_names=data.class_names)
        for ep in sampler:
            ctx = FitContext(model, ep.ways, seed=ep.seed)
            fitted = method.fit(feats[torch.tensor(ep.support)], torch.tensor(ep.support_labels), ctx)
            for layer_idx, head in fitted.selected.tolist():
                grid[fitted.layers[layer_idx], head] += 1
        counts[f"{suite}_K{k}"] = grid.tolist()
        ax = axes[row, col]
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        if grid.size <= 36:  # numbers fit in the cells of a small model only
            for (i, j), v in np.ndenumerate(grid):
                colour = "white" if v < 60 else "black"
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=colour)
        ax.set_title(f"world:{suite}, K={k}", fontsize=9)
        ax.set_xticks(range(heads))
        ax.set_yticks(range(layers))
for ax in axes[-1]:
    ax.set_xlabel("head")
for ax in axes[:, 0]:
    ax.set_ylabel("layer")
fig.colorbar(im, ax=axes, shrink=0.8, label="episodes (of 100) choosing the head")
fig.suptitle(
    f"SAV on {args.backbone}: which {args.heads} of the {layers * heads} heads are selected", fontsize=10
)
fig.savefig(HERE / "heads.png", dpi=120, bbox_inches="tight")
(HERE / "heads.json").write_text(
    json.dumps(
        {"backbone": args.backbone, "heads_kept": args.heads, "episodes": 100, "counts": counts}, indent=2
    )
    + "\n"
)
print(f"wrote {HERE / 'heads.png'}")
