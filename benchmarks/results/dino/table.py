"""The world-dino tables (issue 23) from the runs of run.sh and world_dino_premise.py.

    python benchmarks/results/dino/table.py > benchmarks/results/dino/summary.md

Per backbone and phase: every method's accuracy, query [CLS] mass on the target after tuning, and
its prompts' mass on the target; every FORT variant paired with its plain recipe at the same
regime (accuracy and [CLS] mass, mean ± 95% CI over the same episodes); SSF's rows come from
run_ssf.sh, official FT's from run_ft.sh, the 5-shot ones from run_5shot.sh and
run_5shot_regime.sh. Then the claim: is FORT's gain larger on world-dino than on world-clip? A
difference of paired differences over the same episodes (the sampler depends on the data and the
seed, not on the backbone). Last, two checks of whether attention is what limits accuracy here:
episode-level correlations, and the frozen features on world:single against world:clutter
(run_single.sh).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from focusshot.evaluation.metrics import mean_ci95
from focusshot.evaluation.results import read_results, results_file

HERE = Path(__file__).parent
#: FORT variant -> its plain recipe at the same regime
PAIRS = {
    "lora+fort": "lora",
    "lora+fort@box": "lora",
    "lora+fort@lr5e2cls": "lora@lr5e2cls",
    "lora+fort@lr5e2cls_box": "lora@lr5e2cls",
    "ft+fort@b2": "ft@b2",
    "ft+fort@b2_box": "ft@b2",
    "ssf+fort": "ssf",
    "ssf+fort@box": "ssf",
    "ssf+fort@lr5e2cls": "ssf@lr5e2",
    "ssf+fort@lr5e2cls_a5": "ssf@lr5e2",
    "ssf+fort@lr5e2cls_a5_box": "ssf@lr5e2",
    "ft+fort": "ft",
    "ft+fort@box": "ft",
}


def _rows(run: Path) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in read_results(run):
        out.setdefault(r["method"], {})[r["episode"]] = r
    return out


def _merged(*runs: Path) -> dict[str, dict[int, dict]]:
    """The rows of several runs of one backbone on the same episodes (run.sh's and run_ssf.sh's)."""
    out: dict[str, dict[int, dict]] = {}
    for run in runs:
        if results_file(run):
            out.update(_rows(run))
    return out


def _mass(row: dict) -> float:
    """A row's query [CLS] mass on the target; NaN where it has none (a frozen method, or no query
    whose [CLS] row reached the patches)."""
    return row.get("cls_target_mass", np.nan)


def _ci(values) -> str:
    m, h = mean_ci95(np.asarray(values, dtype=float))
    return f"{m:+.3f} ± {h:.3f}"


def _mean(values) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]  # frozen heads have no adapted attention to measure
    if not v.size:
        return ""
    m, h = mean_ci95(v)
    return f"{m:.3f} ± {h:.3f}"


def _frozen_mass(run: Path) -> str:
    att = run / "attention.json"
    if not att.is_file():
        return "?"
    a = json.loads(att.read_text())
    return f"{a['cls_target_mass']:.3f} (chance {a['target_area']:.3f})" if a.get("available") else "?"


def table(run: Path) -> list[str]:
    rows = _rows(run)
    out = [
        f"frozen model's [CLS] mass on the target over the pool: {_frozen_mass(run)}",
        "",
        "| method | accuracy | vs plain (paired) | [CLS] on target after | vs plain (paired) | "
        "prompts on target | s/episode |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, per in rows.items():
        eps = sorted(per)
        acc = [per[e]["accuracy"] for e in eps]
        mass = [_mass(per[e]) for e in eps]
        prompt = [per[e]["prompt_target_mass"] for e in eps if "prompt_target_mass" in per[e]]
        secs = np.mean([per[e].get("seconds", np.nan) for e in eps])
        d_acc = d_mass = ""
        base = PAIRS.get(m)
        if base in rows:
            common = [e for e in eps if e in rows[base]]
            d_acc = _ci([per[e]["accuracy"] - rows[base][e]["accuracy"] for e in common])
            d_mass = _ci([_mass(per[e]) - _mass(rows[base][e]) for e in common])
        out.append(
            f"| {m} | {_mean(acc)} | {d_acc} | {_mean(mass)} | {d_mass} | "
            f"{_mean(prompt) if prompt else ''} | {secs:.1f} |"
        )
    blind: dict[str, list[int]] = {}  # method -> its queries without patch attention, per episode
    for m, per in rows.items():
        for r in per.values():
            if r.get("cls_no_patch_queries"):
                blind.setdefault(m, []).append(r["cls_no_patch_queries"])
    if blind:
        out += [
            "",
            "Queries whose last [CLS] row put no attention on any patch (left out of the [CLS] mass): "
            + "; ".join(f"{m}: {sum(v)} in {len(v)} episode(s)" for m, v in blind.items()),
        ]
    return out


CLAIM_HEADER = [
    "| FORT variant (vs plain) | gain on world-dino | gain on world-clip | dino - clip (paired) | "
    "[CLS] change, world-dino | [CLS] change, world-clip | prompts on target, world-dino | "
    "prompts on target, world-clip | episodes |",
    "|---|---|---|---|---|---|---|---|---|",
]


def _claim_rows(a: dict, b: dict, pairs: dict[str, str]) -> list[str]:
    """Each FORT variant's gain over its plain recipe on world-dino (``a``) and world-clip (``b``),
    and the difference, paired over the episodes all four rows share; [CLS] mass changes alike."""
    out = []
    for m, base in pairs.items():
        if not all(k in r for r in (a, b) for k in (m, base)):
            continue
        eps = sorted(set(a[m]) & set(a[base]) & set(b[m]) & set(b[base]))
        if not eps:
            continue
        ga = [a[m][e]["accuracy"] - a[base][e]["accuracy"] for e in eps]
        gb = [b[m][e]["accuracy"] - b[base][e]["accuracy"] for e in eps]
        ma = [_mass(a[m][e]) - _mass(a[base][e]) for e in eps]
        mb = [_mass(b[m][e]) - _mass(b[base][e]) for e in eps]
        pa = _mean([a[m][e].get("prompt_target_mass", np.nan) for e in eps])
        pb = _mean([b[m][e].get("prompt_target_mass", np.nan) for e in eps])
        out.append(
            f"| {m} | {_ci(ga)} | {_ci(gb)} | {_ci(np.subtract(ga, gb))} | {_ci(ma)} | {_ci(mb)} "
            f"| {pa} | {pb} | {len(eps)} |"
        )
    return out


def claim(dino: list[Path], clip: list[Path]) -> list[str]:
    """The claim at 1 shot: the test runs of run.sh and run_ssf.sh on both backbones."""
    return CLAIM_HEADER + _claim_rows(_merged(*dino), _merged(*clip), PAIRS)


#: a backbone's 5-shot run folders (suffixes): run_5shot.sh, run_5shot_regime.sh, run_5shot_more.sh
#: (default, GROUP=ft, GROUP=lora); a later folder's rows of a method replace an earlier one's
FIVE_SHOT_RUNS = ("", "_regime", "_regime100", "_regime100ft", "_regime100lora")


def five_shot() -> tuple[dict, dict]:
    """The 5-shot rows of both backbones: run_5shot.sh's and run_5shot_regime.sh's, and for
    world-clip the stored runs of the same episodes (benchmarks/results/fort, .../tuning)."""
    fort = HERE.parent / "fort"
    clip = _rows(fort / "world_clutter_5w5s")
    clip["lora+fort@box"] = _rows(fort / "diag_5w5s_box")["lora+fort"]
    clip["ssf"] = _rows(HERE.parent / "tuning" / "world_clutter_5w5s")["ssf"]
    clip.update(_merged(*(HERE / f"world-clip_clutter_5w5s{s}" for s in FIVE_SHOT_RUNS)))
    return _merged(*(HERE / f"world-dino_clutter_5w5s{s}" for s in FIVE_SHOT_RUNS)), clip


def stored_rerun() -> list[str]:
    """Do the stored world-clip 5-shot rows (an earlier version of the code, an earlier machine)
    equal this code's reruns of the same episodes (the first episodes of ``..._recheck``, the FT
    rows of run_5shot_regime.sh)? If so, the stored rows the 5-shot claim pairs with stand."""
    tuning, fort = HERE.parent / "tuning" / "world_clutter_5w5s", HERE.parent / "fort" / "world_clutter_5w5s"
    recheck, regime = HERE / "world-clip_clutter_5w5s_recheck", HERE / "world-clip_clutter_5w5s_regime"
    checks = [(recheck, "lora", fort), (recheck, "lora+fort", fort), (recheck, "ssf", tuning)]
    checks += [(recheck, "ssf+fort", fort), (regime, "ft", tuning), (regime, "ft+fort", fort)]
    out = []
    for run, m, stored in checks:
        if not results_file(run):
            continue
        new, old = _rows(run).get(m, {}), _rows(stored).get(m, {})
        common = sorted(set(old) & set(new))
        if common:
            same = sum(old[e]["accuracy"] == new[e]["accuracy"] for e in common)
            out.append(
                f"- `{m}`: {same} of {len(common)} episodes of `{run.name}` with the accuracy stored in "
                f"`{stored.relative_to(HERE.parent)}`"
            )
    return out


def _r(x, y) -> str:
    """Pearson r with its 95% CI (Fisher z) over finite pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 4 or x.std() == 0 or y.std() == 0:
        return ""
    r = float(np.corrcoef(x, y)[0, 1])
    z, h = np.arctanh(r), 1.96 / np.sqrt(x.size - 3)
    return f"{r:+.2f} [{np.tanh(z - h):+.2f}, {np.tanh(z + h):+.2f}]"


