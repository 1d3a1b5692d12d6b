"""What a backbone's [CLS] feature encodes on FocusWorld scenes: the object or the background.

For N single-object scenes of novel classes (world:single's sizes), three renders each:

* ``A``: the scene;
* ``B``: the same object (class, place, pose) on another background;
* ``C``: another object, of another class, on A's background.

Features are the backbone's pooled image features, centred on the mean of all ``3N`` and
L2-normalised. ``same_object`` is the mean cosine of (A, B), ``same_background`` of (A, C). A
feature of the object gives ``same_object`` near 1 and ``same_background`` near 0; a feature of the
background the reverse. This is the check that found world-dino's first pretraining (a unique
background per scene) had learned the background: DINO keeps what two crops of a scene share and
what tells scenes apart, and there a scene's background did both better than its object.

Run by hand::

    python benchmarks/world_dino_encodes.py --output benchmarks/results/dino/encodes.md
    python benchmarks/world_dino_encodes.py --backbones PATH/to/checkpoint.safetensors world-clip
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from focusshot import create_backbone
from focusshot.backbones.base import Backbone
from focusshot.data.transforms import make_transform
from focusshot.data.world import novel_classes, render_scene
from focusshot.data.world.draw import SceneSpec
from focusshot.data.world.suites import sample_scene
from focusshot.versions import versions


def scene_triples(n: int, seed: int) -> tuple[list[SceneSpec], list[SceneSpec], list[SceneSpec]]:
    """``(A, B, C)``: scenes, their objects on other backgrounds, other objects on their backgrounds."""
    rng = np.random.default_rng(seed)
    pool = novel_classes()
    a, b, c = [], [], []
    for _ in range(n):
        s = sample_scene(rng, pool, 64, "world:single")
        t = sample_scene(rng, pool, 64, "world:single")
        while t.label == s.label:
            t = sample_scene(rng, pool, 64, "world:single")
        a.append(s)
        b.append(replace(s, background_seed=int(rng.integers(0, 2**31 - 1))))
        c.append(replace(t, background_seed=s.background_seed))
    return a, b, c


def encodes(source: str, triples: tuple[list[SceneSpec], ...], seed: int) -> dict[str, float]:
    """``same_object`` and ``same_background`` (centred cosines) of ``source``'s pooled features."""
    return feature_cosines(create_backbone(source, seed=seed).eval(), triples)


def feature_cosines(model: Backbone, triples: tuple[list[SceneSpec], ...]) -> dict[str, float]:
    """``same_object`` and ``same_background`` of ``model``'s pooled features (see the module doc)."""
    transform = make_transform(model.preprocess)
    feats = []
    with torch.no_grad():
        for specs in triples:
            x = torch.stack([transform(render_scene(s)[0]) for s in specs])
            feats.append(F.normalize(model.forward_features(x).float(), dim=-1))
    mean = torch.cat(feats).mean(0)
    fa, fb, fc = (F.normalize(f - mean, dim=-1) for f in feats)
    return {
        "same_object": round(float((fa * fb).sum(1).mean()), 3),
        "same_background": round(float((fa * fc).sum(1).mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["world-dino", "world-clip", "world-clip-deep"])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--output", default="", help="markdown file to write (and .json beside it)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    triples = scene_triples(args.scenes, args.seed)
    rows = {b: encodes(b, triples, args.seed) for b in args.backbones}
    lines = [
        f"What the [CLS] feature encodes ({args.scenes} world:single scenes, novel classes, seed "
        f"{args.seed}; `python benchmarks/world_dino_encodes.py`): centred cosine of a scene with",
        "",
        "| backbone | its object on another background | another object on its background |",
        "|---|---|---|",
        *(f"| {b} | {r['same_object']:.3f} | {r['same_background']:.3f} |" for b, r in rows.items()),
    ]
    print("\n".join(lines))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        record = {"config": vars(args), "versions": versions(), "rows": rows}
        out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
