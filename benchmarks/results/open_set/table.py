"""The open-set tables of docs/howto/reject-unknown.md from the runs of run.sh.

python benchmarks/results/open_set/table.py > benchmarks/results/open_set/summary.md

Per shot count: every method and score with closed-set accuracy, AUROC, FPR@95%TPR and open-set
accuracy at the oracle threshold and at the ``--reject auto`` threshold (mean ± 95% CI over
episodes); each method's best score against its default, and each method's default score
against ProtoNet's (paired over episodes); and how far the automatic threshold falls short of
the oracle one. At 1 shot the automatic threshold comes from a second run on the same episodes
(``world_clip_5way1shot_auto``, made after ``--reject auto`` learnt to run at one image per class),
checked here to be the same episodes; the box-reading methods at 1 shot, and LoRA at 1 and 5
shots, from their own runs on the same episodes.
"""

from __future__ import annotations

from pathlib import Path

from focusshot.evaluation.metrics import mean_ci95, paired_difference
from focusshot.evaluation.open_set import LOCO_VIEWS
from focusshot.evaluation.results import read_results
from focusshot.methods.base import method_class
from focusshot.methods.open_set import SCORES

HERE = Path(__file__).parent
RUNS = {1: HERE / "world_clip_5way1shot", 5: HERE / "world_clip_5way5shot"}
#: the 1-shot episodes again, with the ``--reject auto`` threshold (augmented views as known images)
AUTO_1SHOT = HERE / "world_clip_5way1shot_auto"
#: the 1-shot episodes with the methods that read each image's box (world:clutter's target boxes)
REGIONS_1SHOT = HERE / "world_clip_5way1shot_regions"
#: LoRA beside ProtoNet on the same episodes, each shot count
LORA = {5: HERE / "world_clip_5way5shot_lora", 1: HERE / "world_clip_5way1shot_lora"}


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
        "(leave-one-class-out, balanced rule; at 1 shot, augmented views of the support play the "
        "known images, measured in a second run on the same episodes).\n"
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
            print("TPR / FPR: the share of known / unknown test queries the `auto` threshold accepts.\n")
            print(
                "| method | score | open acc. (auto) | open acc. (oracle) | auto - oracle | "
                "TPR at auto | FPR at auto |"
            )
            print("|---|---|---|---|---|---|---|")
            for m in methods:
                s = method_class(m).open_score
                a = per_episode(rows, m, s, "open_accuracy_auto")
                o = per_episode(rows, m, s, "open_accuracy_oracle")
                if a:
                    tpr, fpr = zip(*(rates(r, s) for r in rows if r["method"] == m), strict=True)
                    print(
                        f"| {m} | {s} | {cell(list(a.values()))} | {cell(list(o.values()))} | {diff(a, o)} | "
                        f"{cell(list(tpr))} | {cell(list(fpr))} |"
                    )
        elif k == 1:
            one_shot_auto(rows)
        print()


def rates(r: dict, score: str) -> tuple[float, float]:
    """The share of a result line's known queries accepted at its ``--reject auto`` threshold (TPR),
    and of its unknown queries (FPR)."""
    rec, n = r["open"][score], r["known_queries"]
    s, t = rec["scores"], rec["threshold_auto"]
    known, unknown = s[:n], s[n:]
    return sum(x >= t for x in known) / len(known), sum(x >= t for x in unknown) / len(unknown)