def correlations(rows: dict) -> list[str]:
    """Per episode: does a plain recipe score higher where its queries' [CLS] finds the target, and
    does a FORT variant gain more where its loss moved [CLS] mass further?"""
    out = [
        "| recipe | r(accuracy, [CLS] on target) | FORT variant | r(accuracy gain, [CLS] change) "
        "| episodes |",
        "|---|---|---|---|---|",
    ]
    for m, base in PAIRS.items():
        if m not in rows or base not in rows:
            continue
        eps = sorted(set(rows[m]) & set(rows[base]))
        acc = [rows[base][e]["accuracy"] for e in eps]
        mass = [_mass(rows[base][e]) for e in eps]
        gain = [rows[m][e]["accuracy"] - rows[base][e]["accuracy"] for e in eps]
        move = [_mass(rows[m][e]) - _mass(rows[base][e]) for e in eps]
        out.append(f"| {base} | {_r(acc, mass)} | {m} | {_r(gain, move)} | {len(eps)} |")
    return out


def single_vs_clutter() -> list[str]:
    """Frozen ProtoNet and logistic on world:single against world:clutter (run_single.sh): what the
    distractors cost each backbone (independent episodes: the CI of a difference of two means)."""
    out = ["| backbone | method | world:single | world:clutter | clutter - single |", "|---|---|---|---|---|"]
    for bb in ("world-dino", "world-clip"):
        runs = [HERE / f"{bb}_frozen_{s}_5w1s" for s in ("single", "clutter")]
        if not all(results_file(r) for r in runs):
            continue
        single, clutter = (_rows(r) for r in runs)
        for m in single:
            a = np.array([r["accuracy"] for r in single[m].values()])
            b = np.array([r["accuracy"] for r in clutter[m].values()])
            d = b.mean() - a.mean()
            h = 1.96 * np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
            out.append(f"| {bb} | {m} | {_mean(a)} | {_mean(b)} | {d:+.3f} ± {h:.3f} |")
    return out


