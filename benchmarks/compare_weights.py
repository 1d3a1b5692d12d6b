"""Compare two safetensors weight files tensor by tensor: are they the same, and if not, how far apart.

For a rerun of a pretraining command (``focusshot world pretrain ...``) against the shipped file:
the same tensors on the machine that made them; on another CPU, float rounding differs (other
GEMM kernels), so this reports how far a rerun drifts instead of only "equal" / "not equal".

Run by hand::

    python benchmarks/compare_weights.py src/focusshot/assets/world_dino.safetensors RERUN.safetensors \\
        --output benchmarks/results/dino/rerun.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, object]:
    """Per-file summary: names on one side only, how many tensors are equal, the largest differences."""
    common = sorted(set(a) & set(b))
    equal = [k for k in common if a[k].shape == b[k].shape and torch.equal(a[k], b[k])]
    worst: list[dict[str, object]] = []
    for k in common:
        if k in equal or a[k].shape != b[k].shape:
            continue
        x, y = a[k].double(), b[k].double()
        diff = (x - y).abs()
        worst.append({
            "tensor": k,
            "max_abs": float(diff.max()),
            "relative_l2": float(diff.norm() / x.norm().clamp_min(1e-12)),
            "elements_differing": int((diff > 0).sum()),
            "elements": x.numel(),
        })  # fmt: skip
    worst.sort(key=lambda r: -float(r["relative_l2"]))  # type: ignore[arg-type]
    return {
        "tensors": len(common),
        "equal": len(equal),
        "only_in_first": sorted(set(a) - set(b)),
        "only_in_second": sorted(set(b) - set(a)),
        "shape_mismatch": [k for k in common if a[k].shape != b[k].shape],
        "largest_differences": worst[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--output", default="", help="JSON file to write")
    args = parser.parse_args()
    files = [Path(args.first), Path(args.second)]
    result = compare(*(load_file(str(p)) for p in files))
    result["sha256"] = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
