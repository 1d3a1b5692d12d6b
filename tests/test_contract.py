"""The contract every registered method keeps, driven by the registry.

For every name ``focusshot methods`` lists, and one alias of it (``name@c`` with one option
changed), on each tiny backbone family (CLIP ViT, CLIP ResNet, DINO-style ViT, Swin):

* fit through the public API on a tiny support set (a manifest with boxes, for region methods);
* logits of the right shape, all finite;
* save -> load -> predict equal to the in-memory fit within 1e-6, under the same name;
* or, where the method cannot run on the backbone, a ``ValueError`` that names the method and
  says why (never an ``AttributeError`` or the like from deep inside a fit).

Every method runs on a CLIP ViT, and a method the registry says runs on a backbone
(:func:`~focusshot.methods.base.runs_on`) must fit there. Every option is settable with ``--set``
in its declared type, and a value of the wrong type is refused naming the option. A method added
to the registry is covered without editing this file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import focusshot
from focusshot.backbones.registry import create_backbone
from focusshot.classifier import Classifier
from focusshot.data.labelled import LabelledImages
from focusshot.evaluation.prepare import region_tensor
from focusshot.methods.base import create_method, list_methods, method_class, options_for, runs_on
from focusshot.options import merge_settings, option_help
from tests.methods.helpers import class_folders

#: the tiny backbone of each family the contract covers
FAMILIES = ("tiny-clip-vit", "tiny-clip-rn", "tiny-vit", "tiny-swin")

#: options shrunk so that every method fits a tiny model in seconds (where a method has them):
#: training length, and CoOp's context, which must fit the tiny text tower's 16 tokens
TINY: dict[str, Any] = {"iters_per_shot": 4, "n_ctx": 4, "epochs": 2, "steps": 4, "mc_samples": 3}

CLASSES = ["cat", "dog", "bird"]


def _shrunk(name: str) -> dict[str, Any]:
    """The TINY values of the options ``name`` has that its validation accepts."""
    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(method_class(name).Options)}
    for key, value in TINY.items():
        if key in fields:
            try:
                create_method(name, {**out, key: value})
            except ValueError:
                continue
            out[key] = value
    return out


def _changed(value: Any) -> list[Any]:
    """Other values of an option's type to try, nearest first."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2]
    if isinstance(value, float):
        return [value / 2, value * 2, 0.5] if value else [0.5, 0.1]
    return []


def alias_options(name: str) -> tuple[str, dict[str, Any]]:
    """An alias of ``name`` and its options: the first option (in declaration order) that takes a
    changed value, changed."""
    base = _shrunk(name)
    for key, default, _ in option_help(method_class(name).Options):
        if key in base:
            continue
        for value in _changed(default):
            try:
                create_method(name, {**base, key: value})
            except ValueError:
                continue
            return f"{name}@{key}", {**base, key: value}
    return f"{name}@same", base


@dataclasses.dataclass
class Case:
    """One method (or alias) fitted on one tiny backbone, shared by every contract test of it."""

    method: str
    family: str
    query: LabelledImages
    #: the fitted classifier, or ``None`` when the method refused the backbone
    clf: Classifier | None
    #: the refusal's message (``""`` when it fitted)
    refusal: str = ""
    #: the query regions ``(M, 4)`` for a method that reads them, else ``None``
    regions: torch.Tensor | None = None


_DATA: dict[str, tuple[LabelledImages, LabelledImages, Path]] = {}
_FITTED: dict[tuple[str, bool, str], Case] = {}


def contract_data(root: Path) -> tuple[LabelledImages, LabelledImages, Path]:
    """3 classes x 3 support images and 2 query images per class, every one with a box (written
    once per test session under ``root``), and the feature cache folder."""
    if "data" not in _DATA:
        class_folders(root / "support", classes=3, per_class=3)
        class_folders(root / "query", classes=3, per_class=2)

        def images(folder: Path) -> LabelledImages:
            paths = sorted(str(p) for p in folder.rglob("*.png"))
            labels = [int(Path(p).parent.name.split("_")[1]) for p in paths]
            return LabelledImages(paths, labels, CLASSES, [(4.0, 4.0, 30.0, 30.0)] * len(paths), None)

        _DATA["data"] = (images(root / "support"), images(root / "query"), root / "cache")
    return _DATA["data"]


