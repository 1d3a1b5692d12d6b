"""CPU inference of an exported classifier: onnxruntime against torch eager and torch.compile.

Run by hand (not part of the tests)::

    python benchmarks/bench_onnx.py --backbones world-clip clip-vit-b16 --repeats 3

For each backbone a ProtoNet classifier is fitted on 4 classes x 4 synthetic images (the head is
tiny: the backbone is the cost) and exported with ``focusshot export --format onnx``
(:func:`focusshot.export_onnx.export_onnx`). ``world-clip`` is the shipped pretrained FocusWorld
model; ``clip-vit-b16`` is built with random weights (ViT-B/16's size and shapes: no pretrained
ViT installs here). The same graph (preprocessed images -> logits, probabilities) is then timed,
at batch 1 and batch 32, in turn and in one process, ``--repeats`` rounds, best round of each:

* ``onnxruntime``: an ``InferenceSession`` on the CPU provider, every optimisation on, as many
  intra-op threads as torch uses;
* ``eager``: :class:`focusshot.export_onnx.ExportGraph` under ``torch.inference_mode``;
* ``compiled``: the same graph under ``torch.compile(dynamic=False)`` (one compile per batch size,
  its time reported apart).

Outputs are checked equal (probabilities within 1e-4) before timing. Latency is the median
seconds per call; throughput is images per second. The ratios (onnxruntime and compiled against
eager) come from one run on one machine, so they compare; absolute numbers depend on the machine
and its load. Results: ``benchmarks/results/onnx/results.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "onnx"


def synthetic_classes(root: Path, classes: int = 4, per_class: int = 4, seed: int = 0) -> Path:
    """``classes`` folders of ``per_class`` random 64x64 PNGs (class ``c`` tinted)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(64, 64, 3, generator=g) * 120 + 30 * c).clamp(0, 255).to(torch.uint8)
            Image.fromarray(arr.numpy()).save(folder / f"{i}.png")
    return root


def _time(fn, repeats: int, seconds: float) -> float:
    """Best (over ``repeats`` rounds) median seconds per call of ``fn``; each round runs ``fn`` for
    about ``seconds`` (at least once)."""
    best = float("inf")
    for _ in range(repeats):
        calls: list[float] = []
        start = time.perf_counter()
        while not calls or time.perf_counter() - start < seconds:
            t = time.perf_counter()
            fn()
            calls.append(time.perf_counter() - t)
        best = min(best, statistics.median(calls))
    return best


