"""The open-set part of the method contract, driven by the registry (issue 33).

For every method, alias and tiny backbone family of :mod:`tests.test_contract` (the fits are shared
with it, one per session): the method's documented default score
(:attr:`~focusshot.methods.base.Method.open_score`) is one its fit gives; every score the fit
claims is finite and of shape ``(M,)``; every score it refuses says why and raises naming the
method; and a rejection threshold survives save -> load, with ``predict`` labelling ``unknown``
exactly below it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from focusshot.classifier import UNKNOWN, Classifier
from focusshot.methods.base import method_class
from focusshot.methods.open_set import SCORES, open_scores
from tests.test_contract import CASES, contract_root, fitted_case

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
