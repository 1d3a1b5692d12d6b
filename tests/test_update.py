"""``focusshot update``: classes added to (or removed from) a fitted classifier in place (issue 34).

* every method that keeps its support set (:func:`~focusshot.classifier.keeps_support`: it trains
  nothing over pooled features; the registry says which) gives, after ``--add``, the classifier a
  fresh ``fit`` on the union gives, within 1e-6, also after save and load; ``--remove`` likewise;
* every other method refuses and says why (through the contract test's fitted cases);
* the file records each update; bad input (a class already present, an image that fails to decode,
  an unknown class to remove) is a clear error that leaves the file as it was.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

import focusshot
from focusshot.backbones.registry import create_backbone
from focusshot.classifier import Classifier, keeps_support
from focusshot.cli import main
from focusshot.data.images import ImageError
from focusshot.methods.base import create_method, list_methods
from focusshot.update import update_classifier, update_file, update_refusal
from tests.methods.helpers import class_folders
from tests.test_contract import contract_root, fitted_case

__all__ = ["contract_root"]  # the session fixture, imported for pytest

BACKBONE = "tiny-clip-vit"


def _updatable() -> list[str]:
    backbone = create_backbone(BACKBONE)
    out = []
    for name in list_methods():
        method = create_method(name)
        try:
            prefix = method.prefix(backbone)
        except ValueError:
            continue
        if keeps_support(method, prefix) and not method.needs_regions:
            out.append(name)
    return out


UPDATABLE = _updatable()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``all/class_{0,1,2}`` (3 images each), ``old/`` with classes 0 and 1, ``query/``, a cache."""
    root = tmp_path_factory.mktemp("update")
    class_folders(root / "all", classes=3, per_class=3)
    class_folders(root / "query", classes=3, per_class=2)
    for c in ("class_0", "class_1"):
        shutil.copytree(root / "all" / c, root / "old" / c)
    for c in ("class_0", "class_2"):
        shutil.copytree(root / "all" / c, root / "no1" / c)
    return root


def _query(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "query").rglob("*.png"))


def _fit(root: Path, folder: str, method: str) -> Classifier:
    return focusshot.fit(root / folder, backbone=BACKBONE, method=method, cache_dir=root / "cache")


def test_the_registry_has_updatable_methods() -> None:
    for name in ("nearest_neighbour", "protonet", "ridge", "r2d2", "svm", "metaoptnet", "logistic"):
        assert name in UPDATABLE
    assert {"zeroshot", "tip_adapter"} <= set(UPDATABLE)


@pytest.mark.parametrize("method", UPDATABLE)
def test_add_equals_a_fresh_fit_on_the_union(method: str, data: Path, tmp_path: Path) -> None:
    path = _fit(data, "old", method).save(tmp_path / "clf.safetensors")
    out, updated = update_file(path, [data / "all" / "class_2"], output=tmp_path / "new.safetensors")
    fresh = _fit(data, "all", method)
    again = Classifier.load(out)
    for clf in (updated, again):
        assert clf.class_names == fresh.class_names == ["class_0", "class_1", "class_2"]
        got = clf.predict_proba(_query(data))[0]
        torch.testing.assert_close(got, fresh.predict_proba(_query(data))[0], atol=1e-6, rtol=0)
    record = again.info["updates"][-1]
    assert record["added"] == {"class_2": 3} and record["removed"] == []
    assert record["previous"] == {"classes": 2, "images": 6} and record["images"] == 9
    assert Classifier.load(path).class_names == ["class_0", "class_1"]  # --output: the old file kept


@pytest.mark.parametrize("method", ["protonet", "ridge"])
def test_remove_equals_a_fresh_fit_without_the_class(method: str, data: Path) -> None:
    updated = update_classifier(_fit(data, "all", method), remove=["class_1"], cache_dir=data / "cache")
    fresh = _fit(data, "no1", method)
    assert updated.class_names == fresh.class_names == ["class_0", "class_2"]
    q = _query(data)
    torch.testing.assert_close(updated.predict_proba(q)[0], fresh.predict_proba(q)[0], atol=1e-6, rtol=0)


def test_update_command(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _fit(data, "old", "protonet").save(tmp_path / "clf.safetensors")
    args = ["update", str(path), "--add", str(data / "all" / "class_2"), "--remove", "class_0"]
    assert main([*args, "--cache-dir", str(data / "cache"), "--quiet"]) == 0
    assert "added class_2 (3 images); removed class_0" in capsys.readouterr().out
    assert Classifier.load(path).class_names == ["class_1", "class_2"]  # updated in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.safetensors"]  # no temporary or lock left


def test_bad_input_is_a_clear_error_and_leaves_the_file(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _fit(data, "old", "ridge").save(tmp_path / "clf.safetensors")
    before = path.read_bytes()
    cache = ["--cache-dir", str(data / "cache"), "--quiet"]
    # a class already present
    assert main(["update", str(path), "--add", str(data / "all" / "class_1"), *cache]) == 2
    assert "class 'class_1'" in capsys.readouterr().err
    # an image that fails to decode: the error names the file
    bad = tmp_path / "new" / "class_9"
    shutil.copytree(data / "all" / "class_2", bad)
    (bad / "broken.png").write_bytes(b"not a png")
    assert main(["update", str(path), "--add", str(bad), *cache]) == 2
    assert "broken.png" in capsys.readouterr().err
    with pytest.raises(ImageError, match="broken.png"):
        update_file(path, [bad], cache_dir=data / "cache")
    # a class to remove that is not there; nothing to do
    assert main(["update", str(path), "--remove", "class_7", *cache]) == 2
    assert "class_7" in capsys.readouterr().err
    assert main(["update", str(path), *cache]) == 2
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.safetensors", "new"]


def test_a_file_without_its_support_set_loads_and_refuses(data: Path, tmp_path: Path) -> None:
    clf = _fit(data, "old", "protonet")
    clf.support = None  # as a file written before classifiers kept their support set
    old = Classifier.load(clf.save(tmp_path / "old.safetensors"))
    assert old.support is None and old.class_names == ["class_0", "class_1"]
    with pytest.raises(ValueError, match="keeps no support features"):
        update_classifier(old, [data / "all" / "class_2"])


@pytest.mark.parametrize("name", list_methods())
def test_every_method_updates_or_says_why(name: str, contract_root: Path) -> None:
    clf = fitted_case(name, False, BACKBONE, contract_root).clf
    assert clf is not None  # every method runs on a CLIP ViT (the contract test)
    why = update_refusal(clf)
    assert bool(why) == (clf.support is None), (name, why)
    if why:
        with pytest.raises(ValueError, match=re.escape(f"method '{name}' cannot be updated in place: ")):
            update_classifier(clf, remove=[clf.class_names[0]])
