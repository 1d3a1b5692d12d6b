"""The open-set part of the method contract, driven by the registry (issue 33).

For every method, alias and tiny backbone family of :mod:`tests.test_contract` (the fits are shared
with it, one per session): the method's documented default score
(:attr:`~focusshot.methods.base.Method.open_score`) is one its fit gives; every score the fit
claims is finite and of shape ``(M,)``; every score it refuses says why and raises naming the
method; and a rejection threshold survives save -> load, with ``predict`` labelling ``unknown``
exactly below it. ``--reject auto`` at one image per class (augmented views as the known images,
with the boxes mapped into them for the methods that read boxes) runs for every method that
trains nothing, and is refused, saying why, for those that do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import focusshot
from focusshot.classifier import UNKNOWN, Classifier
from focusshot.evaluation.open_set import LOCO_VIEWS, loco_refusal
from focusshot.methods.base import create_method, list_methods, method_class
from focusshot.methods.open_set import SCORES, open_scores
from tests.test_contract import CASES, _shrunk, contract_data, contract_root, fitted_case

__all__ = ["contract_root"]  # the session fixture, imported for pytest


@pytest.mark.parametrize(("name", "alias", "family"), CASES)
def test_open_scores(name: str, alias: bool, family: str, contract_root: Path) -> None:
    case = fitted_case(name, alias, family, contract_root)
    clf = case.clf
    if clf is None:
        return  # the refusal is test_contract's
    support = clf.fitted.open_scores()
    assert set(support) == set(SCORES), (case.method, sorted(support))
    default = method_class(name).open_score
    assert support[default] == "", f"{case.method}: default score {default!r} refused: {support[default]}"
    feats = clf.embed(case.query.paths).features
    given = [s for s, why in support.items() if not why]
    with torch.inference_mode():
        scores = open_scores(clf.fitted, feats, given, case.regions, temperature=clf.temperature)
    for s in given:
        assert scores[s].shape == (len(case.query.paths),), (case.method, s)
        assert torch.isfinite(scores[s]).all(), (case.method, s, scores[s])
    for s, why in support.items():
        if why:
            with pytest.raises(ValueError, match=case.method.replace("+", r"\+")):
                open_scores(clf.fitted, feats, [s], case.regions)


@pytest.mark.parametrize(
    ("name", "alias", "family"), [c for c in CASES if c.values[2] == "tiny-clip-vit" and not c.values[1]]
)
def test_threshold_survives_save_and_load(
    name: str, alias: bool, family: str, contract_root: Path, tmp_path: Path
) -> None:
    case = fitted_case(name, alias, family, contract_root)
    assert case.clf is not None, case.refusal
    clf, query = case.clf, case.query
    default = method_class(name).open_score
    feats = clf.embed(query.paths).features
    with torch.inference_mode():
        scores = open_scores(clf.fitted, feats, [default], case.regions, temperature=clf.temperature)[default]
    threshold = float(scores.median())  # some above, some below
    reject = {"score": default, "threshold": threshold, "chosen_by": "given"}
    with_reject = Classifier(clf.backbone, clf.fitted, clf.class_names, clf.method, clf.backbone_spec, {
        **clf.info, "reject": reject,
    })  # fmt: skip
    again = Classifier.load(with_reject.save(tmp_path / "c.safetensors"))
    assert again.info["reject"] == reject and again.rejection() == (default, threshold)
    preds = again.predict(query.paths, boxes=dict(zip(query.paths, query.boxes or [], strict=True)))
    assert [p.path for p in preds] == query.paths
    got = torch.tensor([p.score for p in preds], dtype=torch.float64)
    torch.testing.assert_close(got, scores.double(), atol=1e-6, rtol=1e-6)
    assert [p.label == UNKNOWN for p in preds] == [float(s) < threshold for s in scores]


@pytest.mark.parametrize("name", list_methods())
def test_reject_auto_at_one_shot(name: str, contract_root: Path) -> None:
    train, _, cache = contract_data(contract_root)
    first = [train.labels.index(c) for c in range(len(train.class_names))]  # one image per class
    assert train.boxes is not None
    one = dataclasses.replace(
        train,
        paths=[train.paths[i] for i in first],
        labels=[train.labels[i] for i in first],
        boxes=[train.boxes[i] for i in first],
    )
    m = create_method(name, _shrunk(name))
    fit = dict(backbone="tiny-clip-vit", method=name, options=_shrunk(name), cache_dir=cache, reject="auto")
    why = loco_refusal(m, one.labels)
    if why:
        assert m.trains, (name, why)  # three classes: only training is refused
        with pytest.raises(ValueError, match="trains per fit"):
            focusshot.fit(one, **fit)
        return
    r = focusshot.fit(one, **fit).info["reject"]
    assert r["chosen_by"] == "leave-one-class-out on the support set, augmented views as the known images"
    assert r["views"] == LOCO_VIEWS and r["folds"] == 3 and r["unknown_scores"] == 3, (name, r)
    every_view = 3 * 2 * LOCO_VIEWS
    if m.needs_regions and m.uses_boxes():  # views that crop the box away are no known images
        assert 0 < r["known_scores"] <= every_view, (name, r)
    else:
        assert r["known_scores"] == every_view, (name, r)
    assert torch.isfinite(torch.tensor(r["threshold"])) and 0.0 <= r["auroc"] <= 1.0, (name, r)
