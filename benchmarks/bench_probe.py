"""The linear probe and MetaOptNet's SVM against scikit-learn on the same problems, one thread.

Run by hand (not part of the tests)::

    python benchmarks/bench_probe.py            # writes benchmarks/results/probe/{probe.json,summary.md}
    python benchmarks/bench_probe.py --quick    # a smoke run: two repeats, smaller sizes, not written

Everything runs on one CPU thread (``torch.set_num_threads(1)``, BLAS limited by threadpoolctl).
Features are synthetic, 512-d, seeded: class means N(0, I), a shared offset (``--offset`` N(0, I),
as real backbone features share a large common component), per-image noise ``--spread`` N(0, I),
all scaled so that a feature's norm is about ``--norm`` (unnormalised CLIP features are ~10).

**Logistic probe** (``--probe`` sizes, K-way S-shot; validation ``min(S, 4)`` images per class):

* ours: ``create_head("logistic").fit(support, val_features=, val_labels=)``: the 25-value C grid
  10^-6 .. 10^6, warm-started path, selection on validation, then temperature scaling (more work
  than the reference, which does no calibration);
* sklearn: for every C of the same grid, ``LogisticRegression(C=C, max_iter=1000)`` (multinomial,
  lbfgs; CLIP's probe code) fitted on the support set, validation accuracy and NLL from
  ``predict_proba``, the same selection rule; once at scikit-learn's default ``tol=1e-4``
  ("default") and once at ``tol=1e-6`` ("matched": the gradient test of our default ``tol``).

Objective gaps, per C: ``logistic_objective`` at each solution, relative to the lowest of all
solvers' solutions and of our own tight solve (``tol=1e-10``), and ours against each
scikit-learn run (``(ours - sklearn) / sklearn``; negative: ours is lower).

**MetaOptNet** (``--svm`` sizes): the training folds ``fit --method auto`` fits
(:func:`focusshot.auto.cv_folds`: leave-one-out up to 40 images, else stratified 5-fold), each
fitted alone as auto does: ours ``create_head("metaoptnet")`` (C = 0.1, relative duality gap 1e-6)
against scikit-learn's ``LinearSVC(multi_class="crammer_singer", fit_intercept=False, C=0.1)``
(LIBLINEAR's Crammer-Singer solver: the same primal) at its default ``tol=1e-4`` and at
``tol=1e-8``, and cvxpy (Clarabel, the dual QP) on the first ``--cvxpy-folds`` folds. Gaps compare
the primal objective ``1/2 ||W||^2 + C sum_n max_k (1 - delta + w_k.x_n - w_y.x_n)_+``.

Times are the best (and the median) of ``--repeats`` runs, ours and the references interleaved;
ratios are ours / reference from the same run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, cast  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from focusshot.auto import cv_folds  # noqa: E402
from focusshot.heads import create_head  # noqa: E402
from focusshot.heads.linear import LinearClassifier  # noqa: E402
from focusshot.heads.logistic import DEFAULT_C_GRID, fit_logistic_path, logistic_objective  # noqa: E402
from focusshot.versions import versions  # noqa: E402

OUT = Path(__file__).parent / "results" / "probe"
ROOT = Path(__file__).resolve().parent.parent


def _shown(path: Path) -> str:
    """``path`` as the record shows it: relative to the checkout when inside it (no machine paths)."""
    full = path.resolve()
    return str(full.relative_to(ROOT)) if full.is_relative_to(ROOT) else str(path)


def features(
    way: int, shot: int, val: int, dim: int, seed: int, spread: float, offset: float, norm: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support (way*shot, dim), labels, validation (way*val, dim), labels; float64, classes interleaved."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(way, dim, generator=g, dtype=torch.float64)
    shared = offset * torch.randn(1, dim, generator=g, dtype=torch.float64)
    scale = norm / math.sqrt(dim * (1.0 + spread**2 + offset**2))

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(way).repeat(k)
        x = means[y] + spread * torch.randn(len(y), dim, generator=g, dtype=torch.float64) + shared
        return scale * x, y

    xs, ys = draw(shot)
    xv, yv = draw(val)
    return xs, ys, xv, yv


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def summary_times(times: list[float]) -> dict[str, Any]:
    return {"best_s": min(times), "median_s": statistics.median(times), "runs_s": times}


# --------------------------------------------------------------------------- logistic probe


def sklearn_search(
    xs: np.ndarray, ys: np.ndarray, xv: np.ndarray, yv: np.ndarray, tol: float
) -> dict[str, Any]:
    """The C search a user writes with scikit-learn: fit per C, score validation, same selection rule."""
    from sklearn.linear_model import LogisticRegression

    fits, best, not_converged = [], None, 0
    for c in sorted(DEFAULT_C_GRID):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = LogisticRegression(C=c, max_iter=1000, tol=tol).fit(xs, ys)
        not_converged += sum("converge" in str(w.message) for w in caught)
        proba = model.predict_proba(xv)
        acc = float((proba.argmax(1) == yv).mean())
        nll = float(-np.log(np.clip(proba[np.arange(len(yv)), yv], 1e-300, None)).mean())
        key = (-acc, nll, c)
        if best is None or key < best:
            best = key
        fits.append((c, model.coef_.copy(), model.intercept_.copy(), int(model.n_iter_.max())))
    assert best is not None
    return {"fits": fits, "C": best[2], "val_accuracy": -best[0], "not_converged": not_converged}


def bench_logistic(way: int, shot: int, args: argparse.Namespace) -> dict[str, Any]:
    xs, ys, xv, yv = features(
        way, shot, min(shot, 4), args.dim, args.seed, args.spread, args.offset, args.norm
    )
    npx, npy, npxv, npyv = xs.numpy(), ys.numpy(), xv.numpy(), yv.numpy()
    head = create_head("logistic")
    runs: dict[str, list[float]] = {"ours": [], "sklearn_default": [], "sklearn_matched": []}
    last: dict[str, Any] = {}
    for _ in range(args.repeats):
        t, last["ours"] = timed(lambda: head.fit(xs, ys, val_features=xv, val_labels=yv))
        runs["ours"].append(t)
        t, last["sklearn_default"] = timed(lambda: sklearn_search(npx, npy, npxv, npyv, 1e-4))
        runs["sklearn_default"].append(t)
        t, last["sklearn_matched"] = timed(lambda: sklearn_search(npx, npy, npxv, npyv, 1e-6))
        runs["sklearn_matched"].append(t)
    path_times = []
    for _ in range(args.repeats):
        t, path = timed(lambda: list(fit_logistic_path(xs, ys, way, DEFAULT_C_GRID)))
        path_times.append(t)
    tight = list(fit_logistic_path(xs, ys, way, DEFAULT_C_GRID, tol=1e-10))

    def objectives(fits: list[tuple[Any, ...]]) -> list[float]:
        out = []
        for c, w, b, *_ in fits:
            w_t = torch.as_tensor(w, dtype=torch.float64)
            b_t = torch.as_tensor(b, dtype=torch.float64)
            out.append(float(logistic_objective(xs, ys, w_t, b_t, c)))
        return out

    objs = {
        "ours": objectives(path),
        "ours_tight": objectives(tight),
        "sklearn_default": objectives(last["sklearn_default"]["fits"]),
        "sklearn_matched": objectives(last["sklearn_matched"]["fits"]),
    }
    best = [min(v) for v in zip(*objs.values(), strict=True)]
    excess = {k: [(o - b) / abs(b) for o, b in zip(v, best, strict=True)] for k, v in objs.items()}
    vs = {
        ref: [(o - r) / abs(r) for o, r in zip(objs["ours"], objs[ref], strict=True)]
        for ref in ("sklearn_default", "sklearn_matched")
    }
    ours_fit = last["ours"]
    times = {k: summary_times(v) for k, v in runs.items()}
    times["ours_path_only"] = summary_times(path_times)
    return {
        "way": way,
        "shot": shot,
        "support": len(ys),
        "validation": len(yv),
        "dim": args.dim,
        "times": times,
        "ratio_best": {
            ref: times["ours"]["best_s"] / times[ref]["best_s"]
            for ref in ("sklearn_default", "sklearn_matched")
        },
        "ratio_median": {
            ref: times["ours"]["median_s"] / times[ref]["median_s"]
            for ref in ("sklearn_default", "sklearn_matched")
        },
        "objective": {
            "C": [row[0] for row in path],
            "values": objs,
            "excess_over_best": excess,
            "max_excess_over_best": {k: max(v) for k, v in excess.items()},
            "ours_vs": vs,
            "max_ours_vs": {k: max(v) for k, v in vs.items()},
        },
        "newton_steps": [row[3] for row in path],
        "sklearn_iterations": {
            ref: [row[3] for row in last[ref]["fits"]] for ref in ("sklearn_default", "sklearn_matched")
        },
        "sklearn_not_converged": {
            ref: last[ref]["not_converged"] for ref in ("sklearn_default", "sklearn_matched")
        },
        "selection": {
            "ours": {"C": ours_fit.info["C"], "val_accuracy": ours_fit.info["val_accuracy"]},
            **{
                ref: {"C": last[ref]["C"], "val_accuracy": last[ref]["val_accuracy"]}
                for ref in ("sklearn_default", "sklearn_matched")
            },
        },
    }


# --------------------------------------------------------------------------- MetaOptNet


def cs_primal(x: np.ndarray, y: np.ndarray, w: np.ndarray, C: float) -> float:
    """Crammer-Singer primal ``1/2 ||W||^2 + C sum_n max_k (1 - delta(k, y_n) + w_k.x_n - w_y.x_n)_+``."""
    scores = x @ w.T
    margin = scores + 1.0 - np.eye(w.shape[0])[y] - scores[np.arange(len(y)), y][:, None]
    return float(0.5 * (w * w).sum() + C * np.maximum(margin.max(1), 0.0).sum())


def cvxpy_cs(x: np.ndarray, y: np.ndarray, classes: int, C: float) -> np.ndarray:
    """W from the Crammer-Singer dual solved by cvxpy (Clarabel), as the MetaOptNet head tests do."""
    import cvxpy as cp

    onehot = np.eye(classes)[y]
    alpha = cp.Variable((len(y), classes))
    problem = cp.Problem(
        cp.Maximize(-0.5 * cp.sum_squares(x.T @ alpha) + cp.sum(cp.multiply(onehot, alpha))),
        [alpha <= C * onehot, cp.sum(alpha, axis=1) == 0],
    )
    problem.solve(solver=cp.CLARABEL)
    return np.asarray(alpha.value).T @ x


def bench_metaoptnet(way: int, shot: int, args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.svm import LinearSVC

    x, y, _, _ = features(way, shot, 1, args.dim, args.seed, args.spread, args.offset, args.norm)
    folds = cv_folds(y.tolist(), args.seed)
    train = [torch.tensor(sorted(set(range(len(y))) - set(held))) for held in folds]
    problems = [(x[idx], y[idx]) for idx in train]
    np_problems = [(a.numpy(), b.numpy()) for a, b in problems]
    C = args.svm_C
    head = create_head("metaoptnet", C=C)

    def ours() -> list[np.ndarray]:
        return [cast(LinearClassifier, head.fit(a, b)).weight.numpy() for a, b in problems]

    def liblinear(tol: float, max_iter: int) -> Callable[[], tuple[list[np.ndarray], int]]:
        def run() -> tuple[list[np.ndarray], int]:
            out, bad = [], 0
            for a, b in np_problems:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model = LinearSVC(
                        C=C, multi_class="crammer_singer", fit_intercept=False, tol=tol, max_iter=max_iter
                    ).fit(a, b)
                bad += sum("converge" in str(w.message) for w in caught)
                out.append(model.coef_.copy())
            return out, bad

        return run

    refs = {"liblinear_default": liblinear(1e-4, 1000), "liblinear_tight": liblinear(1e-8, 100_000)}
    runs: dict[str, list[float]] = {"ours": [], **{k: [] for k in refs}}
    weights: dict[str, list[np.ndarray]] = {}
    not_converged: dict[str, int] = {}
    for _ in range(args.repeats):
        t, weights["ours"] = timed(ours)
        runs["ours"].append(t)
        for name, fn in refs.items():
            t, (weights[name], not_converged[name]) = timed(fn)
            runs[name].append(t)
    k = min(args.cvxpy_folds, len(problems))
    cvx_times, cvx_w = [], []
    for a, b in np_problems[:k]:
        start = time.perf_counter()
        cvx_w.append(cvxpy_cs(a, b, way, C))
        cvx_times.append(time.perf_counter() - start)
    primal = {
        name: [cs_primal(a, b, w, C) for (a, b), w in zip(np_problems, ws, strict=False)]
        for name, ws in {**weights, "cvxpy": cvx_w}.items()
    }
    best = [min(p[i] for p in primal.values() if i < len(p)) for i in range(len(problems))]
    excess = {name: [(v - best[i]) / best[i] for i, v in enumerate(p)] for name, p in primal.items()}
    vs = {
        name: [(o - r) / r for o, r in zip(primal["ours"], primal[name], strict=False)]
        for name in ("liblinear_default", "liblinear_tight", "cvxpy")
    }
    times = {name: summary_times(v) for name, v in runs.items()}
    per_fold = {
        name: {"best_s": t["best_s"] / len(problems), "median_s": t["median_s"] / len(problems)}
        for name, t in times.items()
    }
    cvx_per_fold = statistics.mean(cvx_times) if cvx_times else float("nan")
    return {
        "way": way,
        "shot": shot,
        "images": len(y),
        "scheme": "leave-one-out" if len(folds) == len(y) else f"stratified {len(folds)}-fold",
        "folds": len(folds),
        "train_images": sorted({len(idx) for idx in train}),
        "dim": args.dim,
        "C": C,
        "times_all_folds": times,
        "per_fold": {**per_fold, "cvxpy": {"mean_s": cvx_per_fold, "folds": k}},
        "ratio_best": {name: times["ours"]["best_s"] / times[name]["best_s"] for name in refs},
        "ratio_median": {name: times["ours"]["median_s"] / times[name]["median_s"] for name in refs},
        "ratio_vs_cvxpy": per_fold["ours"]["best_s"] / cvx_per_fold if cvx_times else None,
        "objective": {
            "primal": primal,
            "max_excess_over_best": {name: max(v) for name, v in excess.items()},
            "max_ours_vs": {name: max(v) for name, v in vs.items() if v},
        },
        "liblinear_not_converged": not_converged,
    }


# --------------------------------------------------------------------------- report


LOGISTIC_SECTION = """\
Logistic probe: C search over 25 values (10^-6 .. 10^6), validation selection

