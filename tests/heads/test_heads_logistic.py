"""Logistic-regression probe against scikit-learn's LogisticRegression (same C, same objective)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from focusshot.heads import create_head
from focusshot.heads.logistic import (
    DEFAULT_C_GRID,
    SELECTION_RULE,
    fit_logistic,
    fit_logistic_path,
    fit_logit_scale,
    logistic_objective,
)

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
    # (times the logit scale fitted on validation afterwards)
    direct = create_head("logistic", C=best[0]).fit(xs, ys)
    torch.testing.assert_close(fitted.weight, direct.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fitted.logits(xv), fitted.scale * direct.logits(xv), atol=1e-5, rtol=1e-5)


def test_without_validation_uses_fixed_default(clustered) -> None:
    xs, ys, _, _ = clustered(3, 2, 5, seed=1)
    assert create_head("logistic").fit(xs, ys).info["C"] == 1.0


def test_fits_under_inference_mode(clustered) -> None:
    xs, ys, xq, _ = clustered(3, 3, 6, seed=4, n_query=2, dtype=torch.float32)
    plain = create_head("logistic").fit(xs, ys)
    with torch.inference_mode():
        inside = create_head("logistic").fit(xs.clone(), ys.clone())
    torch.testing.assert_close(inside.logits(xq), plain.logits(xq))


# --------------------------------------------------------------------------- selection of C on validation


def _tie_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 classes in 2-D; one validation image of class 0 lies on class 1's side, so every C
    scores the same validation accuracy (4/5) while the NLL is lowest at a middle C (= 10)."""
    xs = torch.tensor(
        [[1.0, 0.2], [1.2, -0.1], [-1.0, 0.1], [-0.9, -0.2], [0.1, 1.1], [-0.1, 0.9]], dtype=torch.float64
    )
    ys = torch.tensor([0, 0, 1, 1, 2, 2])
    xv = torch.tensor([[1.1, 0.0], [-1.1, 0.0], [0.0, 1.0], [0.9, 0.1], [-0.6, 0.05]], dtype=torch.float64)
    yv = torch.tensor([0, 1, 2, 0, 0])
    return xs, ys, xv, yv


def test_accuracy_ties_are_broken_by_validation_nll() -> None:
    xs, ys, xv, yv = _tie_case()
    grid = (1e-3, 1.0, 10.0, 1e3)
    head = create_head("logistic", C_grid=grid, tol=1e-10)
    fitted = head.fit(xs, ys, val_features=xv, val_labels=yv)
    table = fitted.info["search"]
    assert {row[1] for row in table} == {0.8}  # a four-way tie on accuracy
    nll_by_c = {row[0]: row[2] for row in table}
    # recompute each candidate's validation NLL from a direct fit at that C
    for c in grid:
        direct = create_head("logistic", C=c, tol=1e-10).fit(xs, ys)
        ref = float(torch.nn.functional.cross_entropy(direct.logits(xv), yv))
        assert nll_by_c[c] == pytest.approx(ref, rel=1e-4, abs=1e-6)
    # neither end of the grid (what "smaller C" or "larger C" alone would pick) but the lowest NLL
    assert fitted.info["C"] == 10.0 == min(grid, key=nll_by_c.__getitem__)
    assert fitted.info["val_accuracy"] == 0.8
    assert fitted.info["val_nll"] == pytest.approx(nll_by_c[10.0])
    assert fitted.info["selection"] == SELECTION_RULE


def test_exact_ties_go_to_the_smaller_c() -> None:
    xs, ys, xv, yv = _tie_case()
    fitted = create_head("logistic", C_grid=(10.0, 10.0 + 1e-12)).fit(xs, ys, val_features=xv, val_labels=yv)
    assert fitted.info["C"] == 10.0


def test_default_grid_spans_clips_range() -> None:
    head = create_head("logistic")
    assert head.C_grid == DEFAULT_C_GRID
    assert min(DEFAULT_C_GRID) == pytest.approx(1e-6) and max(DEFAULT_C_GRID) == pytest.approx(1e6)
    assert len(DEFAULT_C_GRID) == 25  # half decades


# --------------------------------------------------------------------------- normalisation


def test_normalize_equals_fitting_normalised_features_by_hand(clustered) -> None:
    xs, ys, xv, yv = clustered(4, 3, 12, seed=5, spread=1.5, offset=2.0, n_query=6)
    scale = torch.linspace(0.5, 20.0, len(xs), dtype=xs.dtype)[:, None]  # very different row norms
    xs = xs * scale
    unit = torch.nn.functional.normalize
    # fixed C
    auto = create_head("logistic", C=3.0, normalize=True).fit(xs, ys)
    hand = create_head("logistic", C=3.0, normalize=False).fit(unit(xs, dim=-1), ys)
    torch.testing.assert_close(auto.weight, hand.weight)
    torch.testing.assert_close(auto.logits(xv * 7.0), hand.logits(unit(xv, dim=-1)))
    # C searched on (also normalised) validation features
    grid = (0.1, 10.0, 1000.0)
    auto = create_head("logistic", C_grid=grid, normalize=True).fit(
        xs, ys, val_features=xv * 3.0, val_labels=yv
    )
    hand = create_head("logistic", C_grid=grid).fit(
        unit(xs, dim=-1), ys, val_features=unit(xv, dim=-1), val_labels=yv
    )
    np.testing.assert_allclose(auto.info["search"], hand.info["search"], rtol=1e-6)
    assert auto.info["C"] == hand.info["C"] and auto.scale == pytest.approx(hand.scale)
    torch.testing.assert_close(auto.logits(xv), hand.logits(unit(xv, dim=-1)))
    assert auto.normalize and not hand.normalize


