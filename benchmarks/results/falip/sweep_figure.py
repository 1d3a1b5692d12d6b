"""FALIP's alpha x biased-blocks sweep as a figure: paired gain over zero-shot CLIP on validation.

python benchmarks/results/falip/sweep_figure.py   # writes benchmarks/results/falip/sweep.png

Reads the paired.csv of every val_a{alpha}_k{blocks} run (run.sh; world-clip, world:clutter
validation split, the same 100 episodes for every setting).
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
ALPHAS, BLOCKS = (0.2, 1, 3, 10, 30, 100), (2, 3, 6)


def gain(alpha: float, blocks: int) -> tuple[float, float]:
    with open(HERE / f"val_a{alpha:g}_k{blocks}" / "paired.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["method"] == "falip")
    return float(row["mean_difference"]), float(row["ci95"])


fig, ax = plt.subplots(figsize=(6, 3.8))
for k in BLOCKS:
    means, halves = zip(*(gain(a, k) for a in ALPHAS), strict=True)
    ax.errorbar(ALPHAS, means, yerr=halves, marker="o", capsize=3, label=f"last {k} of 6 blocks biased")
ax.axhline(0, color="#868e96", lw=1, ls="--")
ax.axvline(0.2, color="#adb5bd", lw=1, ls=":")
ax.text(0.21, ax.get_ylim()[1] * 0.9, "paper's alpha", fontsize=8, color="#495057")
ax.set_xscale("log")
ax.set_xlabel("alpha (foveal bias scale)")
ax.set_ylabel("accuracy gain over zero-shot CLIP (95% CI)")
ax.set_title("FALIP on world-clip, world:clutter validation, 5-way 1-shot", fontsize=9)
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.savefig(HERE / "sweep.png", dpi=120, bbox_inches="tight")
print(f"wrote {HERE / 'sweep.png'}")