def one_shot_auto(base: list[dict]) -> None:
    """``--reject auto`` at 1 shot (:data:`AUTO_1SHOT`): open-set accuracy at its threshold
    against the oracle's, per method and score, paired over the episodes, with the rates it
    accepts known and unknown queries at."""
    if not (AUTO_1SHOT / "run.json").is_file():
        return
    rows = read_results(AUTO_1SHOT)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    episodes = len({r["episode"] for r in rows})
    old = {(r["method"], r["episode"]): r for r in base}
    same = all(
        (r["method"], r["episode"]) in old
        and old[r["method"], r["episode"]]["seed"] == r["seed"]
        and old[r["method"], r["episode"]]["accuracy"] == r["accuracy"]
        and all(
            old[r["method"], r["episode"]]["open"][sc][key] == rec[key]
            for sc, rec in r["open"].items()
            for key in ("auroc", "open_accuracy_oracle")
        )
        for r in rows
    )
    which = "the same" if episodes == len({r["episode"] for r in base}) else "the first"
    print(f"\n### `--reject auto` against the oracle threshold, 1-shot ({episodes} episodes)\n")
    print(
        f"From `world_clip_5way1shot_auto` (`run.sh`): {which} {episodes} episodes as above, rerun "
        f"with {', '.join(methods)} once `--reject auto` "
        "could choose a threshold at one image per class (each leave-one-class-out fold fitted on "
        f"the other classes' images, {LOCO_VIEWS} seeded augmented views of each "
        "playing the known images, the held-out image the unknown one). "
        + (
            "Closed-set accuracy, AUROC and the oracle's open-set accuracy equal the run above's, "
            "episode by episode."
            if same
            else "**The episodes differ from the run above's.**"
        )
        + " TPR / FPR: the share of known / unknown test queries the `auto` threshold accepts. "
        "Accepting every query scores half the closed-set accuracy; rejecting every one, 0.5.\n"
    )
    print(
        "| method | score | open acc. (auto) | open acc. (oracle) | auto - oracle | TPR at auto | "
        "FPR at auto | accept all |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        default = method_class(m).open_score
        for s in SCORES:
            a = per_episode(rows, m, s, "open_accuracy_auto")
            if not a:
                continue
            o = per_episode(rows, m, s, "open_accuracy_oracle")
            tpr, fpr = zip(*(rates(r, s) for r in mine), strict=True)
            accept = [
                r["accuracy"] * r["known_queries"] / (r["known_queries"] + r["unknown_queries"]) for r in mine
            ]
            name = f"**{s}**" if s == default else s
            print(
                f"| {m} | {name} | {cell(list(a.values()))} | {cell(list(o.values()))} | {diff(a, o)} | "
                f"{cell(list(tpr))} | {cell(list(fpr))} | {cell(accept)} |"
            )
    print("\n(**bold**: the method's default score.)\n")


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


def lora(k: int) -> None:
    """LoRA (trains per episode) beside ProtoNet on the ``k``-shot episodes, paired."""
    run = LORA[k]
    if not (run / "run.json").is_file():
        return
    rows = read_results(run)
    episodes = len({r["episode"] for r in rows})
    secs = [r["seconds"] for r in rows if r["method"] == "lora"]
    if not secs:
        return
    same = {(r["episode"], r["accuracy"]) for r in read_results(RUNS[k]) if r["method"] == "protonet"}
    mine = {(r["episode"], r["accuracy"]) for r in rows if r["method"] == "protonet"}
    assert mine <= same, f"{run.name}: ProtoNet's rows differ from {RUNS[k].name}'s"
    which = f"the same {episodes}" if episodes == len(same) else f"the first {episodes} of the {len(same)}"
    print(f"## LoRA, 5-way {k}-shot ({which} episodes as above)\n")
    print(
        f"LoRA fine-tunes world-clip per episode (about {sum(secs) / len(secs):.1f} s of fitting and "
        "scoring an episode on one CPU thread of this machine, as its result lines record), beside "
        "ProtoNet on the same episodes (its rows equal the run above's); `--reject auto` refuses it "
        "(it would train once per class). Paired differences against ProtoNet's distance on the "
        "same episodes; closed acc.: the known queries' accuracy, paired against ProtoNet's.\n"
    )
    print(
        "| method | score | closed acc. | AUROC | FPR95 | open acc. (oracle) | AUROC - protonet "
        "| open acc. (oracle) - protonet |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = {m: per_episode(rows, "protonet", "distance", m) for m in ("auroc", "open_accuracy_oracle")}
    closed = {
        m: {r["episode"]: r["accuracy"] for r in rows if r["method"] == m} for m in ("protonet", "lora")
    }
    for m in ("protonet", "lora"):
        mine_rows = [r for r in rows if r["method"] == m]
        for sc in SCORES:
            if sc not in mine_rows[0].get("open", {}):
                continue
            a = per_episode(rows, m, sc, "auroc")
            o = per_episode(rows, m, sc, "open_accuracy_oracle")
            cells = [cell([r["accuracy"] for r in mine_rows]), cell(list(a.values()))]
            cells += [cell(list(per_episode(rows, m, sc, "fpr95").values())), cell(list(o.values()))]
            if m == "lora":
                cells += [diff(a, base["auroc"]), diff(o, base["open_accuracy_oracle"])]
            else:
                cells += ["-", "-"]
            name = f"**{sc}**" if sc == method_class(m).open_score else sc
            print(f"| {m} | {name} | " + " | ".join(cells) + " |")
    print(f"\nClosed-set accuracy, lora - protonet: {diff(closed['lora'], closed['protonet'])}.\n")


def regions() -> None:
    """The box-reading methods (FALIP, FALIP-Tip, the drawn prompts) on the 1-shot episodes, with
    ``--reject auto`` from augmented views that carry their image's box, beside ProtoNet."""
    if not (REGIONS_1SHOT / "run.json").is_file():
        return
    rows = read_results(REGIONS_1SHOT)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    episodes = len({r["episode"] for r in rows})
    base_rows = [r for r in read_results(RUNS[1]) if r["method"] == "protonet"]
    same = {(r["episode"], r["accuracy"]) for r in base_rows}
    mine = {(r["episode"], r["accuracy"]) for r in rows if r["method"] == "protonet"}
    assert mine <= same, f"{REGIONS_1SHOT.name}: ProtoNet's rows differ from {RUNS[1].name}'s"
    refused = sum(1 for r in rows if r.get("auto_refused"))
    print(f"## Box-reading methods, 5-way 1-shot (the same {episodes} episodes as above)\n")
    print(
        f"From `{REGIONS_1SHOT.name}` (`run.sh`): {', '.join(m for m in methods if m != 'protonet')} read "
        "each image's box (FocusWorld's target boxes), beside ProtoNet (whose rows equal the run "
        "above's). `--reject auto` at one image per class: each leave-one-class-out fold's known "
        f"images are {LOCO_VIEWS} seeded augmented views of the fitted images, each with its image's "
        "box mapped into it (a view showing less than a quarter of its box left out); "
        f"{refused} result lines had no automatic threshold. Paired differences over episodes; "
        "AUROC - protonet: against ProtoNet's distance. Seconds an episode (fit, leave-one-class-out "
        "and scoring, as the result lines record): "
        + ", ".join(
            f"{m} {sum(r['seconds'] for r in rows if r['method'] == m) / episodes:.2f}" for m in methods
        )
        + ".\n"
    )
    print(
        "| method | score | closed acc. | AUROC | open acc. (oracle) | open acc. (auto) | auto - oracle "
        "| TPR at auto | FPR at auto | AUROC - protonet |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = per_episode(rows, "protonet", "distance", "auroc")
    for m in methods:
        mine_rows = [r for r in rows if r["method"] == m]
        default = method_class(m).open_score
        for sc in SCORES:
            a = per_episode(rows, m, sc, "auroc")
            if not a:
                continue
            o = per_episode(rows, m, sc, "open_accuracy_oracle")
            auto = per_episode(rows, m, sc, "open_accuracy_auto")
            with_auto = [r for r in mine_rows if "threshold_auto" in r["open"][sc]]
            tpr, fpr = zip(*(rates(r, sc) for r in with_auto), strict=True) if with_auto else ((), ())
            name = f"**{sc}**" if sc == default else sc
            cells = [
                cell([r["accuracy"] for r in mine_rows]),
                cell(list(a.values())),
                cell(list(o.values())),
                cell(list(auto.values())),
                diff(auto, o),
                cell(list(tpr)),
                cell(list(fpr)),
                "-" if m == "protonet" else diff(a, base),
            ]
            print(f"| {m} | {name} | " + " | ".join(cells) + " |")
    print("\n(**bold**: the method's default score.)\n")


if __name__ == "__main__":
    main()
    regions()
    lora(1)
    lora(5)
    clothing()