def test_normalization_is_off_by_default_as_in_clip_and_coop(clustered) -> None:
    xs, ys, xq, _ = clustered(3, 2, 5, seed=1, n_query=2)
    assert create_head("logistic").normalize is False
    fitted = create_head("logistic").fit(xs, ys)
    assert not fitted.normalize
    # raw features: the probe sees the norm
    torch.testing.assert_close(fitted.logits(xq), xq @ fitted.weight.T + fitted.bias)


# --------------------------------------------------------------------------- calibration


def test_calibration_rescales_without_changing_predictions(clustered) -> None:
    xs, ys, xv, yv = clustered(5, 2, 16, seed=3, spread=1.0, n_query=4)
    # a tiny C wins (the only candidate): near-uniform probabilities, as on clothing-small at K=1
    val = {"val_features": xv, "val_labels": yv}
    raw = create_head("logistic", C_grid=(1e-4,), calibrate=False).fit(xs, ys, **val)
    cal = create_head("logistic", C_grid=(1e-4,)).fit(xs, ys, **val)
    assert raw.scale == 1.0 and "logit_scale" not in raw.info
    assert cal.scale == cal.info["logit_scale"] > 10.0
    torch.testing.assert_close(cal.weight, raw.weight)
    assert torch.equal(cal.predict(xv), raw.predict(xv))
    torch.testing.assert_close(cal.logits(xv), cal.scale * raw.logits(xv))
    assert raw.logits(xv).softmax(-1).max() < 0.3  # uniform-looking before
    assert cal.info["val_nll_calibrated"] < cal.info["val_nll"]
    plain = float(torch.nn.functional.cross_entropy(cal.logits(xv), yv))
    assert cal.info["val_nll_calibrated"] == pytest.approx(plain, rel=1e-6)


def test_logit_scale_minimises_the_smoothed_validation_nll() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (12,), generator=g)
    a, value = fit_logit_scale(logits, labels)
    eps = 1 / 13
    target = torch.full((12, 4), eps / 4, dtype=torch.float64)
    target[torch.arange(12), labels] += 1 - eps

    def smoothed(s: float) -> float:
        return float(-(target * torch.log_softmax(s * logits, -1)).sum(-1).mean())

    brute = min((float(s) for s in torch.logspace(-3, 2, 5001, dtype=torch.float64)), key=smoothed)
    assert a == pytest.approx(brute, rel=1e-2)
    assert value == pytest.approx(smoothed(a)) and value <= smoothed(brute) + 1e-12


def test_logit_scale_stays_finite_when_validation_is_separated() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    a, _ = fit_logit_scale(logits, torch.tensor([0, 1, 2]))
    assert math.isfinite(a) and 1.0 < a < 50.0
    top = (a * logits).softmax(-1).max()
    assert (
        top < 1.0 - 1.0 / 4 + 1.0 / 12 + 1e-3
    )  # no more confident than the one smoothing pseudo-example allows
    assert fit_logit_scale(torch.zeros(3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))[0] == 1.0


# --------------------------------------------------------------------------- what the fit records


def test_chosen_c_and_rule_are_recorded_through_the_method(clustered) -> None:
    from focusshot.methods.base import FitContext, create_method

    xs, ys, xv, yv = clustered(3, 3, 8, seed=6, n_query=4, dtype=torch.float32)
    grid = (0.01, 1.0, 100.0)
    method = create_method("logistic", C_grid=grid)
    ctx = FitContext(backbone=None, num_classes=3, val=(xv, yv))  # type: ignore[arg-type]
    info = method.fit(xs, ys, ctx).info()
    head = create_head("logistic", C_grid=grid).fit(xs, ys, 3, val_features=xv, val_labels=yv)
    assert info["C"] == head.info["C"] in grid
    assert info["selection"] == SELECTION_RULE
    assert info["scale"] == pytest.approx(head.info["logit_scale"])
    assert info["val_accuracy"] == head.info["val_accuracy"]
    fixed = create_head("logistic", C=2.5).fit(xs, ys)
    assert fixed.info["C"] == 2.5 and fixed.info["selection"] == "fixed" and fixed.scale == 1.0


# --------------------------------------------------------------------------- the solver


