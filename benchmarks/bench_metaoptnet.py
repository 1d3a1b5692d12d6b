"""MetaOptNet's Crammer–Singer SVM: our batched torch solver against cvxpy on the same problems.

Run by hand (not part of the tests)::

    python benchmarks/bench_metaoptnet.py                      # CPU, 32 episodes, 20-way 5-shot, 768-d
    python benchmarks/bench_metaoptnet.py --device cuda        # adds a GPU run of our solver

Problems: 20-way 5-shot episodes of 768-d random-but-clustered features (class means drawn from
N(0, I / D), per-example noise of ``--spread`` times that scale, plus a shared offset of
``--offset`` times it, as real backbone features share a large common component). For each
scenario (no offset, and the ``--offset`` one):

* ours, batched: ``MetaOptNet(C).fit`` on all E episodes at once, features (E, N, D); time / E;
* ours, single: the same, one episode at a time; mean time per episode;
* cvxpy: the same dual QP (variables alpha (N, C), ``alpha <= C Y``, rows summing to zero,
  objective through the Cholesky factor of the Gram matrix, cvxpy's default solver) on the first
  ``--cvxpy-episodes`` episodes; wall time per episode (what a caller pays: canonicalisation +
  solve) and solver-only time.

Both solutions are checked: same query predictions, max |alpha - alpha_cvxpy|, relative difference of
the dual objectives. Best of ``--repeats`` runs for ours. Results go to
``benchmarks/results/metaoptnet.json`` (with versions and this command) and one line is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from focusshot.heads import create_head
from focusshot.heads.qp import solve_crammer_singer_dual


def episodes(
    count: int, way: int, shot: int, query: int, dim: int, spread: float, offset: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E, N, D) support, (E, N) labels, (E, M, D) queries, (E, M) query labels; float64."""
    g = torch.Generator().manual_seed(seed)
    scale = dim**-0.5
    means = scale * torch.randn(count, way, dim, generator=g, dtype=torch.float64)
    shared = offset * scale * torch.randn(count, 1, dim, generator=g, dtype=torch.float64)

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(way).repeat(k).expand(count, -1).contiguous()
        x = torch.gather(means, 1, labels[..., None].expand(-1, -1, dim))
        noise = spread * scale * torch.randn(x.shape, generator=g, dtype=torch.float64)
        return x + noise + shared, labels

    xs, ys = draw(shot)
    xq, yq = draw(query)
    return xs, ys, xq, yq


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ours(head, xs: torch.Tensor, ys: torch.Tensor, repeats: int, batched: bool) -> tuple[float, list]:
    """Best-of-``repeats`` seconds per episode, and the fitted classifiers of the last run."""
    device = xs.device
    if batched:

        def fit() -> list:
            return [head.fit(xs, ys)]

    else:

        def fit() -> list:
            return [head.fit(x, y) for x, y in zip(xs, ys, strict=True)]

    fit()  # warm-up
    best = float("inf")
    fitted: list = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fitted = fit()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best / xs.shape[0], fitted


def cvxpy_solve(x: np.ndarray, y: np.ndarray, way: int, C: float) -> dict:
    """The Crammer–Singer dual in cvxpy: max -1/2 ||L^T alpha||^2 + <Y, alpha>, L L^T = X X^T."""
    import cvxpy as cp

    n = x.shape[0]
    onehot = np.eye(way)[y]
    gram = x @ x.T
    factor = np.linalg.cholesky(gram + 1e-12 * np.trace(gram) / n * np.eye(n))
    alpha = cp.Variable((n, way))
    prob = cp.Problem(
        cp.Maximize(-0.5 * cp.sum_squares(factor.T @ alpha) + cp.sum(cp.multiply(onehot, alpha))),
        [alpha <= C * onehot, cp.sum(alpha, axis=1) == 0],
    )
    start = time.perf_counter()
    prob.solve()
    wall = time.perf_counter() - start
    return {
        "alpha": alpha.value,
        "wall": wall,
        "solve": prob.solver_stats.solve_time or float("nan"),
        "solver": prob.solver_stats.solver_name,
    }


