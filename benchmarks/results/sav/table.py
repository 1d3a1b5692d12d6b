"""The SAV table of the README from the runs of run.sh: accuracy and paired differences.

python benchmarks/results/sav/table.py > benchmarks/results/sav/summary.md
"""

from pathlib import Path

from focusshot.evaluation.metrics import mean_ci95, paired_difference
from focusshot.evaluation.results import read_results

HERE = Path(__file__).parent


def acc(suite: str, k: int, cfg: str, method: str) -> dict[int, float]:
    rows = read_results(HERE / f"{suite}_5w{k}s_{cfg}")
    return {r["episode"]: r["accuracy"] for r in rows if r["method"] == method}


def diff(a: dict[int, float], b: dict[int, float]) -> str:
    eps = sorted(set(a) & set(b))
    res = paired_difference([a[e] for e in eps], [b[e] for e in eps])
    return f"{res.mean:+.3f} ± {res.half_width:.3f}"


print(
    "| suite | K | protonet | logistic | SAV best 3 | random 3 | SAV best 6 | random 6 | all 18 heads |"
    " best3 - random3 | best6 - random6 | best6 - protonet |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for suite in ("clutter", "single"):
    for k in (1, 5, 20):
        cells = []
        for cfg, m in (
            ("best3", "protonet"),
            ("best3", "logistic"),
            ("best3", "sav"),
            ("random3", "sav"),
            ("best6", "sav"),
            ("random6", "sav"),
            ("all18", "sav"),
        ):
            mean, half = mean_ci95(list(acc(suite, k, cfg, m).values()))
            cells.append(f"{mean:.3f} ± {half:.3f}")
        cells.append(diff(acc(suite, k, "best3", "sav"), acc(suite, k, "random3", "sav")))
        cells.append(diff(acc(suite, k, "best6", "sav"), acc(suite, k, "random6", "sav")))
        cells.append(diff(acc(suite, k, "best6", "sav"), acc(suite, k, "best6", "protonet")))
        print(f"| world:{suite} | {k} | " + " | ".join(cells) + " |")
