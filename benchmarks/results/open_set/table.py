"""The open-set tables of docs/howto/reject-unknown.md from the runs of run.sh.

python benchmarks/results/open_set/table.py > benchmarks/results/open_set/summary.md

Per shot count: every method and score with closed-set accuracy, AUROC, FPR@95%TPR and open-set
accuracy at the oracle threshold and at the ``--reject auto`` threshold (mean ± 95% CI over
episodes); each method's best score against its default, and each method's default score
against ProtoNet's (paired over episodes); and how far the automatic threshold falls short of
the oracle one.
"""

from __future__ import annotations

from pathlib import Path

from focusshot.evaluation.metrics import mean_ci95, paired_difference
from focusshot.evaluation.results import read_results
from focusshot.methods.base import method_class
from focusshot.methods.open_set import SCORES

HERE = Path(__file__).parent
RUNS = {1: HERE / "world_clip_5way1shot", 5: HERE / "world_clip_5way5shot"}


def cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    mean, half = mean_ci95(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def diff(a: dict[int, float], b: dict[int, float]) -> str:
    eps = sorted(set(a) & set(b))
    if len(eps) < 2:
        return "-"
    res = paired_difference([a[e] for e in eps], [b[e] for e in eps])
    if abs(res.mean) < 5e-4 and res.half_width < 5e-4:
        return "≈ 0 (a tie)"
    mark = "" if res.significant else " (n.s.)"
    return f"{res.mean:+.3f} ± {res.half_width:.3f}{mark}"


def per_episode(rows: list[dict], method: str, score: str, metric: str) -> dict[int, float]:
    return {
        r["episode"]: r["open"][score][metric]
        for r in rows
        if r["method"] == method and score in r.get("open", {}) and metric in r["open"][score]
    }


def main() -> None:
    print("# Open-set rejection on world-clip / world:clutter\n")
    print(
        "5 known ways (1 or 5 shots, 15 queries each) and 5 unknown ways (75 unknown queries) per "
        "episode, 200 episodes, seed 0 (`run.sh`); mean ± 95% CI over episodes. AUROC: known "
        "against unknown queries; FPR95: unknown accepted at 95% of known accepted; open acc.: "
        "accuracy over all 150 queries, a known query right when accepted and classified right, "
        "an unknown one when rejected, at the oracle threshold (best on the episode's own "
        "queries) and at the threshold `fit --reject auto` picks from the support alone "
        "(leave-one-class-out, balanced rule; needs 2 or more shots).\n"
    )
    for k, run in RUNS.items():
        if not (run / "run.json").is_file():
            continue
        rows = read_results(run)
        methods = list(dict.fromkeys(r["method"] for r in rows))
        episodes = len({r["episode"] for r in rows})
        print(f"## 5-way {k}-shot ({episodes} episodes)\n")
        print("| method | score | closed acc. | AUROC | FPR95 | open acc. (oracle) | open acc. (auto) |")
        print("|---|---|---|---|---|---|---|")
        for m in methods:
            mine = [r for r in rows if r["method"] == m]
            acc = cell([r["accuracy"] for r in mine])
            default = method_class(m).open_score
            for s in SCORES:
                if s not in mine[0].get("open", {}):
                    continue
                vals = {key: list(per_episode(rows, m, s, key).values()) for key in
                        ("auroc", "fpr95", "open_accuracy_oracle", "open_accuracy_auto")}  # fmt: skip
                name = f"**{s}**" if s == default else s
                print(
                    f"| {m} | {name} | {acc} | {cell(vals['auroc'])} | {cell(vals['fpr95'])} | "
                    f"{cell(vals['open_accuracy_oracle'])} | {cell(vals['open_accuracy_auto'])} |"
                )
        print("\n(**bold**: the method's default score, `Method.open_score`.)\n")
        print(f"### Which score wins, {k}-shot (AUROC, paired over episodes)\n")
        print("| method | best score | its AUROC | best - default | default - protonet's distance |")
        print("|---|---|---|---|---|")
        base = per_episode(rows, "protonet", "distance", "auroc")
        for m in methods:
            scores = [s for s in SCORES if per_episode(rows, m, s, "auroc")]
            means = {s: mean_ci95(list(per_episode(rows, m, s, "auroc").values()))[0] for s in scores}
            best = max(scores, key=lambda s: means[s])
            default = method_class(m).open_score
            d_best = per_episode(rows, m, best, "auroc")
            d_default = per_episode(rows, m, default, "auroc")
            vs_default = "(the default)" if best == default else diff(d_best, d_default)
            vs_proto = "-" if m == "protonet" else diff(d_default, base)
            print(f"| {m} | {best} | {means[best]:.3f} | {vs_default} | {vs_proto} |")
        auto = [(m, s) for m in methods for s in SCORES if per_episode(rows, m, s, "open_accuracy_auto")]
        if auto:
            print(f"\n### `--reject auto` against the oracle threshold, {k}-shot (default scores)\n")
            print("| method | score | open acc. (auto) | open acc. (oracle) | auto - oracle |")
            print("|---|---|---|---|---|")
            for m in methods:
                s = method_class(m).open_score
                a = per_episode(rows, m, s, "open_accuracy_auto")
                o = per_episode(rows, m, s, "open_accuracy_oracle")
                if a:
                    print(
                        f"| {m} | {s} | {cell(list(a.values()))} | {cell(list(o.values()))} | {diff(a, o)} |"
                    )
        else:
            refused = next((r["auto_refused"] for r in rows if "auto_refused" in r), "")
            print(f"\n`--reject auto` cannot run at {k} shot: {refused}\n")
        print()


def clothing() -> None:
    """The split-protocol run on real photos: mean ± std over the 3 seeds (too few for an interval)."""
    run = HERE / "effnet_clothing_split"
    if not (run / "run.json").is_file():
        return
    rows = read_results(run)
    n_known, n_unknown = rows[0]["known_queries"], rows[0]["unknown_queries"]
    print("## EfficientNet-Lite0 on clothing-small (real photos)\n")
    print(
        "ImageNet weights; split protocol, 5 known classes (dress, hat, longsleeve, outwear, pants) and "
        f"5 held out of training (shirt, shoes, shorts, skirt, t-shirt): {n_known} known and {n_unknown} "
        "unknown test photos; 1 and 5 training photos per class, seeds 1-3; mean ± std over seeds.\n"
    )
    print("| method | score | K | closed acc. | AUROC | FPR95 | open acc. (oracle) | open acc. (auto) |")
    print("|---|---|---|---|---|---|---|---|")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        default = method_class(m).open_score
        for k in sorted({r["shots"] for r in rows}):
            mine = [r for r in rows if r["method"] == m and r["shots"] == k]
            for sc in SCORES:
                if sc not in mine[0].get("open", {}):
                    continue
                cells = [std([r["accuracy"] for r in mine])]
                for key in ("auroc", "fpr95", "open_accuracy_oracle", "open_accuracy_auto"):
                    cells.append(std([r["open"][sc][key] for r in mine if key in r["open"][sc]]))
                name = f"**{sc}**" if sc == default else sc
                print(f"| {m} | {name} | {k} | " + " | ".join(cells) + " |")
    print()


def std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def lora() -> None:
    """LoRA (trains per episode) on the first 50 of the 5-shot episodes, beside ProtoNet."""
    run = HERE / "world_clip_5way5shot_lora"
    if not (run / "run.json").is_file():
        return
    rows = read_results(run)
    episodes = len({r["episode"] for r in rows})
    print(f"## LoRA, 5-way 5-shot (the first {episodes} of the 200 episodes above)\n")
    print(
        "LoRA fine-tunes world-clip per episode (about 30 s an episode on this machine), so it ran on "
        f"{episodes} episodes only, beside ProtoNet on the same episodes; `--reject auto` refuses it "
        "(it would train once per class).\n"
    )
    print("| method | score | closed acc. | AUROC | FPR95 | open acc. (oracle) | - protonet distance |")
    print("|---|---|---|---|---|---|---|")
    base = per_episode(rows, "protonet", "distance", "auroc")
    for m in ("protonet", "lora"):
        mine = [r for r in rows if r["method"] == m]
        for sc in SCORES:
            if sc not in mine[0].get("open", {}):
                continue
            a = per_episode(rows, m, sc, "auroc")
            cells = [cell([r["accuracy"] for r in mine]), cell(list(a.values()))]
            cells += [
                cell(list(per_episode(rows, m, sc, key).values()))
                for key in ("fpr95", "open_accuracy_oracle")
            ]
            cells.append(diff(a, base) if m == "lora" else "-")
            name = f"**{sc}**" if sc == method_class(m).open_score else sc
            print(f"| {m} | {name} | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    main()
    lora()
    clothing()
