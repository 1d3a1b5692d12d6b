"""FORT's table: each +fort recipe against its plain recipe on the same episodes, paired.

Run from the checkout root after run.sh (and diagnose.sh, if its folders exist)::

    python benchmarks/results/fort/table.py > benchmarks/results/fort/summary.md

The FORT page (docs/methods/fort.md) links this summary rather than copying its tables.

Accuracy and last-layer [CLS] attention mass on the query targets, each with a 95% CI; paired
differences (FORT - plain) with 95% CIs over episodes; prompt mass on the support targets against
chance (the target's share of the patches); seconds per episode.
"""

from __future__ import annotations

import math
from pathlib import Path

from focusshot.evaluation.metrics import paired_difference
from focusshot.evaluation.results import read_results, results_file

HERE = Path(__file__).parent
TUNING = HERE.parent / "tuning"


def _rows(folder: Path, rename: str = "") -> list[dict]:
    if not results_file(folder):
        return []
    rows = read_results(folder)
    for r in rows:
        r["method"] = r["method"] + rename
    return rows


def _mean_ci(values: list[float]) -> str:
    n = len(values)
    if n == 0:
        return ""
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return f"{m:.3f} ± {1.96 * sd / math.sqrt(n):.3f}"


def _by(rows: list[dict], method: str, key: str) -> dict[int, float]:
    return {r["episode"]: r[key] for r in rows if r["method"] == method and r.get(key) is not None}


def _pair(rows: list[dict], a: str, b: str, key: str) -> str:
    xa, xb = _by(rows, a, key), _by(rows, b, key)
    shared = sorted(set(xa) & set(xb))
    if len(shared) < 2:
        return ""
    res = paired_difference([xa[e] for e in shared], [xb[e] for e in shared])
    return f"{res.mean:+.3f} ± {res.half_width:.3f}"


def table(shots: int) -> str:
    rows = _rows(HERE / f"world_clutter_5w{shots}s")
    have = {r["method"] for r in rows}
    done = {r["episode"] for r in rows}
    for m in ("lora", "ft", "ssf"):  # the stored tuning run of the same episodes fills in (those done)
        if m not in have:
            stored = _rows(TUNING / f"world_clutter_5w{shots}s")
            rows += [r for r in stored if r["method"] == m and r["episode"] in done]
    for diag in ("box", "alpha5", "box_alpha5", "box_lr10x", "plain_lr10x", "box_cls_lr10x", "lamb100"):
        rows += _rows(HERE / f"diag_5w{shots}s_{diag}", f" ({diag.replace('_', ', ')})")
    lines = [
        f"### 5-way {shots}-shot, world-clip on world:clutter ({len(done)} of the 100 episodes, seed 0)",
        "",
        "| method | accuracy | vs plain (paired) | [CLS] on target | vs plain (paired) "
        "| prompt mass on target | chance | s/episode | episodes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m.split("+")[0], m))
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        plain = m.split("+")[0] if "+fort" in m else None
        acc = _mean_ci([r["accuracy"] for r in mine])
        mass = _mean_ci([r["cls_target_mass"] for r in mine if r.get("cls_target_mass") is not None])
        prompts = _mean_ci([r["prompt_target_mass"] for r in mine if r.get("prompt_target_mass") is not None])
        chance = _mean_ci([r["prompt_chance"] for r in mine if r.get("prompt_chance") is not None])
        secs = sum(r["seconds"] for r in mine) / len(mine)
        d_acc = _pair(rows, m, plain, "accuracy") if plain else ""
        d_mass = _pair(rows, m, plain, "cls_target_mass") if plain else ""
        lines.append(
            f"| {m} | {acc} | {d_acc} | {mass} | {d_mass} | {prompts} | {chance} | {secs:.1f} | {len(mine)} |"
        )
    plain_fast = "lora+fort (plain, lr10x)"
    for fast in ("lora+fort (box, lr10x)", "lora+fort (box, cls, lr10x)"):
        if {fast, plain_fast} <= {r["method"] for r in rows}:
            lines += [
                "",
                f"{fast} vs {plain_fast} (plain LoRA, i.e. fort_alpha 0, at the same lr 5e-2), paired: "
                f"accuracy {_pair(rows, fast, plain_fast, 'accuracy')}, "
                f"[CLS] on target {_pair(rows, fast, plain_fast, 'cls_target_mass')}",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    print("\n".join(table(k) for k in (1, 5)))


if __name__ == "__main__":
    main()
