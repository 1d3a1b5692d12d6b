"""Where SAV's selected heads sit: how often each (layer, head) of world-clip is chosen.

python benchmarks/results/sav/heads_figure.py   # writes benchmarks/results/sav/heads.png and heads.json

The same episodes as run.sh (5-way, 10 queries, 100 episodes, seed 0) on world:clutter and
world:single at K = 1, 5, 20; SAV keeps 3 of world-clip's 6 x 3 = 18 heads per episode (the
best-3 setting of the README's table). Counts are over episodes: a cell of 100 means the head
was chosen in every episode.
"""

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

HERE = Path(__file__).parent
model = create_backbone("world-clip")
cache = FeatureCache(default_cache_dir())
method = create_method("sav", {"heads": 3, "selection": "best"})
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
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        ax.set_title(f"world:{suite}, K={k}", fontsize=9)
        ax.set_xticks(range(heads))
        ax.set_yticks(range(layers))
for ax in axes[-1]:
    ax.set_xlabel("head")
for ax in axes[:, 0]:
    ax.set_ylabel("layer")
fig.colorbar(im, ax=axes, shrink=0.8, label="episodes (of 100) choosing the head")
fig.suptitle("SAV on world-clip: which 3 of the 18 heads are selected", fontsize=10)
fig.savefig(HERE / "heads.png", dpi=120, bbox_inches="tight")
(HERE / "heads.json").write_text(
    json.dumps({"heads_kept": 3, "episodes": 100, "counts": counts}, indent=2) + "\n"
)
print(f"wrote {HERE / 'heads.png'}")
