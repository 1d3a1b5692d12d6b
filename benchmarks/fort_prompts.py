"""Where do FORT's position prompts land? Prompt mass on the target, per rollout variant and sign rule.

Run by hand (no training: the prompts depend only on the frozen backbone and the solver head)::

    python benchmarks/fort_prompts.py --output benchmarks/results/fort/prompts.json

On the support sets of the same episodes ``focusshot evaluate`` draws (world-clip, world:clutter
test split, 5-way, sampler seed 0), for each setting: the share of the prompt mass (top-P patches,
importance-weighted) inside the target mask, per support image, averaged per episode; chance is the
target's share of the patches. Settings: Grad-Rollout ``code`` / ``paper`` variants with the
``aligned`` and ``svd`` PC-sign rules, the code variant without the gradient term (``lamb = 0``:
attention rollout only), the gradient term alone, and the top-P of the frozen last layer's [CLS]
attention. Paired differences (aligned - svd) with 95% CIs over episodes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

import focusshot
from focusshot.api import _pick_split, default_cache_dir
from focusshot.attention.grad_rollout import (
    RolloutSettings,
    first_component,
    fused_rollout,
    position_prompts,
    prompt_count,
    tail_layers,
)
from focusshot.attention.record import record
from focusshot.backbones.prefix import Prefix
from focusshot.data.episodes import EpisodeSampler
from focusshot.data.sources import open_source
from focusshot.evaluation.attention_metrics import patch_target_weights, target_masks, transform_masks
from focusshot.evaluation.cache import FeatureCache
from focusshot.heads import create_head
from focusshot.heads.trainable import LinearHead, linear_form


def _mass(prompts: torch.Tensor, weights: torch.Tensor) -> float:
    q = prompts.float()
    return float(((q * weights).sum(1) / q.sum(1).clamp_min(1e-12)).mean())


def _ci(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    half = 1.96 * float(t.std(unbiased=True)) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return float(t.mean()), half


def episode_prompts(backbone, x: torch.Tensor, y: torch.Tensor, ways: int, temperature: float) -> dict:
    """Every setting's prompts ``(S, P)`` for one support set."""
    with torch.no_grad():
        feats = backbone.forward_features(x)
    w, b, norm = linear_form(create_head("metaoptnet").fit(feats, y, ways))
    head = LinearHead(w, b, normalize=norm, temperature=temperature)
    grid = backbone.grid_size(backbone.preprocess.crop)
    s, p = backbone.num_prefix_tokens, grid[0] * grid[1]
    top = prompt_count(grid)
    layers = tail_layers(backbone, None)
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        with record(backbone, "probs", "block_in", layers=layers, grad=True) as rec:
            score = head(backbone.forward_features(xg)) * head.temperature
            chosen = score.gather(1, y[:, None]).sum() / len(x)
            block_in = rec.get("block_in", layers[-1])
            (g,) = torch.autograd.grad(chosen, block_in)
            probs = [rec.get("probs", i).detach() for i in layers]
    g = g.detach()[:, s : s + p]
    ref = (g * block_in.detach()[:, s : s + p]).sum(-1)
    out = {}
    for sign in ("aligned", "svd"):
        term = first_component(g, sign, ref)
        for variant in ("code", "paper"):
            st = RolloutSettings(variant, 1.0, sign)
            imp = fused_rollout(probs, term, s, st.head_fusion, st.row_keep, st.lamb)
            out[f"{variant}/{sign}"] = position_prompts(imp, top)
        out[f"gradient only/{sign}"] = position_prompts(term, top)
    zero = torch.zeros(len(x), p)
    out["code, lamb=0 (attention only)"] = position_prompts(fused_rollout(probs, zero, s, "min", 0.1), top)
    cls_row = probs[-1][:, :, 0, s : s + p].mean(1)
    out["last-layer [CLS] attention"] = position_prompts(cls_row, top)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="world-clip")
    ap.add_argument("--data", default="world:clutter")
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=20.0, help="head temperature (lora/ssf: 20)")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    backbone = focusshot.create_backbone(args.backbone).eval()
    pool = _pick_split(open_source(args.data), None, "test")
    images = FeatureCache(default_cache_dir()).get(backbone, pool.paths, Prefix.images().resolve(backbone))
    masks = target_masks(pool)
    if masks is None:
        raise SystemExit(f"{args.data}: no target masks")
    weights = patch_target_weights(
        transform_masks(masks, backbone.preprocess), backbone.grid_size(backbone.preprocess.crop)
    )
    report: dict = {
        "config": vars(args),
        "versions": {
            "focusshot": focusshot.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "results": {},
    }
    for k in [int(v) for v in args.shots.split(",")]:
        sampler = EpisodeSampler(pool.labels, 5, k, 15, args.episodes, 0, class_names=pool.class_names)
        per: dict[str, list[float]] = {}
        chance: list[float] = []
        for ep in sampler:
            sup = torch.tensor(ep.support)
            got = episode_prompts(
                backbone, images[sup], torch.tensor(ep.support_labels), ep.ways, args.temperature
            )
            for name, q in got.items():
                per.setdefault(name, []).append(_mass(q, weights[sup]))
            chance.append(float(weights[sup].mean()))
        res = {name: dict(zip(("mean", "ci95"), _ci(v), strict=True)) for name, v in per.items()}
        res["chance (target area)"] = dict(zip(("mean", "ci95"), _ci(chance), strict=True))
        for variant in ("code", "paper", "gradient only"):
            d = [a - b for a, b in zip(per[f"{variant}/aligned"], per[f"{variant}/svd"], strict=True)]
            res[f"{variant}: aligned - svd"] = dict(zip(("mean", "ci95"), _ci(d), strict=True))
        report["results"][f"5w{k}s"] = res
        print(f"5-way {k}-shot", file=sys.stderr)
        for name, r in res.items():
            print(f"  {name:40s} {r['mean']:+.4f} ± {r['ci95']:.4f}", file=sys.stderr)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
