"""Accuracy, 95% intervals, ECE, NLL and paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from focusshot.evaluation.metrics import (
    accuracy,
    ece,
    mean_ci95,
    nll,
    paired_difference,
    reliability_bins,
)


def test_accuracy_from_logits_and_predictions() -> None:
    logits = np.array([[2.0, 1.0], [0.1, 0.3], [5.0, -1.0], [0.0, 1.0]])
    labels = [0, 1, 1, 1]
    assert accuracy(logits, labels) == pytest.approx(0.75)
    assert accuracy(np.array([0, 1, 0, 1]), labels) == pytest.approx(0.75)
    assert accuracy(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="4 predictions but 3 labels"):
        accuracy(logits, [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy(np.zeros(0, dtype=int), [])


def test_mean_ci95_uses_sample_std() -> None:
    values = [0.5, 0.7, 0.6, 0.8]
    mean, half = mean_ci95(values)
    sample_std = math.sqrt(sum((v - 0.65) ** 2 for v in values) / 3)
    assert mean == pytest.approx(0.65)
    assert half == pytest.approx(1.96 * sample_std / 2)
    assert mean_ci95([0.4]) == (0.4, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_ece_hand_computed() -> None:
    # 5 bins of width 0.2; bins are (lo, hi].
    probs = np.array(
        [
            [0.90, 0.10],  # conf 0.90, pred 0, label 0: correct  -> bin (0.8, 1.0]
            [0.85, 0.15],  # conf 0.85, pred 0, label 1: wrong    -> bin (0.8, 1.0]
            [0.30, 0.70],  # conf 0.70, pred 1, label 1: correct  -> bin (0.6, 0.8]
            [0.55, 0.45],  # conf 0.55, pred 0, label 1: wrong    -> bin (0.4, 0.6]
        ]
    )
    labels = [0, 1, 1, 1]
    # bin (0.8,1]: acc 0.5, conf 0.875 -> 2/4 * 0.375 = 0.1875
    # bin (0.6,.8]: acc 1.0, conf 0.70 -> 1/4 * 0.30  = 0.075
    # bin (0.4,.6]: acc 0.0, conf 0.55 -> 1/4 * 0.55  = 0.1375
    assert ece(probs, labels, bins=5) == pytest.approx(0.1875 + 0.075 + 0.1375)
    rb = reliability_bins(probs, labels, bins=5)
    assert rb.counts.tolist() == [0, 0, 1, 1, 2]
    assert np.isnan(rb.accuracy[0]) and rb.accuracy[4] == pytest.approx(0.5)


def test_ece_bin_edges_belong_to_the_lower_bin() -> None:
    probs = np.array([[0.6, 0.4]])  # 0.6 exactly: bin (0.4, 0.6], not (0.6, 0.8]
    assert reliability_bins(probs, [0], bins=5).counts.tolist() == [0, 0, 1, 0, 0]


def test_ece_perfectly_calibrated_and_rejects_logits() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert ece(probs, [0, 1]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="softmax"):
        ece(np.array([[3.0, -1.0]]), [0])


def test_nll_matches_torch_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (50,), generator=gen)
    expected = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert nll(logits, labels) == pytest.approx(expected, rel=1e-10)
    assert nll(logits.numpy(), labels.numpy(), from_logits=True) == pytest.approx(expected, rel=1e-10)
    probs = torch.softmax(logits.double(), dim=1)
    assert nll(probs, labels) == pytest.approx(expected, rel=1e-8)  # detected as probabilities
    assert nll(probs, labels, from_logits=False) == pytest.approx(expected, rel=1e-8)


def test_nll_zero_probability_is_finite() -> None:
    value = nll(np.array([[1.0, 0.0]]), [1], from_logits=False)
    assert math.isfinite(value) and value == pytest.approx(-math.log(1e-12))


def test_paired_difference() -> None:
    a = [0.8, 0.6, 0.9, 0.7, 0.5]
    b = [0.7, 0.6, 0.8, 0.75, 0.4]
    result = paired_difference(a, b)
    diffs = np.array(a) - np.array(b)
    assert result.mean == pytest.approx(diffs.mean())
    assert result.half_width == pytest.approx(1.96 * diffs.std(ddof=1) / math.sqrt(5))
    assert result.a_better == pytest.approx(0.6)
    assert result.b_better == pytest.approx(0.2)
    assert result.ties == pytest.approx(0.2)
    assert result.episodes == 5
    assert result.ci95 == pytest.approx((result.mean - result.half_width, result.mean + result.half_width))
    assert set(result.to_dict()) == {"mean", "half_width", "a_better", "b_better", "ties", "episodes"}
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference([0.1, 0.2], [0.3])


def test_paired_difference_is_tighter_than_unpaired() -> None:
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.3, 0.9, size=200)
    a = difficulty + 0.02 + rng.normal(0, 0.01, size=200)
    b = difficulty
    paired = paired_difference(a, b)
    assert paired.significant and paired.a_better > 0.9
    assert paired.half_width < mean_ci95(a)[1] / 5


def test_calibration_metrics_on_known_predictors() -> None:
    from focusshot.evaluation.metrics import brier, ece, fit_temperature, selective_accuracy

    g = np.random.default_rng(0)
    z = g.normal(size=(20000, 5)) * 3
    p = torch.tensor(z).softmax(-1).numpy()
    y = np.array([g.choice(5, p=row) for row in p])  # labels drawn from the predicted probabilities
    assert ece(p, y) < 0.015  # perfectly calibrated up to sampling noise
    assert abs(fit_temperature(z, y) - 1.0) < 0.05
    # over-confident by a known amount: confidence 1, accuracy 0.6 -> ECE 0.4, Brier 0.8
    onehot = np.eye(5)[np.zeros(10, dtype=int)]
    labels = np.array([0] * 6 + [1] * 4)
    assert ece(onehot, labels) == pytest.approx(0.4)
    assert brier(onehot, labels) == pytest.approx(0.4 * 2)
    assert brier(np.full((3, 4), 0.25), [0, 1, 2]) == pytest.approx(1 - 1 / 4)
    # logits sharpened 4x: the fitted temperature undoes it, and never changes an arg-max
    t = fit_temperature(z * 4, y)
    assert abs(t - 4.0) < 0.3
    assert np.array_equal((z * 4 / t).argmax(1), z.argmax(1))
    conf, ok = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 0])
    assert selective_accuracy(conf, ok, 0.5) == 1.0 and selective_accuracy(conf, ok, 1.0) == 0.5
    assert selective_accuracy(conf, ok, 0.75) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="coverage"):
        selective_accuracy(conf, ok, 0.0)
