"""The ``focusshot`` command line. Nothing but argument handling lives here."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import focusshot


def _cmd_backbones(args: argparse.Namespace) -> int:
    from focusshot.backbones.registry import list_backbones

    rows = [
        (s.name, s.family, s.hf_repo or ("package" if s.local_pretrained else "random only"), s.description)
        for s in list_backbones()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from focusshot.backbones.registry import create_backbone
    from focusshot.data.images import list_images
    from focusshot.embedding import embed_images, save_embeddings

    paths = list_images(args.images if len(args.images) > 1 else args.images[0])
    if not paths:
        print(f"error: no image files found in {' '.join(args.images)}", file=sys.stderr)
        return 2
    from focusshot.distributed import ensure

    ctx = ensure(args.device)
    backbone = create_backbone(args.backbone, pretrained=not args.random_weights)
    mine = paths[ctx.rank :: ctx.world] if ctx.active else paths
    emb = embed_images(
        backbone, mine, batch_size=args.batch_size, progress=not args.quiet and ctx.main, device=ctx.device
    )
    if ctx.active:
        from focusshot.embedding import gather_embeddings

        merged = gather_embeddings(emb, paths, ctx)
        if merged is None:  # not rank 0: rank 0 writes the file
            return 0
        emb = merged
    output = Path(args.output)
    if emb.bad and not args.skip_bad:
        partial = output.with_name(output.stem + ".partial" + output.suffix)
        save_embeddings(emb, partial, backbone)
        print(f"error: {len(emb.bad)} image(s) could not be read:", file=sys.stderr)
        for err in emb.bad:
            print(f"  {err.path}: {err.reason}", file=sys.stderr)
        print(
            f"the {len(emb.paths)} good images were saved to {partial}; "
            "rerun with --skip-bad to skip bad files",
            file=sys.stderr,
        )
        return 2
    for err in emb.bad:
        print(f"skipped {err.path}: {err.reason}", file=sys.stderr)
    save_embeddings(emb, output, backbone)
    print(f"wrote {tuple(emb.features.shape)} features of {backbone.identity.name} to {output}")
    return 0


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _config_args(p: argparse.ArgumentParser, config: type, names: tuple[str, ...], scope: str = "") -> None:
    """``--NAME`` flags for fields ``names`` of the config dataclass ``config``: type, default and
    help from the field (DESIGN principle 10); ``scope`` prefixes the help."""
    import typing

    from focusshot.options import field_default

    hints = typing.get_type_hints(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name in names:
        f = fields[name]
        default = field_default(f)
        many = typing.get_origin(hints[name]) is tuple
        shown = ",".join(map(str, default)) if many else default
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=_ints if many else hints[name],
            default=list(default) if many else default,
            help=f"{scope}{f.metadata.get('help', '')} (default {shown})",
        )


def _method_options(args: argparse.Namespace) -> dict[str, dict]:
    """``--config FILE`` (JSON, TOML or YAML: ``{method: {option: value}}``) then every ``--set``."""
    from focusshot.options import merge_settings, read_options_file

    base = read_options_file(args.config) if getattr(args, "config", None) else {}
    return merge_settings(base, getattr(args, "set", None) or [])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_scale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), auto (each process's local GPU where there is one, else the CPU), or a "
        "torch device such as cuda:0",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes on this machine (torch's elastic launcher, as `torchrun --standalone "
        "--nproc-per-node N`); extraction and episodes are shared out (default 1)",
    )


def _strip_workers(argv: list[str]) -> list[str]:
    """``argv`` without ``--workers N`` / ``--workers=N`` (the workers themselves run one each)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def _add_option_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        metavar="METHOD.OPTION=VALUE",
        help="a method option, e.g. --set lora.rank=8 (repeatable; values are JSON or plain text; "
        "`focusshot methods` lists the options)",
    )
    p.add_argument(
        "--config", default=None, help="JSON, TOML or YAML method options: {method: {option: value}}"
    )


