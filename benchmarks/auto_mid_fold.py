"""How far past its budget does one solver candidate of ``fit --method auto`` run?

Each iterative head alone (``metaoptnet``, ``lp_pp``, ``tip_adapter_f``, ``logistic``) is
cross-validated by :func:`focusshot.auto.choose_method` within a budget shorter than its first
fold, on a folder of labelled images (the features are computed first, outside the budget). A head
that checks the budget's deadline in its loop stops within one of its steps; one that does not
runs its first fold to the end. One JSON line per run: the budget, the seconds the candidate
spent (the report's ``spent_s``), the wall time of the call and why it stopped.

    PYTHONPATH=src python benchmarks/auto_mid_fold.py $DATA --budget 0.2 --repeats 3

(``$DATA``: the 6 x 14 folder ``benchmarks/results/auto_budget/summary.md`` says how to make.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from focusshot.auto import choose_method
from focusshot.backbones.registry import create_backbone
from focusshot.data.sources import from_folder
from focusshot.evaluation.cache import FeatureCache

HEADS = ("metaoptnet", "lp_pp", "tip_adapter_f", "logistic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="one sub-folder of images per class")
    ap.add_argument("--backbone", default="world-clip")
    ap.add_argument("--budget", type=float, default=0.2, help="seconds")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = create_backbone(args.backbone)
    support = from_folder(args.folder)
    cache = FeatureCache(tempfile.mkdtemp())
    choose_method(model, support, cache, budget_s=0.0, candidates=list(HEADS))  # the features, once
    for name in HEADS:
        for _ in range(args.repeats):
            t0 = time.monotonic()
            rep = choose_method(model, support, cache, budget_s=args.budget, candidates=[name])
            wall = time.monotonic() - t0
            row = {
                "method": name,
                "budget_s": args.budget,
                "spent_s": rep["budget"]["spent_s"],
                "wall_s": round(wall, 3),
                "why": rep["skipped"].get(name, "finished its folds"),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
