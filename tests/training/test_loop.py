"""The few-shot training loop: learning, determinism, divergence, validation, schedule, decay,
deadline, config."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot import deadlines
from focusshot.training import loop
from focusshot.training.loop import (
    DeadlineExceeded,
    TrainConfig,
    TrainResult,
    deadline,
    learning_rate,
    total_steps,
    train,
)


def _blobs(n_per_class: int = 12, classes: int = 3, dim: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Linearly separable data: (N, dim) points around well-separated centres, (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.eye(classes, dim)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + 0.3 * torch.randn(len(y), dim, generator=g)
    return x, y


def _model(dim: int = 4, classes: int = 3, dropout: float = 0.0, seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, classes))


def _threshold_problem(theta0: float = 0.0) -> tuple[nn.Parameter, object, Tensor, Tensor]:
    """1-d inputs (N,), class 1 iff x > theta; training labels put the threshold at 5."""
    theta = nn.Parameter(torch.tensor([theta0]))

    def forward(x: Tensor) -> Tensor:  # (B,) -> (B, 2)
        return torch.stack([torch.zeros_like(x), 2.0 * (x - theta)], dim=1)

    x = torch.linspace(0.05, 9.95, 100)
    return theta, forward, x, (x > 5).long()


def _snapshot(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


# ---------------------------------------------------------------------------------------------- learning


def test_learns_a_linearly_separable_problem() -> None:
    x, y = _blobs()
    model = _model()
    res = train(model, list(model.parameters()), x, y, TrainConfig(lr=0.1, steps=60, batch_size=8))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc == 1.0
    assert res.steps == 60 and len(res.history) == 60 and not res.diverged
    assert res.final_loss == res.history[-1]["loss"] < 0.25 * res.history[0]["loss"]
    assert res.best_step is None and res.best_val_accuracy is None
    assert all(p.grad is None for p in model.parameters())
    json.dumps(res.to_dict(), allow_nan=False)


def test_only_the_given_params_are_updated_and_get_no_stray_grads() -> None:
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    frozen = _snapshot(list(model[0].parameters()))
    before = _snapshot(list(model[2].parameters()))
    train(model, list(model[2].parameters()), x, y, TrainConfig(lr=0.05, steps=5))
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(before, model[2].parameters(), strict=True))


def test_works_inside_inference_mode() -> None:
    model = _model()
    with torch.inference_mode():
        x, y = _blobs()  # inference tensors, as a feature cache would hand them over
        res = train(model, list(model.parameters()), x, y, TrainConfig(lr=0.1, steps=30))
    assert res.final_loss < res.history[0]["loss"] and not res.diverged


def test_epochs_draw_every_example_once_per_epoch_and_extra_loss_sees_the_batch() -> None:
    n = 10
    x = torch.arange(n, dtype=torch.float32)[:, None]  # (N, 1): the value is the example's index
    y = torch.arange(n) % 2
    model = _model(dim=1, classes=2)
    seen: list[list[int]] = []

    def extra(bx: Tensor, by: Tensor, logits: Tensor, idx: Tensor) -> Tensor:
        assert bx.shape[0] == by.shape[0] == logits.shape[0] and logits.shape[1] == 2
        assert torch.equal(by, y[bx[:, 0].long()])
        assert torch.equal(idx.cpu(), bx[:, 0].long())  # the batch's rows of the training inputs
        seen.append(bx[:, 0].long().tolist())
        return logits.new_zeros(())

    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01)
    assert total_steps(cfg, n) == 9
    res = train(model, list(model.parameters()), x, y, cfg, extra_loss=extra)
    assert res.steps == 9
    assert [len(b) for b in seen] == [4, 4, 2] * 3
    for epoch in range(3):
        ids = [i for b in seen[3 * epoch : 3 * epoch + 3] for i in b]
        assert sorted(ids) == list(range(n))
    seen.clear()
    train(model, list(model.parameters()), x, y, TrainConfig(steps=2, batch_size=64), extra_loss=extra)
    assert [len(b) for b in seen] == [n, n]  # batch size clipped to N


def test_modules_are_in_train_mode_for_steps_eval_mode_for_validation_and_restored() -> None:
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1))
    model.train()
    model[1].eval()  # a mixed state that must come back as it was
    modes: dict[bool, set[tuple[bool, ...]]] = {True: set(), False: set()}

    def forward(b: Tensor) -> Tensor:
        modes[torch.is_grad_enabled()].add(tuple(m.training for m in model.modules()))
        return model(b)

    cfg = TrainConfig(steps=4, eval_every=2, lr=0.01)
    train(forward, list(model.parameters()), x, y, cfg, modules=[model], val=(x, y))
    assert modes[True] == {(True, True, True)}
    assert modes[False] == {(False, False, False)}
    assert model.training and model[0].training and not model[1].training


def test_amp_is_recorded_off_on_cpu_and_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _blobs()
    model = _model()
    res = train(model, list(model.parameters()), x, y, TrainConfig(steps=3, amp=True, progress=True))
    assert res.amp is False and res.device == "cpu" and res.steps == 3
    assert "3/3" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- determinism


def _dropout_run(seed: int, global_seed: int) -> list[Tensor]:
    x, y = _blobs()
    model = _model(dropout=0.3)
    torch.manual_seed(global_seed)  # the caller's global state must not matter
    cfg = TrainConfig(lr=0.05, steps=15, batch_size=5, seed=seed, weight_decay=0.01)
    train(model, list(model.parameters()), x, y, cfg, modules=[model])
    return _snapshot(list(model.parameters()))


def test_same_seed_same_weights_bit_for_bit_and_another_seed_differs() -> None:
    with torch.random.fork_rng(devices=[]):
        a = _dropout_run(seed=1, global_seed=10)
        b = _dropout_run(seed=1, global_seed=20)
        c = _dropout_run(seed=2, global_seed=10)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_global_rng_state_is_untouched() -> None:
    x, y = _blobs()
    model = _model(dropout=0.5)
    state = torch.get_rng_state()
    res = train(model, list(model.parameters()), x, y, TrainConfig(steps=5, seed=3), modules=[model])
    assert res.steps == 5
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------------------------------ divergence


def test_nan_extra_loss_stops_at_that_step_with_the_last_finite_weights() -> None:
    x, y = _blobs()
    cfg = TrainConfig(lr=0.05, min_lr=0.05, steps=10, batch_size=6)  # constant lr: runs are comparable
    reference = _model()
    train(reference, list(reference.parameters()), x, y, dataclasses.replace(cfg, steps=2))

    calls: list[int] = []

    def extra(bx: Tensor, by: Tensor, logits: Tensor, idx: Tensor) -> Tensor:
        calls.append(1)
        return logits.sum() * (math.nan if len(calls) == 3 else 0.0)

    model = _model()
    res = train(model, list(model.parameters()), x, y, cfg, extra_loss=extra)
    assert res.diverged and res.diverged_at == 3 and res.diverged_reason == "loss"
    assert res.steps == 2 and len(res.history) == 2
    assert math.isfinite(res.final_loss) and res.final_loss == res.history[-1]["loss"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))


def test_huge_learning_rate_diverges_and_leaves_finite_weights() -> None:
    x, y = _blobs()
    model = _model()
    cfg = TrainConfig(optimizer="sgd", lr=1e30, momentum=0.0, steps=50, batch_size=36)
    res = train(model, list(model.parameters()), x, y, cfg)
    assert res.diverged and res.diverged_at is not None and res.diverged_at <= 50
    assert res.steps == res.diverged_at - 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_update_that_overflows_the_weights_is_undone() -> None:
    x, y = _blobs()
    model = _model()
    before = _snapshot(list(model.parameters()))
    scale = 1e10  # a finite gradient (and norm) whose SGD step at lr 1e30 overflows float32
    cfg = TrainConfig(optimizer="sgd", lr=1e30, momentum=0.0, steps=5)
    res = train(
        model,
        list(model.parameters()),
        x,
        y,
        cfg,
        extra_loss=lambda bx, by, lg, _idx: scale * lg[:, 0].mean(),
    )
    assert res.diverged and res.diverged_at == 1 and res.diverged_reason == "parameters"
    assert res.steps == 0 and math.isnan(res.final_loss) and res.history == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert res.to_dict()["final_loss"] is None
    json.dumps(res.to_dict(), allow_nan=False)


def test_non_finite_gradient_stops_before_the_update() -> None:
    x, y = _blobs()
    model = _model()
    before = _snapshot(list(model.parameters()))
    w0 = model[1].weight.detach().clone()

    def extra(bx: Tensor, by: Tensor, logits: Tensor, idx: Tensor) -> Tensor:
        return torch.sqrt((model[1].weight - w0).abs()).sum()  # 0 with an infinite slope at w0

    res = train(model, list(model.parameters()), x, y, TrainConfig(steps=5), extra_loss=extra)
    assert res.diverged and res.diverged_at == 1 and res.diverged_reason == "gradient"
    assert res.steps == 0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


# ------------------------------------------------------------------------------------------ validation


def _val_cfg(**kw: object) -> TrainConfig:
    base = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.5, "min_lr": 0.5, "steps": 60, "batch_size": 100}
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_validation_keeps_the_best_step_when_later_steps_get_worse() -> None:
    theta, forward, x, y = _threshold_problem()
    val = (x, (x > 2).long())  # validation disagrees: best threshold is 2, training drives it to 5
    res = train(forward, [theta], x, y, _val_cfg(eval_every=1), val=val)
    accs = [row["val_accuracy"] for row in res.history]
    assert res.steps == 60 and not res.diverged
    assert res.best_val_accuracy == max(accs) > accs[-1]
    assert res.best_step == 1 + accs.index(max(accs)) < 60  # ties go to the earlier step
    with torch.no_grad():
        assert float((forward(val[0]).argmax(1) == val[1]).float().mean()) == res.best_val_accuracy

    again, forward2, _, _ = _threshold_problem()  # the same run, stopped at best_step, no validation
    plain = train(forward2, [again], x, y, _val_cfg(steps=res.best_step))
    assert plain.best_step is None and torch.equal(theta, again)


def test_patience_stops_after_that_many_evaluations_without_improvement() -> None:
    theta, forward, x, y = _threshold_problem()
    val = (x, (x > 2).long())
    res = train(forward, [theta], x, y, _val_cfg(eval_every=2, patience=3), val=val)
    assert res.best_step is not None and res.best_step % 2 == 0
    assert res.steps == res.best_step + 2 * 3 < 60
    assert sum("val_accuracy" in row for row in res.history) == res.steps // 2


def test_validation_ties_keep_the_earliest_evaluated_weights() -> None:
    theta, forward, x, y = _threshold_problem()
    val = (torch.tensor([100.0]), torch.tensor([1]))  # always right: every evaluation ties
    res = train(forward, [theta], x, y, _val_cfg(steps=10, eval_every=3), val=val)
    assert res.best_step == 3 and res.best_val_accuracy == 1.0
    assert [r["step"] for r in res.history if "val_accuracy" in r] == [3, 6, 9, 10]  # and the last step
    again, forward2, _, _ = _threshold_problem()
    train(forward2, [again], x, y, _val_cfg(steps=3))
    assert torch.equal(theta, again)


def test_divergence_after_a_validated_best_still_restores_the_best() -> None:
    theta, forward, x, y = _threshold_problem()
    val = (x, (x > 2).long())
    calls: list[int] = []

    def extra(bx: Tensor, by: Tensor, logits: Tensor, idx: Tensor) -> Tensor:
        calls.append(1)
        return logits.new_tensor(math.inf if len(calls) == 20 else 0.0)

    res = train(forward, [theta], x, y, _val_cfg(eval_every=1), val=val, extra_loss=extra)
    assert res.diverged and res.diverged_at == 20 and res.steps == 19
    assert res.best_step is not None and res.best_step < 19
    again, forward2, _, _ = _threshold_problem()
    train(forward2, [again], x, y, _val_cfg(steps=res.best_step))
    assert torch.equal(theta, again)


def test_validation_is_ignored_without_eval_every() -> None:
    theta, forward, x, y = _threshold_problem()
    res = train(forward, [theta], x, y, _val_cfg(steps=5), val=(x, y))
    assert res.best_step is None and all("val_accuracy" not in r for r in res.history)


# ------------------------------------------------------------------------------------ schedule & decay


def test_warmup_then_cosine_learning_rates() -> None:
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=3, steps=10)
    lrs = [learning_rate(s, 10, cfg) for s in range(1, 11)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 7)))
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 6 / 7)))
    assert all(a > b for a, b in itertools.pairwise(lrs[3:])) and lrs[9] > 0.1
    no_warmup = TrainConfig(lr=2.0, steps=4)
    assert [learning_rate(s, 4, no_warmup) for s in (1, 3)] == pytest.approx([2.0, 1.0])

    # the optimiser really uses them: SGD on a parameter whose gradient is always 1
    x, y = _blobs()
    model = _model()
    p = nn.Parameter(torch.zeros(1))
    sgd = dataclasses.replace(cfg, optimizer="sgd", momentum=0.0, weight_decay=0.0)
    res = train(model, [*model.parameters(), p], x, y, sgd, extra_loss=lambda bx, by, lg, _idx: p.sum())
    assert [r["lr"] for r in res.history] == pytest.approx(lrs)
    assert float(p.detach()) == pytest.approx(-sum(lrs), rel=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_skips_one_dimensional_params(optimizer: str) -> None:
    x, y = _blobs()
    model = _model()
    scale = nn.Parameter(torch.full((3,), 2.0))  # 1-d: no decay
    matrix = nn.Parameter(torch.ones(2, 2))  # 2-d: decayed
    cfg = TrainConfig(optimizer=optimizer, lr=0.1, min_lr=0.1, weight_decay=0.5, momentum=0.0, steps=5)

    def extra(bx: Tensor, by: Tensor, logits: Tensor, idx: Tensor) -> Tensor:
        return 0.0 * (scale.sum() + matrix.sum())  # zero gradients, but present

    train(model, [*model.parameters(), scale, matrix], x, y, cfg, extra_loss=extra)
    assert torch.equal(scale, torch.full((3,), 2.0))
    # AdamW: decoupled p *= 1 - lr wd; SGD (no momentum): p -= lr (0 + wd p). Both shrink by 0.95 a step.
    assert torch.allclose(matrix, torch.full((2, 2), 0.95**5), rtol=1e-5)


def test_label_smoothing_matches_torch_cross_entropy() -> None:
    x, y = _blobs()
    model = _model(seed=4)
    with torch.no_grad():
        logits = model(x)
    eps = 0.2
    cfg = TrainConfig(steps=1, batch_size=len(y), label_smoothing=eps)
    res = train(model, list(model.parameters()), x, y, cfg)  # loss of step 1 is before its update
    logp = logits.log_softmax(1)
    by_hand = (1 - eps) * F.nll_loss(logp, y) - eps * logp.mean(1).mean()
    assert res.history[0]["loss"] == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=eps)))
    assert res.history[0]["loss"] == pytest.approx(float(by_hand), rel=1e-6)
    assert res.history[0]["loss"] != pytest.approx(float(F.cross_entropy(logits, y)))


def test_grad_clip_bounds_the_global_update() -> None:
    x, y = _blobs()
    model = _model()
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    params = [*model.parameters(), a, b]
    before = torch.cat([q.detach().flatten() for q in params])
    cfg = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, steps=1, grad_clip=0.5)
    # autograd hands a and b one shared, expanded gradient tensor: each must still be scaled once
    res = train(model, params, x, y, cfg, extra_loss=lambda bx, by, lg, _idx: 1000.0 * (a + b).sum())
    after = torch.cat([q.detach().flatten() for q in params])
    assert res.history[0]["grad_norm"] > 2000.0 * math.sqrt(2)  # recorded before clipping
    assert float((after - before).norm()) == pytest.approx(0.5, rel=1e-4)
    assert torch.equal(a, b) and float(a.detach()[0]) < 0


# -------------------------------------------------------------------------------------------- deadline


def test_the_deadline_names_live_in_focusshot_deadlines_and_are_re_exported() -> None:
    names = ("PACE_STEPS", "DeadlineExceeded", "check_deadline", "deadline", "now")
    assert all(getattr(loop, n) is getattr(deadlines, n) for n in names)
    assert set(names) <= set(loop.__all__)
    assert deadlines.check_deadline() is None  # no enclosing deadline: nothing read


def test_a_deadline_in_the_past_stops_training_before_its_first_step() -> None:
    x, y = _blobs()
    model = _model(dropout=0.5)
    model.eval()
    before = _snapshot(list(model.parameters()))
    calls: list[int] = []

    def forward(b: Tensor) -> Tensor:
        calls.append(1)
        return model(b)

    with deadline(loop.now() - 1.0), pytest.raises(DeadlineExceeded, match="step 1 of 20") as info:
        train(forward, list(model.parameters()), x, y, TrainConfig(steps=20), modules=[model])
    assert isinstance(info.value, RuntimeError) and not isinstance(info.value, ValueError)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not model.training and not model[0].training  # modes come back as on any exception
    assert all(p.grad is None for p in model.parameters())


def test_a_deadline_passed_mid_training_stops_at_that_step(monkeypatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(deadlines, "now", lambda: float(next(ticks)))  # each step's check: one second
    x, y = _blobs()
    model = _model()
    steps: list[int] = []

    def forward(b: Tensor) -> Tensor:
        steps.append(1)
        return model(b)

    with deadline(5.0), pytest.raises(DeadlineExceeded, match="step 6 of 20") as info:
        train(forward, list(model.parameters()), x, y, TrainConfig(steps=20))
    assert len(steps) == 5 and not info.value.projected  # steps 1..5 were taken (checks read 0..4)


def test_the_pace_of_its_steps_stops_a_run_that_would_end_past_its_deadline(monkeypatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(deadlines, "now", lambda: float(next(ticks)))  # each step's check: one second
    x, y = _blobs()
    model = _model()
    cfg = TrainConfig(steps=20)
    with deadline(30.0):  # 20 steps end at 19 s: no repeat, no stop
        assert train(model, list(model.parameters()), x, y, cfg).steps == 20
    ticks = itertools.count()
    with deadline(30.0, repeats=1), pytest.raises(DeadlineExceeded, match="step 7 of 20") as info:
        train(model, list(model.parameters()), x, y, cfg)  # 20 steps and 20 more cannot end by 30 s
    # the pace is trusted after PACE_STEPS steps past the first: at step 7, long before the deadline
    assert info.value.projected and loop.PACE_STEPS == 5 and "would end" in str(info.value)
    with pytest.raises(ValueError, match="repeats"), deadline(30.0, repeats=-1):
        pass


def test_deadlines_nest_and_end_with_their_block() -> None:
    x, y = _blobs()
    cfg = TrainConfig(lr=0.1, steps=10)
    free = _model()
    ref = train(free, list(free.parameters()), x, y, cfg)
    for at in (None, math.inf, loop.now() + 3600.0):  # no deadline, or one far away: the same run
        model = _model()
        with deadline(at):
            res = train(model, list(model.parameters()), x, y, cfg)
        assert res.history == ref.history
        assert all(torch.equal(a, b) for a, b in zip(free.parameters(), model.parameters(), strict=True))
    model = _model()
    with deadline(loop.now() - 1.0):
        with deadline(math.inf), pytest.raises(DeadlineExceeded):  # an inner deadline cannot extend
            train(model, list(model.parameters()), x, y, cfg)
        with deadline(None), pytest.raises(DeadlineExceeded):
            train(model, list(model.parameters()), x, y, cfg)
    assert train(model, list(model.parameters()), x, y, cfg).steps == 10  # the block is over


# ---------------------------------------------------------------------------------------------- config


def test_every_field_has_help_text() -> None:
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))
    assert dataclasses.fields(TrainResult)[0].name == "steps"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("optimizer", "adam"),
        ("lr", 0.0),
        ("lr", math.inf),
        ("weight_decay", -1.0),
        ("momentum", 1.0),
        ("steps", 0),
        ("steps", 2.5),
        ("epochs", -1),
        ("batch_size", 0),
        ("warmup_steps", -1),
        ("min_lr", 1.0),  # above lr
        ("label_smoothing", 1.0),
        ("grad_clip", -0.1),
        ("amp", 1),
        ("eval_every", -2),
        ("patience", True),
        ("seed", -1),
        ("progress", "yes"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{name: value})  # type: ignore[arg-type]


def test_patience_needs_eval_every() -> None:
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=2)
    assert TrainConfig(patience=2, eval_every=1).patience == 2


def test_bad_inputs_are_refused() -> None:
    x, y = _blobs()
    model = _model()
    ps = list(model.parameters())
    cfg = TrainConfig(steps=1)
    with pytest.raises(ValueError, match="int64"):
        train(model, ps, x, y.int(), cfg)
    with pytest.raises(ValueError, match="disagree"):
        train(model, ps, x[:-1], y, cfg)
    with pytest.raises(ValueError, match="empty"):
        train(model, [], x, y, cfg)
    with pytest.raises(ValueError, match="requires_grad"):
        train(model, [torch.zeros(3)], x, y, cfg)
    with pytest.raises(ValueError, match="more than once"):
        train(model, [ps[0], ps[0]], x, y, cfg)
    with pytest.raises(ValueError, match="training labels reach 3"):
        train(model, ps, x, y + 1, cfg)
    with pytest.raises(ValueError, match="validation labels reach 5"):
        train(model, ps, x, y, dataclasses.replace(cfg, eval_every=1), val=(x, y + 3))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        train(lambda b: model(b)[:, 0], ps, x, y, cfg)
