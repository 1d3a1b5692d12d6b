"""One-vs-rest linear SVM against scikit-learn's LinearSVC (LIBLINEAR) and an explicit cvxpy QP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focusshot.heads import create_head

cp = pytest.importorskip("cvxpy")
svm = pytest.importorskip("sklearn.svm")


def cvxpy_binary_svm(
    x: np.ndarray, s: np.ndarray, C: float, loss: str, intercept: bool
) -> tuple[float, np.ndarray]:
    """min 1/2 (||w||^2 + b^2) + C sum loss(s (x w + b)), the bias penalised as LIBLINEAR does."""
    w = cp.Variable(x.shape[1])
    b = cp.Variable() if intercept else 0.0
    slack = cp.pos(1 - cp.multiply(s, x @ w + b))
    penalty = cp.sum(slack) if loss == "hinge" else cp.sum_squares(slack)
    reg = cp.sum_squares(w) + (cp.square(b) if intercept else 0.0)
    prob = cp.Problem(cp.Minimize(0.5 * reg + C * penalty))
    prob.solve(solver=cp.CLARABEL)
    return prob.value, np.append(w.value, b.value if intercept else 0.0)


@pytest.mark.parametrize("loss", ["squared_hinge", "hinge"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ovr_svm_matches_cvxpy_and_linearsvc(clustered, loss: str, fit_intercept: bool) -> None:
    xs, ys, xq, _ = clustered(4, 6, 10, seed=7, spread=1.5, offset=0.5, n_query=10)
    C = 0.3
    fitted = create_head("svm", C=C, loss=loss, fit_intercept=fit_intercept, tol=1e-9).fit(xs, ys)
    x, y = xs.numpy(), ys.numpy()
    for k in range(4):
        s = np.where(y == k, 1.0, -1.0)
        ref_obj, ref_wb = cvxpy_binary_svm(x, s, C, loss, fit_intercept)
        assert fitted.info["primal_objective"][k] == pytest.approx(ref_obj, rel=1e-4)
        ours = np.append(fitted.weight[k].numpy(), fitted.bias[k].item())
        np.testing.assert_allclose(ours, ref_wb, atol=1e-4 * max(1.0, np.abs(ref_wb).max()))

    ref = svm.LinearSVC(C=C, loss=loss, fit_intercept=fit_intercept, tol=1e-10, max_iter=200_000, dual=True)
    ref.fit(x, y)
    np.testing.assert_allclose(fitted.weight.numpy(), ref.coef_, atol=1e-3)
    assert fitted.predict(xq).tolist() == ref.predict(xq.numpy()).tolist()
    assert fitted.predict(xs).tolist() == ref.predict(x).tolist()


def test_binary_problem_predicts_like_linearsvc(clustered) -> None:
    xs, ys, xq, _ = clustered(2, 8, 6, seed=2, spread=1.5, n_query=20)
    fitted = create_head("svm", C=1.0, tol=1e-9).fit(xs, ys)
    ref = svm.LinearSVC(C=1.0, tol=1e-10, max_iter=200_000).fit(xs.numpy(), ys.numpy())
    assert fitted.predict(xq).tolist() == ref.predict(xq.numpy()).tolist()
    # the two one-vs-rest problems of a binary task are mirror images
    torch.testing.assert_close(fitted.weight[0], -fitted.weight[1], atol=1e-6, rtol=0)


def test_n_greater_than_d_hinge_converges(clustered) -> None:
    # N > D makes the Gram matrix singular (the hinge dual is then not strongly convex)
    xs, ys, _, _ = clustered(3, 20, 5, seed=9, spread=2.0)
    fitted = create_head("svm", C=1.0, loss="hinge", tol=1e-7).fit(xs, ys)
    assert fitted.info["max_relative_gap"] <= 1e-7
    x, y = xs.numpy(), ys.numpy()
    ref_obj, _ = cvxpy_binary_svm(x, np.where(y == 1, 1.0, -1.0), 1.0, "hinge", True)
    assert fitted.info["primal_objective"][1] == pytest.approx(ref_obj, rel=1e-4)
