"""Rerun the first episodes of a stored episodic run with today's code and compare row by row.

A refactor that does not touch a method's maths must leave its results bit-identical. This reruns
``--episodes N`` of a stored run folder (same backbone, ways, shots, queries, seed and method
options, read from its ``run.json``) into a scratch folder and compares every row's ``correct``
string, accuracy, NLL, Brier and per-query confidences with the stored ones, exactly.

    python benchmarks/rerun_rows.py benchmarks/results/dino/world-clip_frozen_single_5w1s \\
        --data world:single --episodes 10 --methods protonet --output rerun.json

The data spec is not in ``run.json``, so it is given here; each row's episode seed is compared too.
The comparison is written to ``--output`` (JSON, with seed, config and versions).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

import focusshot
from focusshot.evaluation.results import read_results
from focusshot.versions import versions

FIELDS = ("seed", "correct", "accuracy", "nll", "brier", "confidence")


def _rows(folder: Path, methods: list[str], episodes: int) -> dict[tuple[str, int], dict[str, Any]]:
    return {
        (r["method"], int(r["episode"])): r
        for r in read_results(folder)
        if r.get("method") in methods and int(r.get("episode", -1)) < episodes
    }


def _gap(a: Any, b: Any) -> float | None:
    """The largest absolute difference of two numbers or equal-length number lists (else None)."""
    a_list, b_list = (a, b) if isinstance(a, list) else ([a], [b])
    if not isinstance(b_list, list) or len(a_list) != len(b_list):
        return None
    try:
        return max(abs(float(x) - float(y)) for x, y in zip(a_list, b_list, strict=True))
    except (TypeError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stored", type=Path, help="a stored episodic run folder")
    ap.add_argument("--data", required=True, help="the data spec the stored run used")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--methods", required=True, help="comma-separated methods of the stored run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = json.loads((args.stored / "run.json").read_text())
    cfg = run["config"]
    methods = args.methods.split(",")
    options = {m: cfg["method_options"][m] for m in methods if m in cfg["method_options"]}
    with tempfile.TemporaryDirectory() as tmp:
        out = focusshot.evaluate(
            run["backbone"]["name"],
            args.data,
            methods,
            output=Path(tmp) / "run",
            ways=cfg["ways"],
            shots=cfg["shots"],
            queries=cfg["queries"],
            episodes=args.episodes,
            seed=cfg["seed"],
            method_options=options,
            figures=False,
            report=False,
        )
        fresh = _rows(out.directory, methods, args.episodes)
    stored = _rows(args.stored, methods, args.episodes)
    diffs = [
        {"method": m, "episode": e, "field": f, "max_abs": _gap(fresh.get((m, e), {}).get(f), row.get(f))}
        for (m, e), row in sorted(stored.items())
        for f in FIELDS
        if fresh.get((m, e), {}).get(f) != row.get(f)
    ]
    report = {
        "stored": str(args.stored),
        "data": args.data,
        "episodes": args.episodes,
        "methods": methods,
        "seed": cfg["seed"],
        "config": {k: cfg[k] for k in ("ways", "shots", "queries")},
        "rows_compared": len(stored),
        "rows_rerun": len(fresh),
        "identical": not diffs and len(fresh) == len(stored),
        "differences": diffs[:50],
        "max_abs_by_method_field": {
            f"{m}.{f}": max((d["max_abs"] or 0.0) for d in diffs if (d["method"], d["field"]) == (m, f))
            for m, f in sorted({(d["method"], d["field"]) for d in diffs})
        },
        "threads": args.threads,
        "versions": versions(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    verdict = "identical" if report["identical"] else "DIFFERENT"
    print(f"{len(stored)} rows compared, {len(diffs)} fields differ: {verdict}")


if __name__ == "__main__":
    main()
