"""A short world-dino pretraining that watches what the teacher learns, to choose a recipe cheaply.

Runs :class:`focusshot.training.pretrain_dino.DinoTrainer` with ``--set`` overrides of
:class:`~focusshot.training.pretrain_dino.DinoConfig` for ``--stop`` steps (the schedules still run
over the config's ``steps``), and every ``--every`` steps writes one JSON line with the teacher
backbone's

* 5-way 1-shot ProtoNet accuracy (cosine, 5 queries, 300 episodes) on 500 images of
  ``world:single`` and of ``world:clutter`` (novel classes; chance 0.2);
* ``same_object`` / ``same_background``: the centred cosines of ``world_dino_encodes.py`` (does the
  [CLS] feature follow the object or the background?);
* the step's loss, teacher entropy and batch-mean entropy.

``--dims WIDTH,DEPTH,HEADS`` swaps in a smaller ViT (same patch and image size) for fast
exploration. Nothing is saved but the log.

Run by hand, e.g.::

    python benchmarks/world_dino_pilot.py --set backgrounds=16 --set lr=1e-3 --stop 200 \\
        --output benchmarks/results/dino/pilots/bg16.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from world_dino_encodes import feature_cosines, scene_triples

from focusshot.backbones import world_dino
from focusshot.data.images import load_rgb
from focusshot.data.transforms import make_transform
from focusshot.data.world import open_world
from focusshot.training.pretrain_dino import DinoConfig, DinoTrainer
from focusshot.versions import versions


def probe_sets(images: int, seed: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """``suite -> (images (N, 3, 64, 64) normalised, labels (N,))`` for world:single and clutter."""
    transform = make_transform(world_dino.PREPROCESS)
    out = {}
    for suite in ("world:single", "world:clutter"):
        data = open_world(suite)
        pick = np.random.default_rng(seed).choice(len(data.paths), images, replace=False)
        x = torch.stack([transform(load_rgb(data.paths[i])) for i in pick])
        out[suite] = (x, np.array([data.labels[i] for i in pick]))
    return out


def protonet(features: torch.Tensor, labels: np.ndarray, episodes: int = 300, seed: int = 1) -> float:
    """Mean 5-way 1-shot, 5-query nearest-prototype accuracy (cosine) over random episodes."""
    f = F.normalize(features.float(), dim=-1).numpy()
    rng = np.random.default_rng(seed)
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= 6]
    accs = []
    for _ in range(episodes):
        picked = rng.choice(classes, 5, replace=False)
        protos, queries = [], []
        for k, c in enumerate(picked):
            idx = rng.permutation(np.flatnonzero(labels == c))
            protos.append(f[idx[0]])
            queries += [(f[j], k) for j in idx[1:6]]
        p = np.stack(protos)
        accs.append(np.mean([np.argmax(p @ q) == k for q, k in queries]))
    return round(float(np.mean(accs)), 4)


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a DinoConfig field (JSON value), repeatable")  # fmt: skip
    parser.add_argument("--dims", default="", help="WIDTH,DEPTH,HEADS of a smaller ViT")
    parser.add_argument("--stop", type=int, default=200, help="steps to run")
    parser.add_argument("--every", type=int, default=50, help="steps between probes")
    parser.add_argument("--images", type=int, default=500, help="probe images per suite")
    parser.add_argument("--output", required=True, help="JSON-lines log to write")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.replace("-", "_")] = _value(value)
    if args.dims:
        width, depth, heads = (int(v) for v in args.dims.split(","))
        world_dino.ARCHS["pilot"] = (width, depth, heads)
        overrides["arch"] = "pilot"
    cfg = DinoConfig(**overrides)  # type: ignore[arg-type]
    trainer = DinoTrainer(cfg)
    sets = probe_sets(args.images, cfg.seed)
    triples = scene_triples(100, 5)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with out.open("w") as log:
        log.write(json.dumps({"config": vars(args), "dino": overrides, "versions": versions()}) + "\n")
        row: dict[str, float] = {}
        for step in range(args.stop + 1):
            if step % args.every == 0:
                teacher = trainer.teacher.backbone.eval()
                with torch.no_grad():
                    probe = {k: protonet(teacher.forward_features(x), y) for k, (x, y) in sets.items()}
                probe.update(feature_cosines(teacher, triples))
                keep = ("loss", "teacher_entropy", "batch_entropy")
                line = {"step": step, **probe, **{k: round(row[k], 3) for k in keep if k in row}}
                line["seconds"] = round(time.time() - start, 1)
                log.write(json.dumps(line) + "\n")
                log.flush()
                print(json.dumps(line), flush=True)
            if step < args.stop:
                row = trainer.step()


if __name__ == "__main__":
    main()
