"""One process against ``torchrun --nproc-per-node 2`` on a method that trains, same total threads.

Run by hand (not part of the tests)::

    python benchmarks/bench_scale_out.py --method lora --episodes 40

Both runs evaluate ``--method`` with world-clip on ``world:clutter`` (5-way 1-shot, 15 queries,
seed 0) into fresh folders, after a warm-up run has built the suite and filled the feature
cache, so the wall times compare the episodes (plus each command's start-up, imports and
process-group set-up, stated apart). The one-process run gets ``--threads`` CPU threads; the
two ranks get ``threads / 2`` each. The merged rows must equal the one-process rows (timings
aside). Writes ``benchmarks/results/scale_out/<method>_world_clip.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import focusshot
from focusshot.evaluation.compare import run_differences
from focusshot.evaluation.results import comparable_rows


def _run(cmd: list[str], threads: int, cache: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), FOCUSSHOT_CACHE=cache)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="lora")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="total CPU threads of each run")
    parser.add_argument("--cache", default=None, help="FOCUSSHOT_CACHE (default: a temporary folder)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="focusshot-scale-")
    work = Path(tempfile.mkdtemp(prefix="focusshot-scale-runs-"))
    base = [
        "evaluate", "--backbone", "world-clip", "--data", "world:clutter", "--method", args.method,
        "--ways", "5", "--shots", "1", "--queries", "15", "--seed", "0", "--quiet", "--no-report",
    ]  # fmt: skip
    one_cmd = [sys.executable, "-m", "focusshot"]
    two_cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "focusshot",
    ]
    # warm-up: the suite and the cache entries, and the start-up costs of each launcher
    warm = _run([*one_cmd, *base, "--episodes", "1", "--output", str(work / "warm")], args.threads, cache)
    start_one = _run([*one_cmd, "backbones"], args.threads, cache)
    start_two = _run([*two_cmd, "backbones"], max(1, args.threads // 2), cache)
    runs = {}
    for name, cmd, threads in (
        ("one_process", one_cmd, args.threads),
        ("torchrun_2", two_cmd, max(1, args.threads // 2)),
    ):
        out = work / name
        wall = _run([*cmd, *base, "--episodes", str(args.episodes), "--output", str(out)], threads, cache)
        timing = json.loads((out / "timing.json").read_text())[args.method]
        runs[name] = {
            "wall_s": wall,
            "threads_per_process": threads,
            "mean_episode_s": timing["seconds_per_episode"],
            "summary": (out / "summary.md").read_text(),
        }
    same = comparable_rows(work / "one_process") == comparable_rows(work / "torchrun_2")
    result = {
        "command": " ".join(["bench_scale_out.py", *sys.argv[1:]]),
        "method": args.method,
        "episodes": args.episodes,
        # bytes are guaranteed only at equal thread counts (here 2 vs 1): the tolerance always
        "identical_rows": same,
        "rows_within_tolerance": not run_differences(work / "one_process", work / "torchrun_2"),
        "speedup_wall": runs["one_process"]["wall_s"] / runs["torchrun_2"]["wall_s"],
        "startup_s": {"one_process": start_one, "torchrun_2": start_two},
        "warmup_s": warm,
        "runs": runs,
        "focusshot": focusshot.__version__,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    out = Path(
        args.output or Path(__file__).parent / "results" / "scale_out" / f"{args.method}_world_clip.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.method}, {args.episodes} episodes: one process {runs['one_process']['wall_s']:.1f} s, "
        f"torchrun x2 {runs['torchrun_2']['wall_s']:.1f} s ({result['speedup_wall']:.2f}x); "
        f"identical rows: {same}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
