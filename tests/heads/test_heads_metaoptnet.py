"""MetaOptNet (Crammer–Singer SVM) against cvxpy, batched against per-episode, and the simplex projection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from focusshot.heads import create_head, qp
from focusshot.heads.qp import project_simplex, solve_crammer_singer_dual

cp = pytest.importorskip("cvxpy")


def cvxpy_crammer_singer(x: np.ndarray, y: np.ndarray, classes: int, C: float) -> dict:
    """Solve the Crammer–Singer primal and dual with cvxpy (Clarabel): the reference."""
    n, d = x.shape
    onehot = np.eye(classes)[y]
    # dual: max -1/2 ||X^T alpha||_F^2 + <Y, alpha>,  alpha <= C Y,  rows of alpha sum to 0
    alpha = cp.Variable((n, classes))
    dual = cp.Problem(
        cp.Maximize(-0.5 * cp.sum_squares(x.T @ alpha) + cp.sum(cp.multiply(onehot, alpha))),
        [alpha <= C * onehot, cp.sum(alpha, axis=1) == 0],
    )
    dual.solve(solver=cp.CLARABEL)
    # primal: min 1/2 ||W||^2 + C sum xi,  w_y.x - w_k.x >= 1 - delta - xi
    w = cp.Variable((classes, d))
    xi = cp.Variable(n)
    scores = x @ w.T  # (n, classes)
    true = cp.sum(cp.multiply(onehot, scores), axis=1)
    cons = [cp.reshape(true, (n, 1), order="C") - scores >= 1 - onehot - cp.reshape(xi, (n, 1), order="C")]
    primal = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(w) + C * cp.sum(xi)), cons)
    primal.solve(solver=cp.CLARABEL)
    return {"dual": dual.value, "primal": primal.value, "alpha": alpha.value, "W": w.value}


@pytest.mark.parametrize(("C", "offset"), [(0.1, 0.0), (1.0, 0.0), (0.1, 2.0)])
def test_crammer_singer_matches_cvxpy(clustered, C: float, offset: float) -> None:
    xs, ys, xq, _ = clustered(5, 3, 24, seed=3, spread=1.0, offset=offset, n_query=6)
    ref = cvxpy_crammer_singer(xs.numpy(), ys.numpy(), 5, C)
    assert ref["primal"] == pytest.approx(ref["dual"], rel=1e-6)  # strong duality in the reference

    fitted = create_head("metaoptnet", C=C, tol=1e-9).fit(xs, ys)
    ours_dual = fitted.info["dual_objective"]
    assert ours_dual == pytest.approx(ref["dual"], rel=1e-4)
    assert fitted.info["max_relative_gap"] <= 1e-9
    # same classifier: W = alpha^T X, and the same predictions
    np.testing.assert_allclose(fitted.weight.numpy(), ref["W"], atol=1e-4 * np.abs(ref["W"]).max())
    ref_pred = (xq.numpy() @ ref["W"].T).argmax(1)
    assert fitted.predict(xq).tolist() == ref_pred.tolist()


def test_dual_solution_matches_cvxpy_alpha(clustered) -> None:
    xs, ys, _, _ = clustered(4, 4, 16, seed=5, spread=1.2)
    ref = cvxpy_crammer_singer(xs.numpy(), ys.numpy(), 4, 0.5)
    res = solve_crammer_singer_dual(xs @ xs.T, torch.nn.functional.one_hot(ys, 4).double(), 0.5, tol=1e-10)
    assert bool(res.converged)
    # the dual is strictly convex here (N < D, Gram full rank): alpha itself is unique
    np.testing.assert_allclose(res.alpha.numpy(), ref["alpha"], atol=1e-5)
    # feasibility: alpha <= C y and rows sum to zero
    onehot = torch.nn.functional.one_hot(ys, 4).double()
    assert bool((res.alpha <= 0.5 * onehot + 1e-12).all())
    torch.testing.assert_close(res.alpha.sum(1), torch.zeros(16, dtype=torch.float64), atol=1e-12, rtol=0)


def test_batched_equals_per_episode(clustered) -> None:
    xs, ys, xq, _ = clustered(5, 2, 20, seed=11, n_query=3, episodes=6)
    head = create_head("metaoptnet", C=0.2, tol=1e-10)
    batched = head.fit(xs, ys)
    assert batched.weight.shape == (6, 5, 20)
    logits = batched.logits(xq)
    assert logits.shape == (6, 15, 5)
    for e in range(6):
        single = head.fit(xs[e], ys[e])
        torch.testing.assert_close(batched.weight[e], single.weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(logits[e], single.logits(xq[e]), atol=1e-6, rtol=1e-6)
        assert batched.info["dual_objective"][e] == pytest.approx(single.info["dual_objective"], rel=1e-8)


def test_batched_query_must_match_episodes(clustered) -> None:
    xs, ys, xq, _ = clustered(3, 2, 8, seed=1, n_query=2, episodes=4)
    fitted = create_head("metaoptnet").fit(xs, ys)
    with pytest.raises(ValueError, match="episodes"):
        fitted.logits(xq[:3])
    with pytest.raises(ValueError, match="shape"):
        fitted.logits(xq[0])


def test_float32_features_give_float32_classifier(clustered) -> None:
    xs, ys, xq, _ = clustered(4, 3, 12, seed=2, n_query=2, dtype=torch.float32)
    fitted = create_head("metaoptnet").fit(xs, ys)
    assert fitted.weight.dtype == torch.float32
    assert fitted.logits(xq).dtype == torch.float32


def test_max_iter_warns(clustered, monkeypatch: pytest.MonkeyPatch) -> None:
    # the active-set step would solve this exactly; without it the projected gradient stops short
    monkeypatch.setattr(qp, "_ACTIVE_SET_ATTEMPTS", 0)
    xs, ys, _, _ = clustered(5, 4, 30, seed=4, offset=3.0)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        create_head("metaoptnet", max_iter=10, tol=1e-12).fit(xs, ys)


def test_project_simplex_is_the_euclidean_projection() -> None:
    g = torch.Generator().manual_seed(0)
    v = 3 * torch.randn(50, 7, generator=g, dtype=torch.float64)
    p = project_simplex(v, 0.3)
    assert bool((p >= 0).all())
    torch.testing.assert_close(p.sum(-1), torch.full((50,), 0.3, dtype=torch.float64))
    # optimality (KKT): v - p = theta on the support of p, and <= theta off it
    r = v - p
    for i in range(50):
        on = p[i] > 0
        theta = r[i][on]
        assert float(theta.max() - theta.min()) < 1e-12
        assert bool((r[i][~on] <= theta[0] + 1e-12).all())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(clustered) -> None:
    xs, ys, xq, _ = clustered(5, 3, 32, seed=6, n_query=4, episodes=8)
    head = create_head("metaoptnet", tol=1e-9)
    cpu = head.fit(xs, ys)
    gpu = head.fit(xs.cuda(), ys.cuda())
    assert gpu.weight.device.type == "cuda"
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, atol=1e-6, rtol=1e-6)
    assert torch.equal(gpu.predict(xq.cuda()).cpu(), cpu.predict(xq))


# --------------------------------------------------------------------------- the active-set step


def _solve_both(xs: torch.Tensor, ys: torch.Tensor, classes: int, C: float):
    onehot = torch.nn.functional.one_hot(ys, classes).double()
    gram = xs @ xs.transpose(-1, -2)
    fast = solve_crammer_singer_dual(gram, onehot, C, tol=1e-9)
    fista = solve_crammer_singer_dual(gram, onehot, C, tol=1e-9, max_iter=200_000, active_set_rounds=0)
    return fast, fista


def test_active_set_solves_a_leave_one_out_fold_without_gradient_steps(clustered) -> None:
    # the fold sizes of `fit --method auto`: 40 images, leave one out -> 39 training images
    xs, ys, _, _ = clustered(5, 8, 64, seed=7, spread=1.0, offset=2.0)
    fast, fista = _solve_both(xs[:39], ys[:39], 5, 0.1)
    assert bool(fast.converged) and fast.iterations == 0  # the active-set step alone certified it
    assert float(fast.relative_gap) <= 1e-9
    assert float(fast.dual_objective) == pytest.approx(float(fista.dual_objective), rel=1e-8)
    torch.testing.assert_close(fast.alpha, fista.alpha, atol=1e-5, rtol=0)
    onehot = torch.nn.functional.one_hot(ys[:39], 5).double()
    assert bool((fast.alpha <= 0.1 * onehot + 1e-12).all())  # feasible (projected)
    torch.testing.assert_close(fast.alpha.sum(1), torch.zeros(39, dtype=torch.float64), atol=1e-12, rtol=0)


def test_active_set_after_a_warm_up_on_larger_folds(clustered) -> None:
    n = qp._ACTIVE_SET_COLD_MAX_N + 20
    xs, ys, _, _ = clustered(10, n // 10, 128, seed=8, spread=1.0, offset=1.0)
    fast, fista = _solve_both(xs, ys, 10, 0.1)
    assert bool(fast.converged) and fast.iterations < fista.iterations
    assert fast.iterations >= qp._ACTIVE_SET_WARMUP
    assert float(fast.dual_objective) == pytest.approx(float(fista.dual_objective), rel=1e-8)


def test_more_images_than_dimensions_still_converges(clustered) -> None:
    # a singular Gram matrix: the active-set step may fail; the certificate decides
    xs, ys, _, _ = clustered(4, 10, 6, seed=9, spread=1.0)
    ref = cvxpy_crammer_singer(xs.numpy(), ys.numpy(), 4, 0.5)
    fitted = create_head("metaoptnet", C=0.5, tol=1e-9).fit(xs, ys)
    assert fitted.info["max_relative_gap"] <= 1e-9
    assert fitted.info["dual_objective"] == pytest.approx(ref["dual"], rel=1e-5)
    np.testing.assert_allclose(fitted.weight.numpy(), ref["W"], atol=1e-4 * np.abs(ref["W"]).max())


def test_batched_active_set_mixes_solved_and_unsolved_episodes(clustered) -> None:
    # episodes of one batch may finish in the active-set step or in projected gradient
    xs, ys, _, _ = clustered(5, 6, 24, seed=12, episodes=4)
    xs[1, 1], ys[1, 1] = xs[1, 0], ys[1, 0]  # a duplicated image: a singular support in episode 1
    gram = xs @ xs.transpose(1, 2)
    onehot = torch.nn.functional.one_hot(ys, 5).double()
    rounds = list(
        itertools.islice(qp._active_set_crammer_singer(gram, onehot, 0.1, torch.zeros_like(onehot)), 20)
    )
    assert rounds[-1][1].tolist() == [True, False, True, True]  # (the rounds may cycle: capped)
    head = create_head("metaoptnet", C=0.1, tol=1e-9)
    batched = head.fit(xs, ys)
    assert batched.info["iterations"] > 0 and batched.info["max_relative_gap"] <= 1e-9
    for e in range(4):
        single = head.fit(xs[e], ys[e])
        assert batched.info["dual_objective"][e] == pytest.approx(single.info["dual_objective"], rel=1e-8)
        torch.testing.assert_close(batched.weight[e], single.weight, atol=1e-6, rtol=1e-6)