def bench_backbone(name: str, batches: list[int], repeats: int, seconds: float, seed: int) -> dict:
    import onnxruntime as ort

    import focusshot
    from focusshot.export_onnx import ExportGraph, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = synthetic_classes(root / "support", seed=seed)
        t0 = time.perf_counter()
        clf = focusshot.fit(
            data,
            backbone=name,
            method="protonet",
            pretrained=name == "world-clip",
            seed=seed,
            cache_dir=root / "c",
        )
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = export_onnx(clf, root / "clf.onnx")
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = ExportGraph(clf).eval()
        crop = int(clf.backbone.preprocess.crop)
        params = sum(p.numel() for p in clf.backbone.parameters())
        rows = []
        for batch in batches:
            x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(seed))
            feed = {"images": x.numpy()}
            compiled = torch.compile(graph, dynamic=False)
            with torch.inference_mode():
                want = graph(x)[1]
                t0 = time.perf_counter()
                got_c = compiled(x)[1]
                compile_s = time.perf_counter() - t0
            got_o = torch.from_numpy(session.run(["probabilities"], feed)[0])
            err_o = float((got_o - want).abs().max())
            err_c = float((got_c - want).abs().max())
            assert err_o <= 1e-4 and err_c <= 1e-4, (name, batch, err_o, err_c)

            def run_eager(x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    graph(x)

            def run_compiled(x: torch.Tensor = x, compiled=compiled) -> None:
                with torch.inference_mode():
                    compiled(x)

            def run_ort(feed: dict = feed) -> None:
                session.run(["logits", "probabilities"], feed)

            timings = {}
            for label, fn in (("onnxruntime", run_ort), ("eager", run_eager), ("compiled", run_compiled)):
                timings[label] = _time(fn, repeats, seconds)
            row = {
                "batch": batch,
                "latency_s": timings,
                "images_per_s": {k: batch / v for k, v in timings.items()},
                "speedup_vs_eager": {k: timings["eager"] / v for k, v in timings.items()},
                "compile_s": compile_s,
                "max_abs_diff_probabilities": {"onnxruntime": err_o, "compiled": err_c},
            }
            rows.append(row)
            print(
                f"{name} batch {batch}: eager {timings['eager'] * 1e3:.1f} ms, onnxruntime "
                f"{timings['onnxruntime'] * 1e3:.1f} ms (x{row['speedup_vs_eager']['onnxruntime']:.2f}), "
                f"compiled {timings['compiled'] * 1e3:.1f} ms (x{row['speedup_vs_eager']['compiled']:.2f})",
                flush=True,
            )
        return {
            "backbone": name,
            "weights": "pretrained (shipped)" if name == "world-clip" else f"random (seed {seed})",
            "backbone_parameters": params,
            "crop": crop,
            "method": "protonet",
            "fit_s": fit_s,
            "export_s": export_s,
            "onnx_mb": size_mb,
            "rows": rows,
        }


def summary(result: dict) -> str:
    cfg = result["config"]
    lines = [
        "# ONNX export: CPU inference, onnxruntime against torch eager and torch.compile",
        "",
        f"`python benchmarks/bench_onnx.py {' '.join(cfg['argv'])}` on {result['machine']['cpu_count']} CPU "
        f"cores ({result['machine']['processor'] or result['machine']['machine']}), torch threads "
        f"{cfg['threads']}, seed {cfg['seed']}; torch {result['versions']['torch']}, onnxruntime "
        f"{result['versions']['onnxruntime']}, onnx {result['versions']['onnx']}. One process, one "
        "run: the ratios compare; the absolute times depend on the machine and its load (1-minute load "
        f"average {result['machine']['load_average_at_start'][0]:.1f} at the start, "
        f"{result['machine']['load_average_at_end'][0]:.1f} at the end, on "
        f"{result['machine']['cpu_count']} cores).",
        "",
        "A ProtoNet classifier (the backbone is the cost) exported with `focusshot export --format "
        "onnx`; the graph maps preprocessed images to logits and probabilities. Latency: median "
        "seconds per call, best of the rounds. Speed-up: eager latency / this latency.",
        "",
        "| backbone | params (every tower) | batch | eager ms | onnxruntime ms | compiled ms "
        "| onnxruntime speed-up | compiled speed-up | onnxruntime img/s | eager img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in result["backbones"]:
        for r in b["rows"]:
            lat, up, ips = r["latency_s"], r["speedup_vs_eager"], r["images_per_s"]
            lines.append(
                f"| {b['backbone']} ({b['weights']}) | {b['backbone_parameters'] / 1e6:.1f} M | {r['batch']} "
                f"| {lat['eager'] * 1e3:.1f} | {lat['onnxruntime'] * 1e3:.1f} | {lat['compiled'] * 1e3:.1f} "
                f"| {up['onnxruntime']:.2f} | {up['compiled']:.2f} | {ips['onnxruntime']:.1f} "
                f"| {ips['eager']:.1f} |"
            )
    lines += ["", "Export time and file size:", ""]
    for b in result["backbones"]:
        lines.append(f"- {b['backbone']}: export {b['export_s']:.1f} s, {b['onnx_mb']:.1f} MiB")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["world-clip", "clip-vit-b16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--repeats", type=int, default=3, help="rounds per measurement (best is kept)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per round (at least one call)")
    ap.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    import onnx
    import onnxruntime

    from focusshot.versions import versions

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    result = {
        "config": {
            "argv": argv,
            "backbones": args.backbones,
            "batches": args.batches,
            "repeats": args.repeats,
            "seconds": args.seconds,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "backbones": [
            bench_backbone(name, args.batches, args.repeats, args.seconds, args.seed)
            for name in args.backbones
        ],
    }
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "summary.md").write_text(summary(result))
    print(f"wrote {args.output / 'results.json'} and summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