def fitted_case(name: str, alias: bool, family: str, root: Path) -> Case:
    """Method ``name`` (or its alias) fitted through the public API on ``family``'s tiny backbone,
    once per test session: contract tests in other files reuse it (``tests/test_contract_*.py``)."""
    key = (name, alias, family)
    if key not in _FITTED:
        train, query, cache = contract_data(root)
        method, options = alias_options(name) if alias else (name, _shrunk(name))
        try:
            clf = focusshot.fit(train, backbone=family, method=method, options=options, cache_dir=cache)
        except ValueError as exc:
            _FITTED[key] = Case(method, family, query, None, str(exc))
        else:
            regions = region_tensor(clf.backbone, query) if clf.needs_regions else None
            _FITTED[key] = Case(method, family, query, clf, "", regions)
    return _FITTED[key]


@pytest.fixture(scope="session")
def contract_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the contract's images and feature cache live for the session."""
    return tmp_path_factory.mktemp("contract")


CASES = [
    pytest.param(name, alias, family, id=f"{name}{'@alias' if alias else ''}-{family}")
    for name in list_methods()
    for alias in (False, True)
    for family in FAMILIES
]


@pytest.mark.parametrize(("name", "alias", "family"), CASES)
def test_method_on_family(name: str, alias: bool, family: str, contract_root: Path, tmp_path: Path) -> None:
    case = fitted_case(name, alias, family, contract_root)
    method, query, clf = case.method, case.query, case.clf
    if clf is None:
        message = case.refusal
        assert family != "tiny-clip-vit", f"{method} must run on a CLIP ViT: {message}"
        assert not runs_on(name, create_backbone(family)), (
            f"the registry says {name} runs on {family}: {message}"
        )
        assert method in message, f"the refusal does not name the method: {message}"
        return
    assert clf.method == method
    emb = clf.embed(query.paths)
    assert not emb.bad
    with torch.inference_mode():
        logits = clf.fitted.logits(emb.features, regions=case.regions)
    assert logits.shape == (len(query.paths), len(CLASSES))
    assert torch.isfinite(logits).all()
    path = clf.save(tmp_path / "clf.safetensors")
    again = Classifier.load(path)
    assert again.method == method and again.fitted.method == method
    assert again.class_names == CLASSES
    with torch.inference_mode():
        loaded = again.fitted.logits(again.embed(query.paths).features, regions=case.regions)
    torch.testing.assert_close(loaded, logits, atol=1e-6, rtol=0)
    probs, paths, bad = again.predict_proba(query.paths, boxes=query.boxes)
    assert paths == query.paths and not bad
    expected = (logits.double() / again.temperature).softmax(-1).float()
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)


def _wrong(value: Any) -> Any:
    """A value of another JSON type than ``value``'s."""
    return 3 if isinstance(value, str) else "not-a-" + type(value).__name__


def _set(name: str, key: str, raw: str) -> Any:
    """Method ``name`` built as ``--set NAME.KEY=RAW`` builds it."""
    return create_method(name, options_for(name, merge_settings({}, [f"{name}.{key}={raw}"])))


@pytest.mark.parametrize("name", list_methods())
def test_every_option_settable_with_set(name: str) -> None:
    for key, default, _ in option_help(method_class(name).Options):
        raw = json.dumps(default)  # what a user types after --set NAME.OPTION=
        got = getattr(_set(name, key, raw).options, key)
        assert got == default or (isinstance(got, tuple) and list(got) == list(default)), (name, key, got)
        assert getattr(_set(f"{name}@x", key, raw).options, key) == got
        bad = _wrong(default)
        with pytest.raises(ValueError, match=rf"'{key}'"):
            _set(name, key, json.dumps(bad))
