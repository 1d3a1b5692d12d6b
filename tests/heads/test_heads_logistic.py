"""Logistic-regression probe against scikit-learn's LogisticRegression (same C, same objective)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focusshot.heads import create_head
from focusshot.heads.logistic import logistic_objective

linear_model = pytest.importorskip("sklearn.linear_model")


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_sklearn(clustered, C: float, fit_intercept: bool) -> None:
    xs, ys, xq, _ = clustered(4, 6, 8, seed=2, spread=1.3, offset=0.4, n_query=25)
    fitted = create_head("logistic", C=C, fit_intercept=fit_intercept, tol=1e-10).fit(xs, ys)
    ref = linear_model.LogisticRegression(C=C, fit_intercept=fit_intercept, tol=1e-10, max_iter=10_000)
    ref.fit(xs.numpy(), ys.numpy())
    assert fitted.predict(xq).tolist() == ref.predict(xq.numpy()).tolist()
    assert fitted.predict(xs).tolist() == ref.predict(xs.numpy()).tolist()
    ref_w = torch.from_numpy(ref.coef_)
    ref_b = torch.from_numpy(np.broadcast_to(ref.intercept_, (4,)).copy())
    ref_obj = float(logistic_objective(xs, ys, ref_w, ref_b, C))
    assert fitted.info["objective"] == pytest.approx(ref_obj, rel=1e-4)
    assert fitted.info["objective"] <= ref_obj * (1 + 1e-8)  # ours is at least as good
    np.testing.assert_allclose(
        fitted.weight.numpy(), ref.coef_, atol=1e-3 * max(1.0, np.abs(ref.coef_).max())
    )
    assert fitted.info["C"] == C


def test_validation_search_picks_best_grid_value_and_records_it(clustered) -> None:
    xs, ys, xv, yv = clustered(3, 4, 10, seed=8, spread=2.0, n_query=15)
    grid = (0.001, 0.1, 10.0)
    fitted = create_head("logistic", C_grid=grid).fit(xs, ys, val_features=xv, val_labels=yv)
    table = fitted.info["search"]
    assert [row[0] for row in table] == sorted(grid)
    best_acc = max(row[1] for row in table)
    candidates = [row for row in table if row[1] == best_acc]
    best = min(candidates, key=lambda r: (r[2], r[0]))
    assert fitted.info["C"] == best[0]
    # the kept model is the one fitted at that C on the support set
    direct = create_head("logistic", C=best[0]).fit(xs, ys)
    torch.testing.assert_close(fitted.logits(xv), direct.logits(xv), atol=1e-5, rtol=1e-5)


def test_without_validation_uses_fixed_default(clustered) -> None:
    xs, ys, _, _ = clustered(3, 2, 5, seed=1)
    assert create_head("logistic").fit(xs, ys).info["C"] == 1.0


def test_fits_under_inference_mode(clustered) -> None:
    xs, ys, xq, _ = clustered(3, 3, 6, seed=4, n_query=2, dtype=torch.float32)
    plain = create_head("logistic").fit(xs, ys)
    with torch.inference_mode():
        inside = create_head("logistic").fit(xs.clone(), ys.clone())
    torch.testing.assert_close(inside.logits(xq), plain.logits(xq))
