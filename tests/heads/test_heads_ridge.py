"""Ridge (RR) and R2D2 against scikit-learn's Ridge and the closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focusshot.heads import create_head
from focusshot.heads.ridge import ridge_weights

linear_model = pytest.importorskip("sklearn.linear_model")


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize(("n_shot", "dim"), [(3, 40), (12, 6)])  # N < D (Woodbury) and N > D (primal)
def test_ridge_matches_sklearn(clustered, fit_intercept: bool, n_shot: int, dim: int) -> None:
    xs, ys, xq, _ = clustered(4, n_shot, dim, seed=1, offset=0.3, n_query=5)
    lam = 0.7
    fitted = create_head("ridge", lam=lam, fit_intercept=fit_intercept).fit(xs, ys)
    ref = linear_model.Ridge(alpha=lam, fit_intercept=fit_intercept, solver="cholesky")
    ref.fit(xs.numpy(), np.eye(4)[ys.numpy()])
    np.testing.assert_allclose(fitted.weight.numpy(), ref.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        fitted.bias.numpy(), np.broadcast_to(ref.intercept_, (4,)), rtol=1e-8, atol=1e-10
    )
    np.testing.assert_allclose(fitted.logits(xq).numpy(), ref.predict(xq.numpy()), rtol=1e-8, atol=1e-10)


def test_primal_and_woodbury_forms_agree(clustered) -> None:
    xs, ys, _, _ = clustered(3, 4, 9, seed=2)
    y = torch.nn.functional.one_hot(ys, 3).double()
    primal = ridge_weights(xs, y, 0.5, "primal")
    dual = ridge_weights(xs, y, 0.5, "dual")
    torch.testing.assert_close(primal, dual, rtol=1e-10, atol=1e-12)
    # and the normal equations hold: (X^T X + lam I) W = X^T Y
    torch.testing.assert_close((xs.T @ xs + 0.5 * torch.eye(9, dtype=torch.float64)) @ primal, xs.T @ y)


def test_r2d2_is_the_woodbury_closed_form_with_alpha_and_beta(clustered) -> None:
    xs, ys, xq, _ = clustered(5, 2, 30, seed=3, n_query=4)
    fitted = create_head("r2d2", lam=50.0, alpha=2.0, beta=-0.5).fit(xs, ys)
    y = torch.nn.functional.one_hot(ys, 5).double()
    w = xs.T @ torch.linalg.inv(xs @ xs.T + 50.0 * torch.eye(10, dtype=torch.float64)) @ y  # (D, C)
    torch.testing.assert_close(fitted.logits(xq), 2.0 * xq @ w - 0.5)
    defaults = create_head("r2d2")
    assert (defaults.lam, defaults.alpha, defaults.beta) == (50.0, 1.0, 0.0)


def test_fixed_scale_and_bias_do_not_change_predictions(clustered) -> None:
    xs, ys, xq, _ = clustered(4, 3, 12, seed=4, n_query=6)
    plain = create_head("ridge").fit(xs, ys)
    scaled = create_head("ridge", scale=3.0, bias=1.5).fit(xs, ys)
    torch.testing.assert_close(scaled.logits(xq), 3.0 * plain.logits(xq) + 1.5)


def test_calibration_minimises_validation_nll(clustered) -> None:
    xs, ys, xv, yv = clustered(4, 3, 12, seed=5, spread=1.5, n_query=10)
    fitted = create_head("ridge", calibrate=True).fit(xs, ys, val_features=xv, val_labels=yv)
    s = fitted.scale
    assert fitted.info["calibrated_scale"] == s

    def nll(scale: float) -> float:
        raw = create_head("ridge", scale=scale).fit(xs, ys).logits(xv)
        return float(torch.nn.functional.cross_entropy(raw, yv))

    assert nll(s) <= min(nll(s * 0.9), nll(s * 1.1), nll(1.0)) + 1e-12
    with pytest.raises(ValueError, match="calibrate"):
        create_head("ridge", calibrate=True).fit(xs, ys)


def test_normalize_uses_unit_features(clustered) -> None:
    xs, ys, xq, _ = clustered(3, 3, 8, seed=6, n_query=3)
    a = create_head("ridge", normalize=True).fit(xs, ys)
    b = create_head("ridge").fit(torch.nn.functional.normalize(xs, dim=-1), ys)
    torch.testing.assert_close(a.logits(5.0 * xq), b.logits(torch.nn.functional.normalize(xq, dim=-1)))