def _names(text: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; ``None`` -> ``[]``."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _add_open_score_arg(
    p: argparse.ArgumentParser, what: str, default: str = "the method's own; `focusshot methods` lists it"
) -> None:
    """``--open-score NAME``: an open-set score (:mod:`focusshot.methods.open_set`)."""
    from focusshot.methods.open_set import SCORES

    p.add_argument(
        "--open-score",
        default=None,
        metavar="NAME",
        help=f"{what}: {', '.join(SCORES)} (default: {default})",
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from focusshot.api import evaluate

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    shots: int | list[int] = args.shots if args.protocol == "split" else args.shots[0]
    if args.protocol == "episodic" and len(args.shots) != 1:
        print("error: --shots takes one value under the episodic protocol", file=sys.stderr)
        return 2
    out = evaluate(
        args.backbone,
        args.data,
        methods,
        args.protocol,
        args.output,
        ways=args.ways,
        shots=shots,
        queries=args.queries,
        episodes=args.episodes,
        seed=args.seed,
        split=args.split,
        seeds=args.seeds,
        cache_dir=args.cache_dir,
        pretrained=not args.random_weights,
        progress=not args.quiet,
        method_options=_method_options(args) or None,
        test_data=args.test_data or (),
        strict=args.strict,
        report=not args.no_report,
        device=args.device,
        compile=args.compile,
        autocast=args.autocast,
        open_ways=args.open_ways,
        open_queries=args.open_queries,
        open_classes=_names(args.open_classes),
        open_scores=_names(args.open_score) or None,
    )
    from focusshot.distributed import current

    if not current().main:  # rank 0 prints and writes the summaries
        return 0
    print((out.directory / "summary.md").read_text(), end="")
    if out.paired:
        print()
        print((out.directory / "paired.md").read_text(), end="")
    if out.attention.get("available"):
        a = out.attention
        print(
            f"\nlast-layer [CLS] attention on the target: {a['cls_target_mass']:.3f} of its patch mass "
            f"(chance {a['target_area']:.3f}); 95% of it on {a['patches_95']:.1f} patches; "
            f"figure: {out.directory / a.get('figure', 'attention.json')}"
        )
        if a.get("methods_figure"):
            print(f"  each adapted method's attention on episode 0: {out.directory / a['methods_figure']}")
        for name, m in (a.get("methods") or {}).items():
            print(f"  after adapting, {name}: {m['cls_target_mass']:.3f} of [CLS] patch mass on the target")
    if out.attention.get("explain_figure"):
        fig = out.directory / out.attention["explain_figure"]
        print(f"what each method's predictions on the first episode rest on (relevance maps): {fig}")
    print(
        f"results in {out.directory}"
        + ("" if args.no_report else f"; report: {out.directory / 'report.html'}")
    )
    return 0


def _print_auto(report: dict, out: Path) -> None:
    """The candidates' table and the choice; ``out``: where the report was written."""
    if report["candidates"]:
        print("| method | cross-validated accuracy | 95% CI | NLL | seconds |")
        print("|---|---|---|---|---|")
        for r in report["candidates"]:
            cells = f"{r['accuracy']:.3f} | ±{r['ci95']:.3f} | {r['nll']:.3f} | {r['seconds']:.2f}"
            print(f"| {r['method']} | {cells} |")
    b = report.get("budget")
    for name, why in report.get("skipped", {}).items():
        used = b["seconds"].get(name) if b else None
        print(f"  skipped: {name} ({why})" + ("" if used is None else f" [{used:.1f} s]"))
    if b:
        print(
            f"budget {b['budget_s']:g} s: {b['spent_s']:.1f} s cross-validating, "
            f"~{b['final_fit_s']:.1f} s kept for the final fit, {b['left_s']:.1f} s left "
            f"(shared features: {b['shared_s']:.1f} s, outside the budget)"
        )
    print(f"auto chose {report['method']!r}: {report['reason']} (report: {out})")


def _budget(text: str) -> float:
    """``"90"``, ``"90s"``, ``"10m"``, ``"1h"`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 10m or 1h, got {text!r}") from exc


def _cmd_fit(args: argparse.Namespace) -> int:
    from focusshot.locking import hold
    from focusshot.methods.request import fit_options

    options = fit_options(args.method, _method_options(args))  # the method's own, checked once
    with hold(f"{args.output}.lock", f"classifier {args.output}"):  # one writer of the file
        return _fit_and_save(args, options)


def _fit_and_save(args: argparse.Namespace, options: dict[str, Any]) -> int:
    from focusshot.api import fit

    clf = fit(
        args.support,
        backbone=args.backbone,
        method=args.method,
        options=options or None,
        pretrained=not args.random_weights,
        seed=args.seed,
        progress=not args.quiet,
        cache_dir=args.cache_dir,
        calibrate=args.calibrate,
        skip_bad=args.skip_bad,
        strict=args.strict,
        budget_s=args.budget,
        reject=args.reject,
        reject_tpr=args.reject_tpr,
        open_score=args.open_score,
    )
    path = clf.save(args.output)
    if "auto" in clf.info:
        from focusshot.auto import write_report

        _print_auto(clf.info["auto"], write_report(clf.info["auto"], path))
    print(f"fitted {clf.method} on {len(clf.class_names)} classes; classifier written to {path}")
    skipped = clf.info["fitted_on"]["skipped_images"]
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped[:5])}", file=sys.stderr)
    if args.calibrate:
        c = clf.info["calibration"]
        print(
            f"temperature {c['temperature']:.3f} (validation NLL {c['validation_nll_before']:.3f} -> "
            f"{c['validation_nll_after']:.3f})"
        )
    if "reject" in clf.info:
        _print_reject(clf.info["reject"])
    return 0


def _print_reject(r: dict[str, Any]) -> None:
    """The rejection threshold a classifier file stores (``info["reject"]``), as one line."""
    how = "set by hand" if r["chosen_by"] == "given" else r["chosen_by"]
    how += f", {r['rule']} rule" if "rule" in r else ""
    if "rechosen_by" in r:
        how = f"by {r['rechosen_by']}: {how}"
    found = ""
    if "auroc" in r:
        found = f"; there: AUROC {r['auroc']:.3f}, TPR {r['tpr']:.3f}, FPR {r['fpr']:.3f}"
    print(f"rejects below {r['score']} = {r['threshold']:.6g} ({how}{found})")


def _reject(text: str) -> float | str:
    """``--reject``: ``auto`` or a number."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {text!r}") from exc


