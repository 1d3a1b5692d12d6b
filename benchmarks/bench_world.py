"""FocusWorld scene generation speed (moved out of the tests: timings belong here, not in asserts).

Run by hand::

    python benchmarks/bench_world.py --scenes 500

Renders ``--scenes`` cluttered 64 px scenes with their masks and prints scenes per second; the
target is 100 scenes/s on the 2-core build machine (500 in under 5 s).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from focusshot.data import world as w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=500)
    args = ap.parse_args()
    pool = w.suite_classes("world:clutter")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(args.scenes):
        w.render_scene_full(w.sample_scene(rng, pool, 64, "world:clutter"))
    seconds = time.perf_counter() - start
    print(f"{args.scenes} scenes in {seconds:.2f} s: {args.scenes / seconds:.0f} scenes/s (target >= 100)")


if __name__ == "__main__":
    main()
