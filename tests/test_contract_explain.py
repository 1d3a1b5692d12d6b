"""``explain`` through the contract's registry loop (issue 34): every registered method on every
tiny family explains its predictions, with the rule its backbone and fit call for.

For each fitted case (:func:`tests.test_contract.fitted_case`, shared with the contract test; the
aliases run the same code and are left out for time), ``focusshot.explain.explain`` on the query
images (with their boxes, for a method that reads them) must write a figure per image and a record
whose explained class is the one ``predict_proba`` gives, whose map is finite, non-negative and on
the rule's grid, made by :func:`~focusshot.evaluation.relevance.map_kind`'s rule: gradient-weighted
rollout on a ViT or CLIP ViT, Grad-CAM on Swin and CLIP-ResNet, the voting heads for SAV. A method
that tunes the backbone under a linear head on a backbone with a global [CLS] row (a ViT, the
attention pool of CLIP-ResNet) also gets FORT's prompts and the attention
before and after adapting. A method that refused the backbone at fit time is the contract test's
business and is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from focusshot.backbones.base import Backbone
from focusshot.evaluation.relevance import map_kind
from focusshot.explain import explain
from focusshot.methods.base import list_methods
from tests.test_contract import FAMILIES, contract_root, fitted_case

__all__ = ["contract_root"]


def _expected_kind(method: str, backbone: Backbone) -> str:
    if method == "sav":
        return "sav_heads"
    return "gradient_rollout" if backbone.token_blocks() and backbone.capabilities.global_cls else "grad_cam"


@pytest.mark.parametrize(
    ("name", "family"), [pytest.param(n, f, id=f"{n}-{f}") for n in list_methods() for f in FAMILIES]
)
def test_every_method_explains(name: str, family: str, contract_root: Path, tmp_path: Path) -> None:
    case = fitted_case(name, False, family, contract_root)
    clf = case.clf
    if clf is None:
        pytest.skip(f"{name} refused {family} at fit time (the contract test checks the refusal)")
    query = case.query
    out = tmp_path / "explained"
    info = explain(clf, query.paths, out, coverage=0.9, boxes=query.boxes if clf.uses_boxes else None)
    kind = info["relevance"]["kind"]
    assert kind == map_kind(clf.backbone, clf.fitted) == _expected_kind(name, clf.backbone)
    rows, cols = info["relevance"]["grid"]
    probs, paths, bad = clf.predict_proba(query.paths, boxes=query.boxes)
    assert not bad and [r["path"] for r in info["images"]] == paths
    for r, p in zip(info["images"], probs, strict=True):
        assert r["predicted"] == clf.class_names[int(p.argmax())]
        values = r["relevance"]
        assert len(values) == rows * cols and all(math.isfinite(v) and v >= 0 for v in values)
        assert abs(sum(values) - 1) < 1e-4 or (kind == "grad_cam" and sum(values) == 0)
        assert (out / r["png"]).is_file()
    adapts = ("patches_after" in info["images"][0]) and "prompts" in info
    tunes = name in {"ft", "last_block", "lora", "ssf", "vpt", "clip_lora", "safe"} or name.endswith("+fort")
    assert adapts == (tunes and clf.backbone.capabilities.global_cls)  # CLIP-ResNet: its pool's row
    assert json.loads((out / "explain.json").read_text())["method"] == clf.method