def _boxes_by_path(manifest: str, paths: list[str]) -> dict[str, Any]:
    """``paths`` -> their box in ``manifest`` (a CSV/JSONL manifest as ``fit`` reads; paths compared
    resolved, labels ignored); a path the manifest does not list gets ``None``."""
    from focusshot.data.sources import open_source

    data = open_source(manifest)
    parts = data.values() if isinstance(data, dict) else [data]
    known = {
        str(Path(p).resolve()): b
        for part in parts
        for p, b in zip(part.paths, part.boxes or [None] * len(part.paths), strict=True)
    }
    return {p: known.get(str(Path(p).resolve())) for p in paths}


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from focusshot.classifier import UNKNOWN, Classifier
    from focusshot.data.images import list_images

    clf = Classifier.load(args.classifier)
    score, threshold = clf.rejection(False if args.no_reject else args.reject, args.open_score)
    paths = list_images(args.images if len(args.images) > 1 else args.images[0])
    if not paths:
        print(f"error: no image files found in {' '.join(args.images)}", file=sys.stderr)
        return 2
    emb = clf.embed(paths, progress=not args.quiet)
    regions = clf.regions(emb.paths, _boxes_by_path(args.boxes, emb.paths) if args.boxes else None)
    probs, kept, bad = clf.probabilities(emb.features, regions), emb.paths, emb.bad
    extra = {k: v.tolist() for k, v in clf.uncertainty(emb.features).items()}
    if threshold is not None or args.open_score:  # the open-set score; unknown below the threshold
        extra = {"score": clf.open_scores(emb.features, [score], regions)[score].tolist(), **extra}
    for err in bad:
        print(f"could not read {err.path}: {err.reason}", file=sys.stderr)
    k = min(args.top_k, len(clf.class_names))
    values, idx = probs.topk(k, dim=-1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape: a file name that is not valid UTF-8 is written back as its original bytes
    with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "label", "confidence", *extra]
            + [f"top{i + 1}_{w}" for i in range(k) for w in ("label", "p")]
        )
        for row, (p, v, i) in enumerate(zip(kept, values, idx, strict=True)):
            top = [
                x for c, pv in zip(i, v, strict=True) for x in (clf.class_names[int(c)], f"{float(pv):.6f}")
            ]
            more = [f"{extra[key][row]:.6f}" for key in extra]
            rejected = threshold is not None and extra["score"][row] < threshold
            label = UNKNOWN if rejected else clf.class_names[int(i[0])]
            writer.writerow([p, label, f"{float(v[0]):.6f}", *more, *top])
    print(f"wrote {len(kept)} predictions to {out}")
    return 2 if bad else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from focusshot.report.html import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from focusshot.data.images import list_images
    from focusshot.explain import explain

    boxes = None
    if args.boxes:
        found = list_images(args.images if len(args.images) > 1 else args.images[0])
        boxes = _boxes_by_path(args.boxes, [str(f) for f in found])
    info = explain(
        args.classifier,
        args.images,
        args.output,
        coverage=args.coverage,
        progress=not args.quiet,
        boxes=boxes,
    )
    kind = info["relevance"]["kind"]
    for row in info["images"]:
        cells = len(row["relevance_cells"])
        line = f"{row['path']}: {row['predicted']}; {args.coverage:.0%} of its {kind} map on {cells} cells"
        if "patches_before" in row:
            before, after = row["patches_before"], row["patches_after"]
            line += f"; [CLS] attention on {before} patches before, {after} after adapting"
        print(line)
    print(f"wrote {len(info['images'])} figures and explain.json to {args.output}")
    return 0