Ours includes the temperature scaling after selection; scikit-learn fits
`LogisticRegression(C, max_iter=1000)` per C at tol 1e-4 (default) and 1e-6 (matched to our
gradient test). Objective gap: `(ours - sklearn) / sklearn` of `logistic_objective`, the largest
over the 25 C (negative: ours lower); distance to the optimum: the largest excess over the best
solution found (ours at tol 1e-10 included).

K x S | N / val | ours | sklearn default | ratio | sklearn tol 1e-6 | ratio | max gap vs default |
max gap vs tol 1e-6 | ours from optimum | sklearn default from optimum |
C chosen, val acc. (ours / sklearn default)
"""

METAOPTNET_SECTION = """\
MetaOptNet (Crammer-Singer SVM, C = 0.1) on the training folds of `fit --method auto`

Every fold fitted alone, as auto does; times are per fold (all folds, best of the repeats).
LIBLINEAR: `LinearSVC(multi_class='crammer_singer', fit_intercept=False)` at tol 1e-4 (default)
and 1e-8. Objective: the primal `1/2 ||W||^2 + C sum xi` at each solution; gap
`(ours - ref) / ref`, the largest over the folds.

K x S | folds (train images) | ours / fold | LIBLINEAR default | ratio | LIBLINEAR tol 1e-8 | ratio |
cvxpy / fold | max gap vs default | max gap vs tol 1e-8 | max gap vs cvxpy | ours from optimum
"""


def section(text: str) -> list[str]:
    """Markdown lines from three blank-line-separated parts: a title, a note and a table header
    (cells separated by ``|``); the header gets its rule."""
    title, note, header = (" ".join(part.split()) for part in text.strip().split("\n\n"))
    cells = [cell.strip() for cell in header.split("|")]
    return ["", f"## {title}", "", note, "", "| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def chosen(row: dict[str, Any], solver: str) -> str:
    """``C (validation accuracy)`` as ``solver`` selected it."""
    pick = row["selection"][solver]
    return f"{pick['C']:.3g} ({pick['val_accuracy']:.3f})"


def ratio(row: dict[str, Any], ref: str) -> str:
    """``**best** (median)`` of ours / ``ref``."""
    return f"**{row['ratio_best'][ref]:.2f}** ({row['ratio_median'][ref]:.2f})"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Linear probe and MetaOptNet solvers vs scikit-learn (one thread)",
        "",
        f"`{result['command']}` — seed {result['config']['seed']}, {result['config']['repeats']} repeats, "
        f"{result['config']['dim']}-d synthetic features; {result['machine']['platform']}, "
        f"load average {result['machine']['load_average_start']} at the start, "
        f"{result['machine']['load_average_end']} at the end (a shared machine: compare ratios, "
        "measured in the same run, rather than times). Ratio = ours / reference time, best of the "
        "repeats (median in brackets); < 1: ours is faster.",
        *section(LOGISTIC_SECTION),
    ]
    for r in result["logistic"]:
        t, o = r["times"], r["objective"]
        lines.append(
            f"| {r['way']} x {r['shot']} | {r['support']} / {r['validation']} "
            f"| {t['ours']['best_s']:.3f} s | {t['sklearn_default']['best_s']:.3f} s "
            f"| {ratio(r, 'sklearn_default')} | {t['sklearn_matched']['best_s']:.3f} s "
            f"| {ratio(r, 'sklearn_matched')} "
            f"| {o['max_ours_vs']['sklearn_default']:+.1e} | {o['max_ours_vs']['sklearn_matched']:+.1e} "
            f"| {o['max_excess_over_best']['ours']:.1e} | {o['max_excess_over_best']['sklearn_default']:.1e} "
            f"| {chosen(r, 'ours')} / {chosen(r, 'sklearn_default')} |"
        )
    lines += section(METAOPTNET_SECTION)
    for r in result["metaoptnet"]:
        p, o = r["per_fold"], r["objective"]
        cvx = p["cvxpy"]["mean_s"]
        train = "/".join(map(str, r["train_images"]))
        gap_cvxpy = o["max_ours_vs"].get("cvxpy", float("nan"))
        lines.append(
            f"| {r['way']} x {r['shot']} | {r['scheme']}, {r['folds']} ({train}) "
            f"| {p['ours']['best_s'] * 1e3:.1f} ms | {p['liblinear_default']['best_s'] * 1e3:.1f} ms "
            f"| {ratio(r, 'liblinear_default')} "
            f"| {p['liblinear_tight']['best_s'] * 1e3:.1f} ms "
            f"| {ratio(r, 'liblinear_tight')} "
            f"| {cvx * 1e3:.0f} ms ({p['cvxpy']['folds']} folds) "
            f"| {o['max_ours_vs']['liblinear_default']:+.1e} | {o['max_ours_vs']['liblinear_tight']:+.1e} "
            f"| {gap_cvxpy:+.1e} | {o['max_excess_over_best']['ours']:.1e} |"
        )
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--probe", nargs="+", default=["6x14", "20x16", "100x16"], help="K x S sizes (logistic)")
    p.add_argument(
        "--svm", nargs="+", default=["5x8", "6x14", "20x16"], help="K x S sizes (MetaOptNet folds)"
    )
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--spread", type=float, default=1.0, help="per-image noise, relative to the class means")
    p.add_argument("--offset", type=float, default=1.0, help="shared offset, relative to the class means")
    p.add_argument("--norm", type=float, default=10.0, help="typical feature norm")
    p.add_argument("--svm-C", type=float, default=0.1, help="MetaOptNet's C")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cvxpy-folds", type=int, default=1, help="folds per size solved by cvxpy (slow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, small sizes, nothing written")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.quick:
        args.probe, args.svm, args.repeats, args.cvxpy_folds = ["6x14"], ["5x8"], 2, 1

    import cvxpy
    import scipy
    import sklearn
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    with threadpool_limits(1):
        logistic = []
        for size in args.probe:
            way, shot = map(int, size.split("x"))
            logistic.append(bench_logistic(way, shot, args))
            r = logistic[-1]
            ratios = r["ratio_best"]
            print(
                f"logistic {size}: ours {r['times']['ours']['best_s']:.3f} s, ratio vs sklearn default "
                f"{ratios['sklearn_default']:.2f}, vs tol 1e-6 {ratios['sklearn_matched']:.2f}; "
                f"max gap vs default {r['objective']['max_ours_vs']['sklearn_default']:+.1e}, "
                f"vs tol 1e-6 {r['objective']['max_ours_vs']['sklearn_matched']:+.1e}",
                flush=True,
            )
        svm = []
        for size in args.svm:
            way, shot = map(int, size.split("x"))
            svm.append(bench_metaoptnet(way, shot, args))
            r = svm[-1]
            per_fold = r["per_fold"]["ours"]["best_s"]
            print(
                f"metaoptnet {size} ({r['scheme']}): ours {per_fold * 1e3:.1f} ms/fold, "
                f"ratio vs LIBLINEAR default {r['ratio_best']['liblinear_default']:.2f}, "
                f"tol 1e-8 {r['ratio_best']['liblinear_tight']:.2f}; max gap vs default "
                f"{r['objective']['max_ours_vs']['liblinear_default']:+.1e}",
                flush=True,
            )
    result = {
        "benchmark": (
            "logistic probe (C search) vs sklearn LogisticRegression; MetaOptNet vs LinearSVC crammer_singer"
        ),
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "config": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {
            **versions(),
            "scikit-learn": sklearn.__version__,
            "scipy": scipy.__version__,
            "cvxpy": cvxpy.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
        },
        "logistic": logistic,
        "metaoptnet": svm,
    }
    if args.quick:
        print(markdown(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "summary.md").write_text(markdown(result))
    print(f"wrote {args.out / 'probe.json'} and {args.out / 'summary.md'}")


if __name__ == "__main__":
    main()
