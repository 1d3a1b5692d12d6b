"""Tables of world-clip-deep's FALIP and SAV runs (``run.sh``), paired over the same episodes.

python benchmarks/results/deep/table.py > benchmarks/results/deep/summary.md
python benchmarks/results/deep/table.py --best-falip    # "ALPHA BLOCKS" chosen on validation
"""

import sys
from pathlib import Path

from focusshot.evaluation.metrics import mean_ci95, paired_difference
from focusshot.evaluation.results import read_results

HERE = Path(__file__).parent
ALPHAS, BLOCKS = ("0.2", "1", "3", "10", "30", "100"), (2, 4, 6, 12)


def rows(run: str) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in read_results(HERE / run):
        out.setdefault(r["method"], {})[r["episode"]] = r
    return out


def acc(run: dict, m: str) -> str:
    mean, half = mean_ci95([r["accuracy"] for r in run[m].values()])
    return f"{mean:.3f} ± {half:.3f}"


def diff(run: dict, m: str, base: str, field: str = "accuracy") -> str:
    eps = sorted(set(run[m]) & set(run[base]))
    res = paired_difference([run[m][e][field] for e in eps], [run[base][e][field] for e in eps])
    return f"{res.mean:+.3f} ± {res.half_width:.3f}"


def gain(run: dict, m: str) -> float:
    eps = sorted(run[m])
    return paired_difference(
        [run[m][e]["accuracy"] for e in eps], [run["zeroshot"][e]["accuracy"] for e in eps]
    ).mean


def mass(run: dict, m: str) -> str:
    vals = [r["cls_target_mass"] for r in run[m].values() if r.get("cls_target_mass") is not None]
    if not vals:
        return ""
    mean, half = mean_ci95(vals)
    return f"{mean:.3f} ± {half:.3f}"


def alias(a: str, k: int) -> str:
    return f"falip@a{a.replace('.', 'p')}k{k}"


def best_falip() -> tuple[str, int]:
    sweep = rows("falip_val_sweep")
    return max(((a, k) for a in ALPHAS for k in BLOCKS), key=lambda ak: gain(sweep, alias(*ak)))


if "--best-falip" in sys.argv:
    a, k = best_falip()
    print(a, k)
    sys.exit(0)

print("### zero-shot\n")
print("```\n" + (HERE / "zeroshot.txt").read_text().strip() + "\n```\n")

a, k = best_falip()
print(
    f"### FALIP, world:clutter test split, 5-way 1-shot, 100 episodes (chosen on val: alpha {a}, last {k})\n"
)
print("| method | accuracy ± 95% CI | vs zero-shot CLIP (paired) | [CLS] on target |")
print("|---|---|---|---|")
d, c, w = rows("falip_test_default"), rows("falip_test_chosen"), rows("falip_test_distractor")
lines = [
    ("zero-shot CLIP", d, "zeroshot"),
    ("FALIP, true box, paper's alpha 0.2, last 4 of 12 blocks", d, "falip"),
    ("FALIP, automatic box, alpha 0.2, last 4", d, "falip@auto"),
    (f"FALIP, true box, alpha {a}, last {k} (chosen on val)", c, "falip"),
    (f"FALIP-Tip, alpha {a}, last {k}", c, "falip_tip"),
    (f"FALIP, automatic box, alpha {a}, last {k}", c, "falip@auto"),
    ("FALIP, a distractor's box, alpha 0.2, last 4", w, "falip"),
    (f"FALIP, a distractor's box, alpha {a}, last {k}", w, "falip@chosen"),
    ("red circle around the target", d, "red_circle"),
    ("blur outside the target box", d, "blur_box"),
]
for label, run, m in lines:
    vs = "(baseline)" if m == "zeroshot" else diff(run, m, "zeroshot")
    print(f"| {label} | {acc(run, m)} | {vs} | {mass(run, m)} |")

print("\n### FALIP sweep on the validation split: paired gain over zero-shot CLIP\n")
sweep = rows("falip_val_sweep")
print("| alpha \\\\ biased blocks (of 12) | " + " | ".join(f"last {b}" for b in BLOCKS) + " |")
print("|---|" + "---|" * len(BLOCKS))
for al in ALPHAS:
    print(f"| {al} | " + " | ".join(diff(sweep, alias(al, b), "zeroshot") for b in BLOCKS) + " |")

print("\n### SAV, 5-way, 10 queries, 100 episodes (72 heads)\n")
cols = ["protonet", "logistic", "sav", "sav@random20", "sav@best2", "sav@random2", "sav@best6", "sav@random6",
        "sav@all72"]  # fmt: skip
names = [
    "protonet",
    "logistic",
    "SAV best 20",
    "random 20",
    "best 2",
    "random 2",
    "best 6",
    "random 6",
    "all 72",
]
pairs = [
    ("sav", "sav@random20"),
    ("sav@best6", "sav@random6"),
    ("sav", "protonet"),
    ("sav@all72", "protonet"),
]
head = [*names, "best20 - random20", "best6 - random6", "best20 - protonet", "all72 - protonet"]
print("| suite | K | " + " | ".join(head) + " |")
print("|---|---|" + "---|" * len(head))
for suite in ("clutter", "single"):
    for shots in (1, 5, 20):
        run = rows(f"sav_{suite}_5w{shots}s")
        cells = [acc(run, m) for m in cols] + [diff(run, x, y) for x, y in pairs]
        print(f"| world:{suite} | {shots} | " + " | ".join(cells) + " |")