def _cmd_export_adapter(args: argparse.Namespace) -> int:
    from focusshot.api import export_adapter

    out = export_adapter(args.classifier, args.output)
    print(f"wrote the {args.format} LoRA adapter of {args.classifier} to {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from focusshot.export_onnx import export_onnx

    out = export_onnx(args.classifier, args.output, check=not args.no_check)
    print(f"wrote {out}: {args.classifier} as one {args.format} graph (images -> logits, probabilities)")
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    from focusshot.locking import hold
    from focusshot.update import update_file

    output = args.output or args.classifier
    with hold(f"{output}.lock", f"classifier {output}"):  # one writer of the file
        out, clf = update_file(
            args.classifier,
            args.add,
            args.remove,
            output=output,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
            progress=not args.quiet,
            reject=args.reject,
            reject_tpr=args.reject_tpr,
            open_score=args.open_score,
        )
    record = clf.info["updates"][-1]
    added = ", ".join(f"{n} ({k} images)" for n, k in record["added"].items()) or "none"
    print(f"added {added}; removed {', '.join(record['removed']) or 'none'}")
    for note in record["notes"]:
        print(f"note: {note}")
    print(f"wrote {out}: {record['classes']} classes from {record['images']} images")
    if "reject" in clf.info:
        _print_reject(clf.info["reject"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="focusshot", description=focusshot.__doc__)
    parser.add_argument("--version", action="version", version=f"focusshot {focusshot.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="list the backbone registry")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("embed", help="write pooled features of images to a safetensors file")
    p.add_argument("--backbone", required=True, help="registry name, hf:<repo id>, or a local checkpoint")
    p.add_argument(
        "--images", required=True, nargs="+", help="a folder, a text file of paths, or image files"
    )
    p.add_argument("--output", required=True, help="output .safetensors file")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    _add_scale_args(p)
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse data whose identical image bytes appear under two labels, in two splits or twice",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip undecodable images (logged) instead of failing"
    )
    p.add_argument("--random-weights", action="store_true", help="random weights instead of pretrained ones")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_embed)

    from focusshot.evaluation.cache import AUTOCAST_CHOICES, COMPILE_CHOICES
    from focusshot.evaluation.protocols import EpisodicConfig, SplitConfig

    d = EpisodicConfig()
    p = sub.add_parser("evaluate", help="compare methods under the episodic or split protocol")
    p.add_argument("--backbone", required=True, help="registry name, hf:<repo id>, or a local checkpoint")
    p.add_argument(
        "--data", required=True, help="class folders (with train/val/test), a manifest, or a split file"
    )
    p.add_argument("--protocol", choices=["episodic", "split"], default="episodic")
    p.add_argument(
        "--method",
        default="protonet",
        help="comma-separated methods or groups, e.g. all, tuning (`focusshot methods` lists both)",
    )
    _config_args(p, EpisodicConfig, ("ways",))
    p.add_argument(
        "--shots", type=_ints, default=[d.shots], help="K (split protocol: a comma list, e.g. 1,2,4,8,16)"
    )
    _config_args(p, EpisodicConfig, ("queries", "episodes", "seed"))
    _config_args(p, SplitConfig, ("seeds",), "split protocol: ")
    p.add_argument("--split", default=None, help="episodic: the split to draw episodes from (default test)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse data whose identical image bytes appear under two labels, in two splits or twice",
    )
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument(
        "--test-data",
        action="append",
        default=None,
        metavar="SOURCE",
        help="split protocol: also test every fit on this data (same class names; its test split if it "
        "has splits): a distribution-shift test set, e.g. world:clutter?split=1 (repeatable)",
    )
    p.add_argument("--output", default="runs/evaluate", help="results folder (a rerun resumes it)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $FOCUSSHOT_CACHE/features)")
    p.add_argument("--random-weights", action="store_true", help="random weights instead of pretrained ones")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_scale_args(p)
    p.add_argument(
        "--compile",
        choices=list(COMPILE_CHOICES),
        default=COMPILE_CHOICES[0],
        help="torch.compile the frozen forward for extraction: auto (when the image count makes the "
        "compile pay, about 1,500 ViT-B/16 images; small models never), always, never",
    )
    p.add_argument(
        "--autocast",
        choices=list(AUTOCAST_CHOICES),
        default="none",
        help="extract features under torch.autocast in bf16 or fp16 (GPU: faster; cached apart from "
        "float32 features); default none (float32)",
    )
    p.add_argument(
        "--open-ways",
        type=int,
        default=0,
        metavar="U",
        help="open-set episodes: U more classes per episode whose images join the queries as unknown "
        "ones; reports AUROC, FPR@95%%TPR and open-set accuracy per method and score",
    )
    p.add_argument(
        "--open-queries",
        type=int,
        default=None,
        metavar="M",
        help="--open-ways: unknown queries per episode (default: as many as the known ones, N*Q)",
    )
    p.add_argument(
        "--open-classes",
        default=None,
        metavar="A,B",
        help="split protocol: hold these classes (comma-separated names) out of training; their test "
        "images are the unknown queries",
    )
    _add_open_score_arg(
        p, "open-set protocol: comma-separated scores to measure", "every score each method gives"
    )
    _add_option_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("fit", help="fit a classifier on a folder of labelled support images")
    p.add_argument("support", help="folder with one sub-folder per class (or a manifest)")
    p.add_argument("--backbone", required=True, help="registry name, hf:<repo id>, or a local checkpoint")
    p.add_argument(
        "--method",
        default="protonet",
        help="a method (see `focusshot methods`), or auto: cross-validate the candidates on the support set",
    )
    p.add_argument(
        "--budget",
        type=_budget,
        default=60.0,
        help="--method auto: time for choosing, every candidate and the final fit included "
        "(e.g. 90s, 10m; default 60s)",
    )
    p.add_argument("--output", required=True, help="classifier file to write (.safetensors)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random in the fit")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $FOCUSSHOT_CACHE/features)")
    p.add_argument("--random-weights", action="store_true", help="random weights instead of pretrained ones")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit a temperature on the validation split (temperature scaling); predict applies it",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse data whose identical image bytes appear under two labels, in two splits or twice",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable images (listed and counted) instead of failing",
    )
    p.add_argument(
        "--reject",
        type=_reject,
        default=None,
        metavar="auto|THRESHOLD",
        help="store a threshold of the open-set score below which predict writes unknown: auto "
        "chooses it by leave-one-class-out on the support set (methods that do not train, 3+ classes; "
        "at one image per class augmented views of the support play the known images), a number "
        "sets it",
    )
    p.add_argument(
        "--reject-tpr",
        type=float,
        default=None,
        metavar="RATE",
        help="--reject auto: the threshold that keeps this fraction of known images (e.g. 0.95) "
        "instead of the one that balances the two error rates",
    )
    _add_open_score_arg(p, "the score --reject thresholds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_option_args(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("predict", help="classify images with a fitted classifier")
    p.add_argument("classifier", help="a file written by `focusshot fit`")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument(
        "--output",
        required=True,
        help="CSV to write: path, label (unknown below a rejection threshold), confidence, the open-set "
        "score (with a threshold or --open-score), the method's uncertainty columns (APT: entropy, "
        "mutual_information), top-k",
    )
    p.add_argument("--top-k", type=int, default=5, help="how many ranked labels per image (default 5)")
    reject = p.add_mutually_exclusive_group()
    reject.add_argument(
        "--reject",
        type=float,
        default=None,
        metavar="THRESHOLD",
        help="write unknown where the open-set score is below THRESHOLD (default: the threshold "
        "fit --reject stored, if any)",
    )
    reject.add_argument("--no-reject", action="store_true", help="ignore the stored rejection threshold")
    _add_open_score_arg(p, "the score column and --reject read")
    p.add_argument(
        "--boxes",
        metavar="MANIFEST",
        help="a manifest (CSV or JSONL, as fit reads; labels ignored) giving each image's box, for a "
        "method that reads a box per image (FALIP, the drawn prompts, FORT with box prompts)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "explain",
        help="show where a classifier's prediction comes from: a relevance map per image (and, for "
        "methods that tune the backbone, FORT prompts and attention before/after)",
    )
    p.add_argument("classifier", help="a file written by `focusshot fit` (any method)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--output", required=True, help="folder for one PNG per image and explain.json")
    p.add_argument(
        "--coverage",
        type=float,
        default=0.95,
        help="share of each map's mass the drawn cells cover (default 0.95)",
    )
    p.add_argument(
        "--boxes",
        metavar="MANIFEST",
        help="a manifest (CSV/JSONL, as fit reads) giving each image's box, for methods that read boxes",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("export-adapter", help="write a classifier's LoRA adapter for Hugging Face peft")
    p.add_argument("classifier", help="a file written by `focusshot fit` with lora or lora+fort")
    p.add_argument("--format", choices=["peft"], default="peft", help="adapter format (only peft)")
    p.add_argument("--output", required=True, help="adapter directory to write")
    p.set_defaults(func=_cmd_export_adapter)

    p = sub.add_parser(
        "export", help="write a fitted classifier as one ONNX graph (images -> logits, probabilities)"
    )
    p.add_argument("classifier", help="a file written by `focusshot fit`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="graph format (only onnx)")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not run the written graph once with onnxruntime against the classifier",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "update",
        help="add classes to a fitted classifier, remove them, or set its rejection threshold, "
        "without a new fit",
    )
    p.add_argument("classifier", help="a file written by `focusshot fit` with a method that trains nothing")
    p.add_argument(
        "--add",
        nargs="+",
        default=[],
        metavar="NEW_CLASS_DIR",
        help="one folder of images per new class; the folder's name is the class name",
    )
    p.add_argument(
        "--remove", action="append", default=[], metavar="NAME", help="a class to remove (repeatable)"
    )
    p.add_argument(
        "--reject",
        type=_reject,
        default=None,
        metavar="auto|THRESHOLD",
        help="set the rejection threshold of the updated classifier: auto chooses it by "
        "leave-one-class-out on the kept support features (as fit --reject auto on all the images), "
        "a number sets it (default: a stored auto threshold is chosen again, any other dropped)",
    )
    p.add_argument(
        "--reject-tpr",
        type=float,
        default=None,
        metavar="RATE",
        help="--reject auto: the threshold that keeps this fraction of known images (else the "
        "balanced one, as fit; a stored rate is not carried over)",
    )
    _add_open_score_arg(p, "the score --reject thresholds", "the stored threshold's, else the method's own")
    p.add_argument("--output", default=None, help="classifier file to write (default: update CLASSIFIER)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $FOCUSSHOT_CACHE/features)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_update)

    p = sub.add_parser("world", help="FocusWorld: pretrain world-clip or world-dino")
    wsub = p.add_subparsers(dest="world_command", required=True)
    w = wsub.add_parser(
        "pretrain",
        help="pretrain on FocusWorld base classes: world-clip(-deep) contrastively (CLIP), "
        "world-dino by self-distillation (DINO)",
    )
    _add_pretrain_args(w)
    w.add_argument("--output", required=True, help="weights file to write (.safetensors, float16)")
    w.set_defaults(func=_cmd_world_pretrain)
    z = wsub.add_parser(
        "zeroshot", help="zero-shot accuracy of a CLIP over all classes of a suite or dataset"
    )
    z.add_argument("--backbone", default="world-clip", help="a CLIP backbone (default world-clip)")
    z.add_argument("--data", default="world:single", help="a FocusWorld suite or any data source")
    z.set_defaults(func=_cmd_world_zeroshot)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: one self-contained page of a run")
    p.add_argument("run_dir", help="a folder written by `focusshot evaluate` (or holding *.auto.json)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("methods", help="list the methods evaluate and fit accept, with their options")
    p.add_argument("--verbose", action="store_true", help="also list the options every tuning method shares")
    p.set_defaults(func=_cmd_methods)
    return parser


def _pretrain_configs() -> dict[str, type]:
    """``--arch`` value -> the dataclass of its pretraining settings."""
    from focusshot.backbones.world_clip import ARCHS as CLIP_ARCHS
    from focusshot.backbones.world_dino import ARCHS as DINO_ARCHS
    from focusshot.training.pretrain_clip import PretrainConfig
    from focusshot.training.pretrain_dino import DinoConfig

    return {**{a: PretrainConfig for a in CLIP_ARCHS}, **{a: DinoConfig for a in DINO_ARCHS}}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _add_pretrain_args(p: argparse.ArgumentParser) -> None:
    """Options of every pretraining dataclass; each says which ``--arch`` it applies to and its default."""
    configs = _pretrain_configs()
    fields: dict[str, dict[type, dataclasses.Field]] = {}
    for cls in dict.fromkeys(configs.values()):
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, {})[cls] = f
    for name, per_cls in fields.items():
        first = next(iter(per_cls.values()))
        if name == "arch":
            help_ = "world-clip, world-clip-deep (CLIP) or world-dino (DINO)"
            p.add_argument("--arch", choices=list(configs), default=first.default, help=help_)
            continue
        defaults = "; ".join(
            f"default {f.default} for " + ", ".join(a for a, c in configs.items() if c is cls)
            for cls, f in per_cls.items()
        )
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=_floats if isinstance(first.default, tuple) else type(first.default),
            default=None,
            help=f"{first.metadata.get('help', '')} ({defaults})",
        )


def _cmd_world_pretrain(args: argparse.Namespace) -> int:
    from focusshot.training.pretrain_clip import PretrainConfig, pretrain
    from focusshot.training.pretrain_dino import pretrain_dino

    configs = _pretrain_configs()
    cls = configs[args.arch]
    own = {f.name for f in dataclasses.fields(cls)}
    every = {f.name for c in set(configs.values()) for f in dataclasses.fields(c)}
    given = {n: getattr(args, n) for n in every if getattr(args, n) is not None}
    foreign = sorted(f"--{n.replace('_', '-')}" for n in set(given) - own)
    if foreign:
        print(f"error: {', '.join(foreign)} do not apply to --arch {args.arch}", file=sys.stderr)
        return 2
    cfg = cls(**given)
    info = (pretrain if cls is PretrainConfig else pretrain_dino)(cfg, args.output)
    print(f"wrote {args.output} after {cfg.steps} steps in {info['seconds']} s (final {info['final']})")
    return 0


def _cmd_world_zeroshot(args: argparse.Namespace) -> int:
    from focusshot.backbones.registry import create_backbone
    from focusshot.data.sources import LabelledImages, open_source
    from focusshot.evaluation.zeroshot import zero_shot_accuracy

    data = open_source(args.data)
    if not isinstance(data, LabelledImages):
        data = data.get("test") or next(iter(data.values()))
    res = zero_shot_accuracy(create_backbone(args.backbone), data)
    print(
        f"zero-shot {args.backbone} on {args.data}: top-1 {res['top1']:.3f}, top-5 {res['top5']:.3f} over "
        f"{res['classes']} classes ({res['images']} images; chance {res['chance']:.3f})"
    )
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from focusshot.methods.base import (
        describe_prefixes,
        list_methods,
        method_class,
        method_groups,
        option_help,
    )

    names = list_methods()  # registers every recipe, frozen-feature heads first
    prefixes = describe_prefixes(names)
    from focusshot.methods.finetune import FinetuneMethod, FinetuneOptions

    shared_defaults = {opt: default for opt, default, _ in option_help(FinetuneOptions)}

    for name in names:
        cls = method_class(name)
        prefix = prefixes[name]
        flags = ["trains" if cls.trains else "training-free"]
        if cls.needs_text:
            flags.append("needs a CLIP backbone")
        flags.append(f"open-set score {cls.open_score}")
        print(f"{name:<18} prefix={prefix:<28} {', '.join(flags)}")
        print(f"{'':<18} {cls.summary}")
        opts = option_help(cls.Options)
        shared = issubclass(cls, FinetuneMethod) and not args.verbose
        for opt, default, text in opts:
            # shared tuning options are shown where the recipe changes their default
            if shared and opt in shared_defaults and default == shared_defaults[opt]:
                continue
            print(f"{'':<20} {name}.{opt} = {default!r}: {text}")
    if not args.verbose:
        print("\nevery tuning method also takes: " + ", ".join(shared_defaults) + " (--verbose shows them)")
    print("\ngroups (--method GROUP):")
    for group, members in method_groups().items():
        print(f"  {group:<8} {members}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``focusshot`` command."""
    import os

    from focusshot import distributed

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 1) > 1 and distributed.LAUNCHED not in os.environ:
        if "WORLD_SIZE" in os.environ:
            print("error: --workers inside a torchrun job: let torchrun start the processes", file=sys.stderr)
            return 2
        return distributed.launch_local(args.workers, _strip_workers(argv))
    from focusshot.locking import OutputBusy

    try:
        code = int(args.func(args))
    except (ValueError, FileNotFoundError, OutputBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    distributed.teardown()  # every rank waits for rank 0's files, then leaves the process group
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
