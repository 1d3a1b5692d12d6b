"""Do the relevance maps of ``focusshot explain`` point at what decides the class? Measured on FocusWorld.

Run by hand (a few minutes per method on two CPU cores)::

    python benchmarks/explain_world.py --output benchmarks/results/explain/world-clip.json
    python benchmarks/explain_world.py --methods lora,lora+fort \\
        --output benchmarks/results/explain/world-clip-lora.json
    python benchmarks/explain_world.py --backbone world-dino --methods protonet,logistic,sav \\
        --output benchmarks/results/explain/world-dino.json
    python benchmarks/results/explain/table.py > benchmarks/results/explain/summary.md

``world:clutter`` scenes hold one target object, whose class is the label, among distractors; its
per-pixel mask is known. On the same 5-way 5-shot episodes for every method (test split, sampler
seed 0, ``--queries`` queries per class), each method is fitted on the support set through
``focusshot.fit`` and its predictions on the queries are explained by
:func:`focusshot.evaluation.relevance.relevance_maps` (the predicted class). Three maps per query,
all from the same forward pass:

* ``relevance``: the method's map (gradient-weighted rollout, Chefer et al. 2021, through its head;
  SAV: its voting heads' attention);
* ``rollout``: plain attention rollout (Abnar and Zuidema 2020) of the model the method runs;
* ``cls_attention``: that model's last-layer [CLS] attention, heads averaged.

Two measurements per map (and a random patch order for the deletion test):

* **target mass**: the share of the map's mass on the target (patch weights = the share of each
  patch inside the mask), against the target's share of the patches (chance);
* **deletion** (Chefer et al., Sec. 5, "positive perturbation"): the patches are masked (set to the
  normalised image's zero, the dataset mean colour) most relevant first, at ``--fractions`` of the
  patches; the method's accuracy on the masked queries, and its mean over the fractions (an area
  under the curve: lower means the map found what the prediction needed).

Per episode, each figure is the mean over the queries; the output keeps every episode's figures
per method, and ``benchmarks/results/explain/table.py`` gives means with 95% CIs over episodes and
paired differences (``relevance`` minus each reference) with their CIs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import focusshot
from focusshot.api import _pick_split, default_cache_dir
from focusshot.attention.record import record
from focusshot.attention.relevance import cls_attention, plain_rollout
from focusshot.backbones.prefix import Prefix, compute_prefix
from focusshot.data.episodes import EpisodeSampler
from focusshot.data.labelled import LabelledImages
from focusshot.data.sources import open_source
from focusshot.evaluation.attention_metrics import patch_target_weights, target_masks, transform_masks
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.relevance import relevance_maps
from focusshot.graph_mode import inference

MAPS = ("relevance", "rollout", "cls_attention")


def _masked(
    images: torch.Tensor, order: torch.Tensor, fraction: float, grid: tuple[int, int]
) -> torch.Tensor:
    """``images (M, 3, S, S)`` with the first ``round(fraction * P)`` patches of each ``order (M, P)``
    set to zero (the normalised mean colour)."""
    rows, cols = grid
    m, _, size, _ = images.shape
    k = int(round(fraction * rows * cols))
    keep = torch.ones(m, rows * cols)
    keep.scatter_(1, order[:, :k], 0.0)
    cell = keep.view(m, 1, rows, cols).repeat_interleave(size // rows, 2).repeat_interleave(size // cols, 3)
    return images * torch.nn.functional.pad(
        cell, (0, size - cell.shape[3], 0, size - cell.shape[2]), value=1.0
    )


@inference
def _predict(clf: focusshot.Classifier, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    b = clf.backbone
    prefix = clf.prefix.resolve(b)
    out = [
        clf.fitted.logits(compute_prefix(b, prefix, images[i : i + batch]))
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).argmax(-1)


@torch.inference_mode()
def _frozen_references(b: focusshot.Backbone, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rollout and last-layer [CLS] attention of the frozen backbone (for SAV, whose map is no
    gradient rollout and so comes without references)."""
    with record(b, "probs") as rec:
        b.forward_features(x)
    probs = [rec.get("probs", i) for i in rec.layers]
    s, (rows, cols) = int(b.num_prefix_tokens), b.grid_size(b.preprocess.crop)
    return {
        "rollout": plain_rollout(probs, s, rows * cols),
        "cls_attention": cls_attention(probs[-1], s, rows * cols),
    }


def episode(
    clf: focusshot.Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    fractions: list[float],
    seed: int,
) -> dict[str, float]:
    """One episode's figures for one fitted method: queries ``x (M, 3, S, S)``, labels ``y (M,)``,
    patch target weights ``w (M, P)``."""
    b = clf.backbone
    rel = relevance_maps(b, clf.fitted, clf.prefix.resolve(b), x)
    maps = {"relevance": rel.maps, **(rel.references or _frozen_references(b, x))}
    out: dict[str, float] = {
        "accuracy": float((rel.target == y).float().mean()),
        "chance_mass": float(w.mean()),
    }
    for name, m in maps.items():
        out[f"mass/{name}"] = float(((m * w).sum(1) / m.sum(1).clamp_min(1e-12)).mean())
    g = torch.Generator().manual_seed(seed)
    orders = {name: m.argsort(dim=1, descending=True, stable=True) for name, m in maps.items()}
    orders["random"] = torch.stack([torch.randperm(w.shape[1], generator=g) for _ in range(len(x))])
    for name, order in orders.items():
        accs = [float((_predict(clf, _masked(x, order, f, rel.grid)) == y).float().mean()) for f in fractions]
        out[f"deletion/{name}"] = float(np.mean(accs))
        for f, a in zip(fractions, accs, strict=True):
            out[f"deletion/{name}@{f:g}"] = a
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="world-clip")
    ap.add_argument("--data", default="world:clutter")
    ap.add_argument("--methods", default="protonet,logistic,zeroshot,tip_adapter,sav")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--fractions", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    fractions = [float(v) for v in args.fractions.split(",")]
    torch.manual_seed(args.seed)
    backbone = focusshot.create_backbone(args.backbone).eval()
    pool = _pick_split(open_source(args.data), None, "test")
    images = FeatureCache(default_cache_dir()).get(backbone, pool.paths, Prefix.images().resolve(backbone))
    masks = target_masks(pool)
    if masks is None:
        raise SystemExit(f"{args.data}: no target masks")
    weights = patch_target_weights(
        transform_masks(masks, backbone.preprocess), backbone.grid_size(backbone.preprocess.crop)
    )
    sampler = EpisodeSampler(
        pool.labels, 5, args.shots, args.queries, args.episodes, args.seed, class_names=pool.class_names
    )
    rows: dict[str, list[dict[str, float]]] = {}
    started = time.time()
    for ep in sampler:
        support = LabelledImages(
            [pool.paths[i] for i in ep.support],
            list(ep.support_labels),
            [pool.class_names[c] for c in ep.classes],
            None if pool.boxes is None else [pool.boxes[i] for i in ep.support],
        )
        q = torch.tensor(ep.query)
        for method in args.methods.split(","):
            clf = focusshot.fit(support, backbone, method, seed=args.seed)
            got = episode(
                clf,
                images[q].clone(),
                torch.tensor(ep.query_labels),
                weights[q],
                fractions,
                args.seed + ep.index,
            )
            rows.setdefault(method, []).append(got)
        print(f"episode {ep.index}: {time.time() - started:.0f} s", file=sys.stderr)
    report = {
        "config": vars(args),
        "seed": args.seed,
        "versions": {
            "focusshot": focusshot.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "seconds": round(time.time() - started, 1),
        "episodes": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
