"""FALIP's alpha x biased-blocks sweep on the validation split: paired gain over zero-shot CLIP.

python benchmarks/results/falip/sweep_table.py > benchmarks/results/falip/sweep.md
"""

from pathlib import Path

from focusshot.evaluation.metrics import paired_difference
from focusshot.evaluation.results import read_results

HERE = Path(__file__).parent
ALPHAS, BLOCKS = ("0.2", "1", "3", "10", "30", "100"), (2, 3, 6)


def gain(run: Path) -> tuple[float, float]:
    rows = read_results(run)
    acc = {m: {r["episode"]: r["accuracy"] for r in rows if r["method"] == m} for m in ("falip", "zeroshot")}
    eps = sorted(acc["falip"])
    res = paired_difference([acc["falip"][e] for e in eps], [acc["zeroshot"][e] for e in eps])
    return res.mean, res.half_width


best = max(((a, k) for a in ALPHAS for k in BLOCKS), key=lambda ak: gain(HERE / f"val_a{ak[0]}_k{ak[1]}")[0])
print("| alpha \\\\ biased blocks (of 6) | " + " | ".join(f"last {k}" for k in BLOCKS) + " |")
print("|---|" + "---|" * len(BLOCKS))
for a in ALPHAS:
    cells = [gain(HERE / f"val_a{a}_k{k}") for k in BLOCKS]
    print(f"| {a} | " + " | ".join(f"{m:+.3f} ± {h:.3f}" for m, h in cells) + " |")
print(f"\nchosen on validation: alpha = {best[0]}, last {best[1]} blocks")
