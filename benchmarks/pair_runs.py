"""Paired accuracy differences between methods of two runs on the same episodes.

Run by hand::

    python benchmarks/pair_runs.py RUN_A RUN_B --baseline metaoptnet --output paired_vs_init.md

Both runs must have drawn the same episodes (same data, N, K, Q and sampler seed: checked on
their ``run.json``); rows are paired by episode index. A method name that an earlier run already
has is suffixed with its run folder (``lora+fort [diag_5w1s_box]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from focusshot.evaluation.results import paired, read_results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (results.jsonl or results.jsonl.gz, and run.json)")
    ap.add_argument("--baseline", required=True, help="the method every other is compared with")
    ap.add_argument("--output", required=True, help="markdown table to write")
    args = ap.parse_args()
    rows, fingerprint = [], None
    for run in args.runs:
        cfg = json.loads((Path(run) / "run.json").read_text())["config"]
        fp = {k: cfg[k] for k in ("ways", "shots", "queries", "episodes", "seed", "data")}
        if fingerprint is not None and fp != fingerprint:
            raise SystemExit(f"{run}: different episodes ({fp} vs {fingerprint})")
        fingerprint = fp
        new = read_results(run)  # results.jsonl or results.jsonl.gz
        seen = {r["method"] for r in rows}
        for r in new:  # a method already taken from an earlier run is named after its run folder
            if r["method"] in seen:
                r["method"] = f"{r['method']} [{Path(run).name}]"
        rows += new
    methods = [args.baseline, *sorted({r["method"] for r in rows} - {args.baseline})]
    pairs = paired(rows, methods, "episode")
    lines = [
        "| method | vs | mean difference | 95% CI | method better | baseline better | episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        lines.append(
            f"| {p['method']} | {p['baseline']} | {p['mean_difference']:+.4f} | {p['ci95']:.4f} | "
            f"{p['method_better']:.2f} | {p['baseline_better']:.2f} | {p['episodes']} |"
        )
    text = "\n".join(lines) + f"\n\nruns: {', '.join(args.runs)}\n"
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
