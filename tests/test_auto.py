"""fit --method auto: cross-validation on the support set alone, folds that keep every class, the
one-image-per-class fallback, the time budget every candidate spends from, and the saved report."""

import json
import random

import pytest

from focusshot import auto, deadlines
from focusshot.api import Classifier, fit
from focusshot.auto import choose_method, cv_folds
from focusshot.backbones.registry import create_backbone
from focusshot.cli import main
from focusshot.data.sources import from_folder
from focusshot.evaluation.cache import FeatureCache
from focusshot.methods.base import auto_candidates, method_class
from tests.evaluation.test_protocols import _write_dataset


def test_folds_keep_every_class_and_cover_each_image_once() -> None:
    labels = [c for c in range(4) for _ in range(13)]  # 52 images: stratified k-fold, k = 5
    folds = cv_folds(labels, seed=3)
    assert len(folds) == 5 and sorted(i for f in folds for i in f) == list(range(52))
    for held in folds:
        rest = {labels[i] for i in range(52) if i not in held}
        assert rest == {0, 1, 2, 3}
    assert cv_folds([0, 0, 1, 1], seed=0) == [[0], [1], [2], [3]]  # small: leave-one-out
    with pytest.raises(ValueError, match="one image"):
        cv_folds([0, 1, 1], seed=0)


