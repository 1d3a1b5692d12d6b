"""FORT's premise, measured: where the frozen last-layer [CLS] attention of a backbone goes on
FocusWorld clutter scenes (a target among distractors), for world-dino against world-clip(-deep).

FORT (Wang et al., NeurIPS 2023) starts from a self-supervised ViT whose attention is "spread over
every salient entity" and teaches it to focus on the class object. Per backbone, over the same
images, this writes the mean of:

* ``cls_target_mass``: share of [CLS]->patch attention (heads averaged, last layer) on the target's
  mask; ``target_area``: the target's share of patches (chance);
* ``cls_distractor_mass``: the share on the distractors' boxes (union; patches weighted by the
  covered fraction), and ``distractor_area`` (their chance);
* ``patches_95``: patches holding 95% of the mass;
* ``rollout_target_mass`` / ``rollout_distractor_mass``: the same for attention rollout over all
  layers (Abnar & Zuidema, 2020: ``(A + I) / 2`` per layer, heads averaged, [CLS] row);

and a figure of a few scenes side by side (input, each backbone's [CLS] map and rollout map).

Run by hand::

    python benchmarks/world_dino_premise.py --output benchmarks/results/dino/premise
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from focusshot import create_backbone, record
from focusshot.attention.grad_rollout import box_coverage
from focusshot.data.images import load_rgb
from focusshot.data.transforms import make_transform
from focusshot.data.world import open_world
from focusshot.evaluation.attention_metrics import patch_target_weights, target_masks, transform_masks
from focusshot.report.attention_maps import heat_rgb
from focusshot.versions import versions


def _distractor_boxes(data) -> list[list[tuple[float, float, float, float]]]:
    """Per image, its distractors' boxes in [0, 1] image coordinates (from the world's manifest)."""
    root = Path(data.paths[0]).parents[2]
    rows = {}
    for line in (root / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        size = float(row["scene"]["image_size"])
        rows[str(root / row["path"])] = [
            tuple(v / size for v in d["box"]) for d in row.get("distractors", [])
        ]
    return [rows[p] for p in data.paths]


def _cover(boxes: list[tuple[float, float, float, float]], grid: tuple[int, int]) -> torch.Tensor:
    """``(P,)`` share of each patch inside the union of ``boxes`` (max over boxes; 0 without any)."""
    if not boxes:
        return torch.zeros(grid[0] * grid[1])
    return box_coverage(torch.tensor(boxes, dtype=torch.float32), grid).amax(dim=0)


def _rollout(probs: list[torch.Tensor], prefix: int) -> torch.Tensor:
    """Attention rollout's [CLS]->patch row ``(B, P)`` from per-layer probabilities ``(B, H, N, N)``."""
    joint = None
    for p in probs:
        a = p.float().mean(dim=1)
        a = 0.5 * (a + torch.eye(a.shape[-1]))
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    row = joint[:, 0, prefix:]
    return row / row.sum(dim=1, keepdim=True)


def measure(name: str, data, masks, distractors, batch: int = 64) -> tuple[dict, dict]:
    model = create_backbone(name).eval()
    tf = make_transform(model.preprocess)
    grid = model.grid_size((model.preprocess.crop, model.preprocess.crop))
    prefix = int(model.num_prefix_tokens)
    sums: dict[str, float] = {}
    maps: dict[str, torch.Tensor] = {}
    for s in range(0, len(data.paths), batch):
        paths = data.paths[s : s + batch]
        x = torch.stack([tf(load_rgb(p)) for p in paths])
        with torch.no_grad(), record(model, "probs") as rec:
            model.forward_features(x)
        layers = [rec.get("probs", i) for i in rec.layers]  # every layer, in forward order
        last = layers[-1].float().mean(dim=1)[:, 0, prefix:]
        last = last / last.sum(dim=1, keepdim=True)
        roll = _rollout(layers, prefix)
        target = patch_target_weights(transform_masks(list(masks[s : s + batch]), model.preprocess), grid)
        distract = torch.stack([_cover(b, grid) for b in distractors[s : s + batch]])
        distract = (distract - target).clamp_min(0.0)  # overlap counts as the target's
        sorted_attn = last.sort(dim=1, descending=True).values.cumsum(dim=1)
        values = {
            "cls_target_mass": (last * target).sum(1),
            "cls_distractor_mass": (last * distract).sum(1),
            "rollout_target_mass": (roll * target).sum(1),
            "rollout_distractor_mass": (roll * distract).sum(1),
            "patches_95": ((sorted_attn < 0.95 - 1e-6).sum(1) + 1).float(),
            "target_area": target.mean(1),
            "distractor_area": distract.mean(1),
        }
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
        if s == 0:
            maps = {"cls": last[:8].reshape(-1, *grid), "rollout": roll[:8].reshape(-1, *grid)}
    n = len(data.paths)
    out = {k: v / n for k, v in sums.items()}
    out["images"] = n
    out["weights_sha256"] = model.identity.weights_sha256
    return out, maps


def figure(data, maps: dict[str, dict], path: Path, count: int = 6, side: int = 128) -> None:
    """Rows: scenes; columns: the input, then per backbone its [CLS] map and its rollout map."""
    names = list(maps)
    cols = 1 + 2 * len(names)
    sheet = Image.new("RGB", (cols * (side + 4), count * (side + 4) + 16), "white")
    draw = ImageDraw.Draw(sheet)
    titles = ["input"] + [f"{n} {k}" for n in names for k in ("[CLS]", "rollout")]
    for c, t in enumerate(titles):
        draw.text((c * (side + 4) + 2, 2), t, fill="black")
    for r in range(count):
        y = 16 + r * (side + 4)
        sheet.paste(load_rgb(data.paths[r]).resize((side, side), Image.NEAREST), (0, y))
        c = 1
        for n in names:
            for kind in ("cls", "rollout"):
                m = maps[n][kind][r].numpy()
                m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
                sheet.paste(
                    Image.fromarray(heat_rgb(m)).resize((side, side), Image.NEAREST), (c * (side + 4), y)
                )
                c += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["world-dino", "world-clip", "world-clip-deep"])
    parser.add_argument("--data", default="world:clutter")
    parser.add_argument("--images", type=int, default=0, help="first N images (0: all)")
    parser.add_argument("--output", default="benchmarks/results/dino/premise")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = open_world(args.data)
    if args.images:
        data = data.subset(range(min(args.images, len(data.paths))))
    masks = target_masks(data)
    distractors = _distractor_boxes(data)
    rows, maps = {}, {}
    for name in args.backbones:
        t = time.perf_counter()
        rows[name], maps[name] = measure(name, data, masks, distractors)
        rows[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps(rows[name]), flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    figure(data, maps, out / "premise.png")
    result = {
        "command": " ".join(["world_dino_premise.py", *sys.argv[1:]]),
        "data": args.data,
        "seed": 0,
        "versions": versions(),
        "backbones": rows,
    }
    (out / "premise.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| backbone | [CLS] on target | chance | [CLS] on distractors | chance | patches for 95% | "
        "rollout on target | rollout on distractors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['cls_target_mass']:.3f} | {r['target_area']:.3f} | "
            f"{r['cls_distractor_mass']:.3f} | {r['distractor_area']:.3f} | {r['patches_95']:.1f} | "
            f"{r['rollout_target_mass']:.3f} | "
            f"{r['rollout_distractor_mass']:.3f} |"
        )
    (out / "premise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
