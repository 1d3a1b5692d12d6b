"""APT's tables: accuracy and calibration before and after temperature scaling, MC dropout on/off.

Run from the checkout root after run.sh::

    python benchmarks/results/apt/table.py > benchmarks/results/apt/summary.md

The APT page (docs/methods/apt.md) links this summary rather than copying its tables.

Per suite: accuracy, ECE and ECE after temperature scaling (mean ± std over the split seeds) per
K; then APT with MC dropout against the same trained APT predicting deterministically: paired
accuracy over test images x seeds, and the ECE difference per run (mean, and how many of the runs
it lowered ECE in).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from focusshot.evaluation.results import paired_split, read_results, results_file

HERE = Path(__file__).parent
SUITES = ("fine", "clutter")
ORDER = ("zeroshot", "coop", "tip_adapter_f", "apt", "apt@nomc", "apt@static", "apt@lr01")
LABEL = {
    "apt": "apt (MC dropout, 20 passes)",
    "apt@nomc": "apt (one deterministic pass)",
    "apt@static": "apt without cross-attention (MC)",
}


def _rows(suite: str) -> list[dict]:
    """The suite's rows, plus CoOp's from ``<suite>_coop`` (run separately on clutter)."""
    rows = []
    for folder in (HERE / suite, HERE / f"{suite}_coop"):
        if results_file(folder):
            new = read_results(folder)
            rows += [r for r in new if folder.name == suite or r["method"] == "coop"]
    return rows


def _cell(rows: list[dict], m: str, k: int, key: str) -> str:
    vals = [r[key] for r in rows if r["method"] == m and r["shots"] == k and key in r]
    if not vals:
        return ""
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def tables(suite: str) -> str:
    rows = [r for r in _rows(suite) if r.get("test", "test") == "test"]
    if not rows:
        return ""
    shots = sorted({r["shots"] for r in rows})
    seeds = sorted({r["split_seed"] for r in rows})
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]
    out = [
        f"**world-clip on `world:{suite}`** (split protocol, seeds {seeds}; "
        "ECE over the whole test set, 15 bins)\n"
    ]
    for key, title in (("accuracy", "accuracy"), ("ece", "ECE"), ("ece_ts", "ECE after temperature scaling")):
        out += [
            f"{title}:\n",
            "| method | " + " | ".join(f"K={k}" for k in shots) + " |",
            "|---" * (len(shots) + 1) + "|",
        ]
        out += [
            f"| {LABEL.get(m, m)} | " + " | ".join(_cell(rows, m, k, key) for k in shots) + " |"
            for m in methods
        ]
        out.append("")
    if {"apt", "apt@nomc"} <= set(methods):
        out += ["MC dropout (apt) minus the same APT predicting in one pass (apt@nomc):\n"]
        out += ["| | " + " | ".join(f"K={k}" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
        acc, dece, dts = [], [], []
        for k in shots:
            sub = [r for r in rows if r["shots"] == k]
            p = [x for x in paired_split(sub, ["apt@nomc", "apt"]) if x["method"] == "apt"]
            acc.append(f"{p[0]['mean_difference']:+.3f} ± {p[0]['ci95']:.3f}" if p else "")
            for key, dest in (("ece", dece), ("ece_ts", dts)):
                a = {r["split_seed"]: r.get(key) for r in sub if r["method"] == "apt"}
                b = {r["split_seed"]: r.get(key) for r in sub if r["method"] == "apt@nomc"}
                d = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]
                lower = sum(x < 0 for x in d)
                dest.append(f"{statistics.mean(d):+.3f} (lower in {lower}/{len(d)})" if d else "")
        out.append("| accuracy (paired over test images x seeds) | " + " | ".join(acc) + " |")
        out.append("| ECE difference per run | " + " | ".join(dece) + " |")
        out.append("| ECE difference after temperature scaling | " + " | ".join(dts) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    print("\n".join(t for t in (tables(s) for s in SUITES) if t))


if __name__ == "__main__":
    main()
