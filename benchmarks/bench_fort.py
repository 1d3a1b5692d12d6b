"""What FORT costs on top of its recipe: prompt extraction and a training step, world-clip and ViT-B/16.

Run by hand (CPU; results are ratios measured in one run)::

    python benchmarks/bench_fort.py --output benchmarks/results/fort/timing.json

For each backbone (world-clip; a random ViT-B/16 at 224 px, DINO layout), a 5-way support set
of ``--shots`` images per class: seconds for Grad-Rollout position prompts over the support set
(one forward + backward with every layer recorded), and seconds per training step of
``lora`` vs ``lora+fort`` (batch 5 = N-way; the step time is the difference of a 1-step and a
``1 + --steps``-step fit by the training loop's own clock, divided by ``--steps``, so the fixed
costs cancel). One discarded warm-up round first (the first passes are several times slower);
then the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import focusshot
from focusshot.attention.grad_rollout import RolloutSettings, grad_rollout_importance, tail_layers
from focusshot.heads import create_head
from focusshot.heads.trainable import LinearHead, linear_form
from focusshot.methods.base import FitContext, create_method


def _fit_seconds(backbone, name: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds the training loop itself took (its own clock: prompts and head init excluded)."""
    m = create_method(name, {"epochs": 0, "steps": steps})
    return float(m.fit(x, y, FitContext(backbone, 5, seed=0)).info()["train"]["seconds"])


def _prompt_seconds(backbone, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        feats = backbone.forward_features(x)
    w, b, norm = linear_form(create_head("metaoptnet").fit(feats, y, 5))
    head = LinearHead(w, b, normalize=norm, temperature=20.0)
    grid = backbone.grid_size(backbone.preprocess.crop)
    t0 = time.perf_counter()
    grad_rollout_importance(
        backbone,
        backbone.forward_features,
        lambda f: head(f) * head.temperature,
        x,
        y,
        tail_layers(backbone, None),
        backbone.num_prefix_tokens,
        grid[0] * grid[1],
        RolloutSettings(),
    )
    return time.perf_counter() - t0


def measure(backbone, shots: int, steps: int, repeats: int) -> dict[str, float]:
    crop = backbone.preprocess.crop
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5 * shots, 3, crop, crop, generator=g)
    y = torch.arange(5).repeat(shots)
    out: dict[str, list[float]] = {"prompts_s": [], "lora_step_s": [], "lora+fort_step_s": []}
    _prompt_seconds(backbone, x, y)  # warm-up: the first passes allocate and pick kernels (several x slower)
    for name in ("lora", "lora+fort"):
        _fit_seconds(backbone, name, x, y, 1 + steps)
    for _ in range(repeats):
        out["prompts_s"].append(_prompt_seconds(backbone, x, y))
        for name in ("lora", "lora+fort"):
            one = _fit_seconds(backbone, name, x, y, 1)
            more = _fit_seconds(backbone, name, x, y, 1 + steps)
            out[f"{name}_step_s"].append((more - one) / steps)
    res = {k: round(statistics.median(v), 4) for k, v in out.items()}
    res["fort_step_over_lora_step"] = round(res["lora+fort_step_s"] / res["lora_step_s"], 3)
    res["prompts_over_lora_step"] = round(res["prompts_s"] / res["lora_step_s"], 3)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    report = {
        "config": vars(args),
        "versions": {
            "focusshot": focusshot.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "results": {},
    }
    for name, kwargs in (("world-clip", {}), ("dino-vit-b16", {"pretrained": False, "seed": 0})):
        backbone = focusshot.create_backbone(name, **kwargs).eval()
        report["results"][name] = measure(backbone, args.shots, args.steps, args.repeats)
        print(name, report["results"][name])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