def _objectives(x: torch.Tensor, y: torch.Tensor, fits) -> list[float]:
    return [float(logistic_objective(x, y, w, b, c)) for c, w, b, _ in fits]


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_warm_started_path_reaches_the_cold_objective(clustered, fit_intercept: bool) -> None:
    # raw features with a shared offset, as a backbone's; N < D (the span basis is used)
    xs, ys, _, _ = clustered(4, 5, 30, seed=3, spread=1.2, offset=2.0)
    path = list(fit_logistic_path(xs, ys, 4, DEFAULT_C_GRID, fit_intercept=fit_intercept))
    assert [row[0] for row in path] == sorted(DEFAULT_C_GRID)
    cold = [fit_logistic(xs, ys, 4, c, fit_intercept=fit_intercept, tol=1e-10) for c in DEFAULT_C_GRID]
    tight = [
        float(logistic_objective(xs, ys, w, b, c)) for c, (w, b, _) in zip(DEFAULT_C_GRID, cold, strict=True)
    ]
    for ours, ref in zip(_objectives(xs, ys, path), tight, strict=True):
        assert ours == pytest.approx(ref, rel=1e-6)
    # the default tolerance sits far inside 1e-6 of the optimum, also at C = 1e6 (separable data)
    cold_default = [fit_logistic(xs, ys, 4, c, fit_intercept=fit_intercept) for c in DEFAULT_C_GRID]
    for (w, b, _), c, ref in zip(cold_default, DEFAULT_C_GRID, tight, strict=True):
        assert float(logistic_objective(xs, ys, w, b, c)) == pytest.approx(ref, rel=1e-6)


def test_large_c_is_solved_far_beyond_sklearns_gradient_test(clustered) -> None:
    # at C = 1e4 on separable data the objective divided by C N is flat: scikit-learn's L-BFGS
    # passes its gradient test far from the optimum; ours is no worse, and close to a tight solve
    xs, ys, _, _ = clustered(3, 6, 40, seed=1, spread=0.8)
    C = 1e4
    ref = linear_model.LogisticRegression(C=C, max_iter=10_000).fit(xs.numpy(), ys.numpy())
    ref_obj = float(
        logistic_objective(xs, ys, torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_), C)
    )
    w, b, _ = fit_logistic(xs, ys, 3, C)
    tight_w, tight_b, _ = fit_logistic(xs, ys, 3, C, tol=1e-12)
    ours = float(logistic_objective(xs, ys, w, b, C))
    tight = float(logistic_objective(xs, ys, tight_w, tight_b, C))
    assert ours <= ref_obj * (1 + 1e-6)
    assert ours == pytest.approx(tight, rel=1e-6)


def test_more_images_than_dimensions_matches_sklearn(clustered) -> None:
    # N >= D: no span basis, the features are only centred
    xs, ys, xq, _ = clustered(3, 12, 5, seed=9, spread=1.5, offset=1.0, n_query=10)
    fitted = create_head("logistic", C=2.0, tol=1e-10).fit(xs, ys)
    ref = linear_model.LogisticRegression(C=2.0, tol=1e-10, max_iter=10_000).fit(xs.numpy(), ys.numpy())
    ref_obj = float(
        logistic_objective(xs, ys, torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_), 2.0)
    )
    assert fitted.info["objective"] == pytest.approx(ref_obj, rel=1e-8)
    assert fitted.predict(xq).tolist() == ref.predict(xq.numpy()).tolist()
    np.testing.assert_allclose(fitted.weight.numpy(), ref.coef_, atol=1e-5)


def test_warm_start_from_init_reaches_the_cold_objective(clustered) -> None:
    xs, ys, _, _ = clustered(4, 4, 20, seed=6, offset=1.0)
    w0, b0, _ = fit_logistic(xs, ys, 4, 0.3)
    cold = fit_logistic(xs, ys, 4, 30.0)
    warm = fit_logistic(xs, ys, 4, 30.0, init=(w0, b0))
    cold_obj = float(logistic_objective(xs, ys, cold[0], cold[1], 30.0))
    warm_obj = float(logistic_objective(xs, ys, warm[0], warm[1], 30.0))
    assert warm_obj == pytest.approx(cold_obj, rel=1e-6)
    # a converged start takes no step (returned up to the rounding of the change of basis)
    again = fit_logistic(xs, ys, 4, 30.0, init=(cold[0], cold[1]))
    assert again[2] == 0
    torch.testing.assert_close(again[0], cold[0], atol=1e-12, rtol=0)


def test_path_sorts_the_grid_and_shares_a_solution_between_equal_cs(clustered) -> None:
    xs, ys, _, _ = clustered(3, 3, 10, seed=2)
    path = list(fit_logistic_path(xs, ys, 3, (10.0, 0.1, 10.0 * (1 + 1e-12), 1.0)))
    assert [row[0] for row in path] == [0.1, 1.0, 10.0, 10.0 * (1 + 1e-12)]
    assert torch.equal(path[2][1], path[3][1]) and path[3][3] == 0
    for c, w, b, _ in path:  # each as good as a direct fit at that C
        direct = fit_logistic(xs, ys, 3, c, tol=1e-10)
        ref = float(logistic_objective(xs, ys, direct[0], direct[1], c))
        assert float(logistic_objective(xs, ys, w, b, c)) == pytest.approx(ref, rel=1e-6)