def test_auto_reads_only_the_support_set(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data", classes=3, per_class=4, splits=("train", "val", "test"))
    # two frozen candidates and one that trains (of the registry's, cheapest first) keep the two
    # leave-one-out runs short; which candidates run is not what this test is about
    chosen = [n for n in auto_candidates() if not method_class(n).trains][:2]
    chosen += [n for n in auto_candidates() if method_class(n).trains][:1]
    monkeypatch.setattr(auto, "auto_candidates", lambda: chosen)
    # an unlimited budget: which trained candidates run must not depend on how busy the CPU is
    first = fit(root, backbone="tiny-vit", method="auto", budget_s=float("inf")).info["auto"]
    # poison the test and validation splits: shuffle their images across class folders
    for split in ("test", "val"):
        files = sorted((root / split).rglob("*.png"))
        blobs = [f.read_bytes() for f in files]
        random.Random(0).shuffle(blobs)
        for f, b in zip(files, blobs, strict=True):
            f.write_bytes(b)
    second = fit(root, backbone="tiny-vit", method="auto", budget_s=float("inf")).info["auto"]
    strip = lambda rep: [{k: v for k, v in r.items() if k != "seconds"} for r in rep["candidates"]]  # noqa: E731
    assert first["method"] == second["method"] and strip(first) == strip(second)
    assert first["estimated"] and first["folds"]["scheme"] == "leave-one-out"
    assert all(r["held_out"] == 12 for r in first["candidates"])
    tried = {r["method"] for r in first["candidates"]}
    assert tried and tried <= set(chosen)


def test_one_image_per_class_refuses_to_estimate(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data", classes=3, per_class=1)
    clf = fit(root, backbone="tiny-vit", method="auto")
    rep = clf.info["auto"]
    assert not rep["estimated"] and rep["method"] == "protonet" == clf.method  # tiny-vit has no text
    assert "no honest estimate" in rep["reason"]
    again = Classifier.load(clf.save(tmp_path / "c.safetensors"))
    assert again.info["auto"]["method"] == "protonet"


class _Clock:
    """A fake :func:`focusshot.deadlines.now`: stands still, or moves ``tick`` seconds a call."""

    def __init__(self) -> None:
        self.t, self.tick = 1000.0, 0.0

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def _choose_on_a_fake_clock(
    tmp_path, monkeypatch, backbone: str, budget_s: float, candidates: list[str], **costs: tuple[float, float]
) -> dict:
    """``choose_method`` over 2 classes x 3 images (6 folds) on a clock that stands still but where
    ``costs`` say: ``name=(seconds a fold, seconds a training step)``."""
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    clock = _Clock()
    monkeypatch.setattr(deadlines, "now", clock)
    monkeypatch.setattr(auto, "now", clock)
    for name, (per_fold, per_step) in costs.items():
        cls = method_class(name)

        def slow_fit(self, *args, _fit=cls.fit, _fold=per_fold, _step=per_step, **kwargs):
            clock.tick = _step
            try:
                return _fit(self, *args, **kwargs)
            finally:
                clock.tick = 0.0
                clock.t += _fold

        monkeypatch.setattr(cls, "fit", slow_fit)
    root = _write_dataset(tmp_path / "data", classes=2, per_class=3)
    support, cache = from_folder(root), FeatureCache(tmp_path / "c")
    return choose_method(create_backbone(backbone), support, cache, budget_s=budget_s, candidates=candidates)


def test_a_budget_of_zero_starts_no_candidate_and_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data", classes=2, per_class=3)
    clip = create_backbone("tiny-clip-vit")
    names = ["protonet", "tip_adapter", "coop"]
    rep = choose_method(clip, from_folder(root), FeatureCache(tmp_path / "c"), budget_s=0.0, candidates=names)
    assert not rep["estimated"] and rep["method"] == "tip_adapter"  # the CLIP fallback, said plainly
    assert "no candidate could be cross-validated" in rep["reason"]
    assert list(rep["skipped"]) == names
    assert all(why == "not started: the budget of 0 s was spent" for why in rep["skipped"].values())
    assert rep["budget"]["spent_s"] == 0 and rep["budget"]["seconds"] == {}
    with pytest.raises(ValueError, match="budget_s"):
        choose_method(clip, from_folder(root), FeatureCache(tmp_path / "c"), budget_s=-1.0)


def test_every_candidate_spends_from_the_budget_and_is_stopped_when_it_will_not_fit(
    tmp_path, monkeypatch
) -> None:
    """ridge (frozen) takes 4 s a fold, so its 6 folds cannot fit in 10 s and it is stopped after
    the first; each of APT's training steps takes 1 s, so the budget's deadline stops it in its
    first fold; zeroshot finds no time left. Only protonet (0 s) is estimated."""
    names = ["protonet", "ridge", "apt", "zeroshot"]
    rep = _choose_on_a_fake_clock(
        tmp_path, monkeypatch, "tiny-clip-vit", 10.0, names, ridge=(4.0, 0.0), apt=(0.0, 1.0)
    )
    assert rep["estimated"] and rep["method"] == "protonet"
    assert [r["method"] for r in rep["candidates"]] == ["protonet"]
    skipped = rep["skipped"]
    assert skipped["ridge"].startswith("stopped after fold 1 of 6: at ~4.0 s a fold, its other 5 folds")
    assert skipped["apt"] == "stopped in fold 1 of 6 (training at step 6 of 50): the budget of 10 s was spent"
    assert skipped["zeroshot"] == "not started: the budget of 10 s was spent"
    budget = rep["budget"]
    assert budget["seconds"] == {"protonet": 0.0, "ridge": 4.0, "apt": 6.0}
    assert budget["spent_s"] == 10.0 <= budget["budget_s"] and budget["left_s"] == 0.0


def test_training_whose_pace_will_not_fit_is_stopped_early_in_its_first_fold(tmp_path, monkeypatch) -> None:
    """Each of APT's 50 steps a fold takes 1 s: 6 folds cannot fit in 100 s, and the pace of its
    first steps says so at step 7, long before the budget is spent."""
    names = ["protonet", "apt"]
    rep = _choose_on_a_fake_clock(tmp_path, monkeypatch, "tiny-clip-vit", 100.0, names, apt=(0.0, 1.0))
    assert rep["skipped"]["apt"] == (
        "stopped in fold 1 of 6 (training at step 7 of 50): at the pace of its training, its 6 folds "
        "would not end within the budget of 100 s"
    )
    assert rep["budget"]["seconds"] == {"protonet": 0.0, "apt": 7.0} and rep["budget"]["left_s"] == 93.0


def test_a_solver_head_is_stopped_in_mid_fold_like_training(tmp_path, monkeypatch) -> None:
    """Each clock read inside a head's fit takes 1 s. MetaOptNet's dual solver finds the deadline
    (0.5 s) passed at its first check, the probe's Newton steps (no validation in a fold: C fixed)
    at the third; LP++'s pace says at its seventh epoch that its 300 epochs in 6 folds cannot end
    within 100 s, long before the budget is spent. Each is listed as stopped in its first fold, with
    the step it was at and the reason."""
    rep = _choose_on_a_fake_clock(
        tmp_path, monkeypatch, "tiny-clip-vit", 0.5, ["protonet", "metaoptnet"], metaoptnet=(0.0, 1.0)
    )
    assert [r["method"] for r in rep["candidates"]] == ["protonet"]
    assert rep["skipped"]["metaoptnet"] == (
        "stopped in fold 1 of 6 (the dual solver at iteration 0): the budget of 0.5 s was spent"
    )
    assert rep["budget"]["seconds"] == {"protonet": 0.0, "metaoptnet": 1.0}
    rep = _choose_on_a_fake_clock(
        tmp_path, monkeypatch, "tiny-clip-vit", 3.0, ["protonet", "logistic"], logistic=(0.0, 1.0)
    )
    assert rep["skipped"]["logistic"] == (
        "stopped in fold 1 of 6 (the logistic probe's Newton step 3): the budget of 3 s was spent"
    )
    rep = _choose_on_a_fake_clock(tmp_path, monkeypatch, "tiny-clip-vit", 100.0, ["lp_pp"], lp_pp=(0.0, 1.0))
    assert rep["skipped"]["lp_pp"] == (
        "stopped in fold 1 of 6 (lp_pp at epoch 7 of 300): at the pace of its solver, its 6 folds would "
        "not end within the budget of 100 s"
    )
    assert rep["budget"]["seconds"] == {"lp_pp": 7.0} and rep["budget"]["left_s"] == 93.0


def test_a_budget_that_holds_every_fold_keeps_room_for_the_final_fit(tmp_path, monkeypatch) -> None:
    """ridge at 1 s a fold fits 6 folds in 10 s, and its final fit (~1.2 s: 6 images, not 5) is kept
    from the budget once it leads; nearest_neighbour, also at 1 s a fold, then finds 1.8 s left for
    its other 5 folds after its first, and is stopped."""
    names = ["ridge", "nearest_neighbour"]
    costs = {"ridge": (1.0, 0.0), "nearest_neighbour": (1.0, 0.0)}
    rep = _choose_on_a_fake_clock(tmp_path, monkeypatch, "tiny-vit", 10.0, names, **costs)
    assert [r["method"] for r in rep["candidates"]] == ["ridge"]
    assert rep["skipped"]["nearest_neighbour"].startswith("stopped after fold 1 of 6: at ~1.0 s a fold")
    assert rep["skipped"]["nearest_neighbour"].endswith("(1.8 s left)")
    budget = rep["budget"]
    assert budget["seconds"] == {"ridge": 6.0, "nearest_neighbour": 1.0} and budget["final_fit_s"] == 1.2
    assert budget["spent_s"] + budget["final_fit_s"] <= budget["budget_s"]


def test_cli_prints_the_candidates_and_how_the_budget_was_spent(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "auto_candidates", lambda: ["protonet", "ridge", "coop"])
    root = _write_dataset(tmp_path / "data", classes=2, per_class=3)
    out = tmp_path / "auto.safetensors"
    args = ["fit", str(root), "--backbone", "tiny-clip-vit", "--random-weights", "--method", "auto"]
    assert main([*args, "--budget", "1h", "--output", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "auto.auto.json").read_text())
    assert f"auto chose {report['method']!r}" in text and "cross-validated accuracy" in text
    assert "budget 3600 s: " in text and "outside the budget" in text
    assert set(report["budget"]["seconds"]) == {"protonet", "ridge", "coop"}
    assert main([*args, "--budget", "0s", "--output", str(out), "--quiet"]) == 0
    assert "skipped: coop (not started: the budget of 0 s was spent)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no options"):
        fit(root, backbone="tiny-vit", method="auto", options={"C": 1})


def test_heads_fit_on_one_thread_and_training_on_all(tmp_path, monkeypatch) -> None:
    """Candidates' folds run as evaluate runs them: a head's fit and scoring on one CPU thread
    (:func:`~focusshot.evaluation.protocols.head_threads`), a trained method's on torch's setting;
    the setting is restored afterwards."""
    import torch

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data", classes=2, per_class=3)
    seen: dict[str, set[int]] = {}
    for name in ("protonet", "lora"):
        cls = method_class(name)
        original = cls.fit

        def counted(self, *args, _name=name, _fit=original, **kw):
            seen.setdefault(_name, set()).add(torch.get_num_threads())
            return _fit(self, *args, **kw)

        monkeypatch.setattr(cls, "fit", counted)
    monkeypatch.setattr(auto, "auto_candidates", lambda: ["protonet", "lora"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(root, backbone="tiny-vit", method="auto", budget_s=float("inf"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert 1 in seen["protonet"]  # its folds (a final fit, if it wins, runs as fit runs it)
    assert 2 in seen["lora"]