def main() -> None:
    runs = sorted(p for p in HERE.iterdir() if results_file(p))
    print("# FORT where its premise holds: world-dino against world-clip\n")
    print("5-way 1-shot, 5 queries, `world:clutter?split=1` (`run.sh`); ± is the 95% CI over episodes.\n")
    premise = HERE / "premise" / "premise.md"
    if premise.is_file():
        print("## The premise: the frozen last-layer [CLS] attention (`world_dino_premise.py`)\n")
        print(premise.read_text())
    for run in runs:
        print(f"## {run.name}\n")
        print("\n".join(table(run)) + "\n")
    dino, clip = (HERE / f"{bb}_test_5w1s" for bb in ("world-dino", "world-clip"))
    if results_file(dino) and results_file(clip):
        print("## The claim: FORT helps more on world-dino than on world-clip (test episodes)\n")
        one = [[p, Path(f"{p}_ssf"), Path(f"{p}_ft")] for p in (dino, clip)]
        print("\n".join(claim(*one)) + "\n")
        print("## Does attention limit accuracy? Episode-level correlations, 1 shot\n")
        print("Pearson r over the test episodes, 95% CI by Fisher's z.\n")
        for bb, runs in zip(("world-dino", "world-clip"), one, strict=True):
            print(f"### {bb}\n")
            print("\n".join(correlations(_merged(*runs))) + "\n")
    if results_file(HERE / "world-dino_clutter_5w5s"):
        d5, c5 = five_shot()
        print("## 5 shots: the claim on `world:clutter`, 15 queries\n")
        print("world-clip's official LoRA and SSF rows are the stored runs of the same episodes in")
        print("benchmarks/results/fort and .../tuning\n")
        print("\n".join(CLAIM_HEADER + _claim_rows(d5, c5, PAIRS)) + "\n")
        check = stored_rerun()
        if check:
            print("The stored world-clip rows against this code's reruns of the same episodes:\n")
            print("\n".join(check) + "\n")
    table_sc = single_vs_clutter()
    if len(table_sc) > 2:
        print("## What the distractors cost: frozen features, world:single against world:clutter\n")
        print("5-way 1-shot, 10 queries, 100 episodes each (`run_single.sh`).\n")
        print("\n".join(table_sc) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
