"""SAFE's tables: the CLIP adaptation methods on FocusWorld under the split protocol, paired.

Run from the checkout root after run.sh::

    python benchmarks/results/safe/table.py > benchmarks/results/safe/summary.md

The SAFE page (docs/methods/safe.md) links this summary rather than copying its tables.

Per suite and test set: accuracy (mean ± std over the split seeds) per K, ECE at the largest K;
then paired differences over test images x seeds (95% CI) of every method against zero-shot CLIP,
and SAFE against both of its ends (beta = 0: the tuned pool alone; zero-shot: the frozen pool).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from focusshot.evaluation.results import paired_split, read_results, results_file

HERE = Path(__file__).parent
SUITES = ("single", "clutter")
ORDER = ("zeroshot", "logistic", "lp_pp", "tip_adapter", "tip_adapter_f", "coop", "safe", "safe_a")
BETA = {
    "safe@b0": "SAFE, beta = 0 (tuned pool alone)",
    "safe": "SAFE, beta = 0.5",
    "safe@b1": "SAFE, beta = 1",
}


def _rows(suite: str) -> list[dict]:
    if not results_file(HERE / suite):
        return []
    return read_results(HERE / suite)


def _acc(rows: list[dict], method: str, k: int, test: str, key: str = "accuracy") -> str:
    vals = [
        r[key] for r in rows if r["method"] == method and r["shots"] == k and r.get("test", "test") == test
    ]
    if not vals:
        return ""
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}" if key == "accuracy" else f"{statistics.mean(vals):.3f}"


def _pair(rows: list[dict], a: str, b: str, k: int, test: str) -> str:
    sub = [r for r in rows if r["shots"] == k and r.get("test", "test") == test]
    res = [p for p in paired_split(sub, [b, a]) if p["method"] == a]
    if not res:
        return ""
    p = res[0]
    star = "*" if p["significant"] else ""
    return f"{p['mean_difference']:+.3f} ± {p['ci95']:.3f}{star}"


def tables(suite: str) -> str:
    rows = _rows(suite)
    if not rows:
        return ""
    shots = sorted({r["shots"] for r in rows})
    tests = sorted({r.get("test", "test") for r in rows}, key=lambda t: t != "test")
    seeds = sorted({r["split_seed"] for r in rows})
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]
    out = []
    for test in tests:
        where = "its own test split" if test == "test" else f"`{test}` (distribution shift)"
        out.append(f"**world-clip, trained on `world:{suite}`, tested on {where}** (seeds {seeds})\n")
        head = "| method | " + " | ".join(f"K={k}" for k in shots) + f" | ECE K={shots[-1]} |"
        out += [head, "|---" * (len(shots) + 2) + "|"]
        for m in methods:
            cells = [_acc(rows, m, k, test) for k in shots]
            out.append(f"| {m} | " + " | ".join(cells) + f" | {_acc(rows, m, shots[-1], test, 'ece')} |")
        out.append("")
        out.append(
            f"Paired difference against zero-shot CLIP (test images x {len(seeds)} seeds; "
            "* = CI excludes 0):\n"
        )
        out += ["| method | " + " | ".join(f"K={k}" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
        for m in methods[1:]:
            out.append(f"| {m} | " + " | ".join(_pair(rows, m, "zeroshot", k, test) for k in shots) + " |")
        out.append("")
        if any(r["method"] == "safe@b0" for r in rows):
            out.append("SAFE's beta and its two ends (accuracy; paired SAFE minus each end):\n")
            out += ["| | " + " | ".join(f"K={k}" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
            for m, label in BETA.items():
                out.append(f"| {label} | " + " | ".join(_acc(rows, m, k, test) for k in shots) + " |")
            out.append(
                "| zero-shot (frozen pool only) | "
                + " | ".join(_acc(rows, "zeroshot", k, test) for k in shots)
                + " |"
            )
            out.append(
                "| SAFE - tuned pool alone | "
                + " | ".join(_pair(rows, "safe", "safe@b0", k, test) for k in shots)
                + " |"
            )
            out.append(
                "| SAFE - zero-shot | "
                + " | ".join(_pair(rows, "safe", "zeroshot", k, test) for k in shots)
                + " |"
            )
            out.append(
                "| SAFE-A - Tip-Adapter-F | "
                + " | ".join(_pair(rows, "safe_a", "tip_adapter_f", k, test) for k in shots)
                + " |"
            )
            out.append("")
    return "\n".join(out)


def main() -> None:
    print("\n".join(t for t in (tables(s) for s in SUITES) if t))


if __name__ == "__main__":
    main()
