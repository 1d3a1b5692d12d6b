"""The iterative heads under a deadline (:mod:`focusshot.deadlines`): stopped once it has passed or
once the pace of their loop says it will, and bit for bit the same fit when it is far away."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.heads.conftest import make_clustered
from torch import Tensor

from focusshot import deadlines
from focusshot.deadlines import DeadlineExceeded, deadline
from focusshot.heads import create_head

#: head -> its settings (small, so the tests are quick) and the step the first check names
SOLVERS: dict[str, tuple[dict[str, Any], str]] = {
    "logistic": ({}, "the logistic probe at C 1 of 25"),
    "logistic_fixed_C": ({}, "the logistic probe's Newton step 1"),
    "svm": ({}, "the dual solver at iteration 0"),
    "metaoptnet": ({}, "the dual solver at iteration 0"),
    "lp_pp": ({"epochs": 30}, "lp_pp at epoch 1 of 30"),
    "tip_adapter_f": ({"epochs": 4, "batch_size": 8}, "tip_adapter_f at step 1 of 12"),
}


def _task() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """4 classes x 5 shots in 16-d (float32, as features come), validation images, class text."""
    x, y, v, vy = make_clustered(4, 5, 16, seed=1, n_query=2, dtype=torch.float32)
    text = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    return x, y, v, vy, text


def _fit(name: str) -> Any:
    x, y, v, vy, text = _task()
    settings = SOLVERS[name][0]
    if name in ("lp_pp", "tip_adapter_f"):
        return create_head(name, text_embeddings=text, **settings).fit(x, y, val_features=v, val_labels=vy)
    if name == "logistic":
        return create_head(name, **settings).fit(x, y, val_features=v, val_labels=vy)
    return create_head(name.removesuffix("_fixed_C"), **settings).fit(x, y)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_a_passed_deadline_stops_the_solver_at_its_first_step(name: str) -> None:
    with deadline(deadlines.now() - 1.0), pytest.raises(DeadlineExceeded) as info:
        _fit(name)
    assert not info.value.projected and info.value.where == SOLVERS[name][1]
    assert str(info.value).startswith(f"{SOLVERS[name][1]} stopped: its deadline passed")


@pytest.mark.parametrize("name", list(SOLVERS))
def test_a_far_deadline_changes_nothing(name: str) -> None:
    free = _fit(name)
    for at in (math.inf, deadlines.now() + 3600.0):
        with deadline(at, repeats=4):
            timed = _fit(name)
        state, again = free.state_dict(), timed.state_dict()
        assert state.keys() == again.keys()
        assert all(torch.equal(state[k], again[k]) for k in state)  # bit for bit
        assert timed.info == free.info


def test_the_pace_of_the_c_grid_stops_the_probe_early(monkeypatch) -> None:
    """Every clock read takes a second: after five Cs the pace says the 25 Cs (and 4 more runs of
    them) cannot end within 100 s, long before the deadline itself has passed."""
    ticks = itertools.count(1000)
    monkeypatch.setattr(deadlines, "now", lambda: float(next(ticks)))
    with deadline(1100.0, repeats=4), pytest.raises(DeadlineExceeded) as info:
        _fit("logistic")
    assert info.value.projected and info.value.where == "the logistic probe at C 6 of 25"
    assert "would end" in str(info.value)


@pytest.mark.parametrize(
    ("name", "at", "where"),
    [("lp_pp", 1020.0, "lp_pp at epoch 7 of 30"), ("tip_adapter_f", 1010.0, "tip_adapter_f at step 7 of 12")],
)
def test_the_pace_of_the_steps_stops_training_heads_early(
    monkeypatch, name: str, at: float, where: str
) -> None:
    """One clock read a step, a second each, from 1000 s: the pace (timed from the second step) is
    trusted after PACE_STEPS steps, and at step 7 the steps left would end past the deadline."""
    ticks = itertools.count(1000)
    monkeypatch.setattr(deadlines, "now", lambda: float(next(ticks)))
    with deadline(at), pytest.raises(DeadlineExceeded) as info:
        _fit(name)
    assert info.value.projected and info.value.where == where
    with deadline(1100.0):  # room for every step: the same fit as without a deadline
        timed = _fit(name)
    free = _fit(name).state_dict()
    assert all(torch.equal(t, free[k]) for k, t in timed.state_dict().items())