def scenario(args: argparse.Namespace, offset: float, devices: list[torch.device]) -> dict:
    xs, ys, xq, yq = episodes(
        args.episodes, args.way, args.shot, args.query, args.dim, args.spread, offset, args.seed
    )
    head = create_head("metaoptnet", C=args.C, tol=args.tol)
    out: dict = {"offset": offset, "ours": {}}
    reference = None
    for device in devices:
        s, q = xs.to(device), xq.to(device)
        per_batched, fitted_b = time_ours(head, s, ys.to(device), args.repeats, batched=True)
        per_single, fitted_s = time_ours(head, s, ys.to(device), max(1, args.repeats // 2), batched=False)
        fb = fitted_b[0]
        pred_b = fb.predict(q).cpu()
        pred_s = torch.stack([f.predict(qq).cpu() for f, qq in zip(fitted_s, q, strict=True)])
        out["ours"][device.type] = {
            "batched_s_per_episode": per_batched,
            "single_s_per_episode": per_single,
            "iterations_batched": fb.info["iterations"],
            "max_relative_gap": fb.info["max_relative_gap"],
            "single_equals_batched_predictions": bool(torch.equal(pred_b, pred_s)),
            "query_accuracy": float((pred_b == yq).double().mean()),
        }
        if reference is None:
            reference = (fb, pred_b)
    assert reference is not None
    fb, pred_b = reference

    # cvxpy on the first episodes; compare solutions with ours
    k = min(args.cvxpy_episodes, args.episodes)
    onehot = torch.nn.functional.one_hot(ys[:k], args.way).double()
    ours = solve_crammer_singer_dual(xs[:k] @ xs[:k].transpose(1, 2), onehot, args.C, tol=args.tol)
    walls, solves, alpha_err, obj_err, same = [], [], [], [], True
    solver = ""
    for e in range(k):
        ref = cvxpy_solve(xs[e].numpy(), ys[e].numpy(), args.way, args.C)
        solver = ref["solver"]
        walls.append(ref["wall"])
        solves.append(ref["solve"])
        a_ref = torch.from_numpy(ref["alpha"])
        alpha_err.append(float((a_ref - ours.alpha[e]).abs().max()))
        gram = xs[e] @ xs[e].T
        d_ref = float(-0.5 * (a_ref * (gram @ a_ref)).sum() + (a_ref * onehot[e]).sum())
        d_ours = float(ours.dual_objective[e])
        obj_err.append(abs(d_ours - d_ref) / abs(d_ref))
        w_ref = a_ref.T @ xs[e]
        same &= bool(torch.equal((xq[e] @ w_ref.T).argmax(-1), pred_b[e]))
    wall = float(np.mean(walls))
    solve = float(np.mean(solves))
    out["cvxpy"] = {
        "solver": solver,
        "episodes": k,
        "wall_s_per_episode": wall,
        "solver_only_s_per_episode": solve,
    }
    out["agreement"] = {
        "same_predictions": same,
        "max_abs_alpha_diff": max(alpha_err),
        "max_rel_dual_objective_diff": max(obj_err),
        "alpha_scale": args.C,
    }
    first = devices[0].type
    out["speedup_vs_cvxpy_wall"] = {
        dev: {
            "batched": wall / res["batched_s_per_episode"],
            "single": wall / res["single_s_per_episode"],
        }
        for dev, res in out["ours"].items()
    }
    out["speedup_vs_cvxpy_solver_only"] = {
        "batched": solve / out["ours"][first]["batched_s_per_episode"],
        "single": solve / out["ours"][first]["single_s_per_episode"],
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--way", type=int, default=20)
    p.add_argument("--shot", type=int, default=5)
    p.add_argument("--query", type=int, default=15, help="queries per class")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--spread", type=float, default=1.0, help="noise scale relative to the class means")
    p.add_argument("--offset", type=float, default=2.0, help="shared offset scale of the second scenario")
    p.add_argument("--C", type=float, default=0.1, help="SVM cost (MetaOptNet's C_reg)")
    p.add_argument("--tol", type=float, default=1e-6, help="relative duality gap of our solver")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cvxpy-episodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: our solver on CPU and GPU")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "metaoptnet.json")
    args = p.parse_args()

    import cvxpy

    devices = [torch.device("cpu")]
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda given, but CUDA is not available")
        devices.append(torch.device("cuda"))
    scenarios = [scenario(args, 0.0, devices), scenario(args, args.offset, devices)]
    result = {
        "benchmark": "metaoptnet Crammer-Singer dual: focusshot batched FISTA solver vs cvxpy",
        "command": " ".join(["python", *sys.argv]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cvxpy": cvxpy.__version__,
            "numpy": np.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "scenarios": scenarios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for s in scenarios:
        parts = [f"offset={s['offset']:g}"]
        for dev, res in s["ours"].items():
            sp = s["speedup_vs_cvxpy_wall"][dev]
            parts.append(
                f"ours[{dev}] batched {res['batched_s_per_episode'] * 1e3:.2f} ms/ep ({sp['batched']:.0f}x), "
                f"single {res['single_s_per_episode'] * 1e3:.2f} ms/ep ({sp['single']:.0f}x), "
                f"{res['iterations_batched']} it"
            )
        c, a = s["cvxpy"], s["agreement"]
        parts.append(
            f"cvxpy[{c['solver']}] {c['wall_s_per_episode'] * 1e3:.0f} ms/ep "
            f"(solver only {c['solver_only_s_per_episode'] * 1e3:.0f} ms)"
        )
        parts.append(
            f"same predictions={a['same_predictions']} max|dalpha|={a['max_abs_alpha_diff']:.1e} "
            f"rel d(dual)={a['max_rel_dual_objective_diff']:.1e}"
        )
        print(f"metaoptnet {args.way}-way {args.shot}-shot {args.dim}-d: " + "; ".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
