"""``focusshot update``: classes added to (or removed from) a fitted classifier in place (issue 34).

* every method that keeps its support set (:func:`~focusshot.classifier.keeps_support`: it trains
  nothing over pooled features; the registry says which) gives, after ``--add``, the classifier a
  fresh ``fit`` on the union gives, within 1e-6, also after save and load; ``--remove`` likewise;
* every other method refuses and says why (through the contract test's fitted cases);
* the file records each update; bad input (a class already present, an image that fails to decode,
  an unknown class to remove) is a clear error that leaves the file as it was;
* a threshold ``fit --reject auto`` chose is chosen again: the one ``fit --reject auto`` gives on the
  union (the same record, counts included, with the refitted temperature too), and ``predict``
  rejects with it; where it cannot be (a hand-set one, one image per class, fewer than 3 classes,
  a method reading views or boxes) it is dropped with a note that says why;
* ``update --reject auto`` gives every method that updates the threshold ``fit --reject auto``
  chooses on the same images (the registry's methods, through the contract's fits, whose classes
  are not in name order), or says why not before reading an image; ``--reject VALUE`` sets one by
  hand; the folds follow :func:`~focusshot.update.fold_order`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import focusshot
from focusshot.backbones.registry import create_backbone
from focusshot.classifier import UNKNOWN, Classifier, keeps_support
from focusshot.cli import main
from focusshot.data.images import ImageError
from focusshot.data.labelled import LabelledImages
from focusshot.methods.base import create_method, list_methods
from focusshot.update import fold_order, rejection_refusal, update_classifier, update_file, update_refusal
from tests.methods.helpers import class_folders
from tests.test_contract import _shrunk, contract_data, contract_root, fitted_case

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
        return
    # update --reject auto: the threshold fit --reject auto chooses on the same images, or the reason
    train, _, cache = contract_data(contract_root)
    try:
        got = update_classifier(clf, cache_dir=cache, reject="auto")
    except ValueError as exc:
        assert str(exc).startswith("reject='auto' (--reject auto): "), (name, exc)
        assert create_method(name).augment_views() or "one image" in str(exc), (name, exc)
        return
    # the contract's classes (cat, dog, bird) are not in name order: the folds keep the fit's order
    fresh = focusshot.fit(
        train, backbone=BACKBONE, method=name, options=_shrunk(name), cache_dir=cache, reject="auto"
    )
    _same_choice(got.info["reject"], fresh.info["reject"])


# --- rejection ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``all/class_{0..3}`` (3 images each), ``abc/`` its first three classes, ``bcd/`` its last
    three, ``query/`` (2 per
    class), ``one/`` one image of each of the first three, ``far/`` two images unlike any class,
    ``split/{train,val}`` and ``split3/`` (its first three classes) for a temperature, a cache."""
    root = tmp_path_factory.mktemp("update_reject")
    class_folders(root / "all", classes=4, per_class=3)
    class_folders(root / "query", classes=4, per_class=2)
    class_folders(root / "valpool", classes=4, per_class=5)  # images 3, 4: not among the support's
    for c in range(4):
        name = f"class_{c}"
        shutil.copytree(root / "all" / name, root / "split" / "train" / name)
        (root / "split" / "val" / name).mkdir(parents=True)
        for i in (3, 4):
            shutil.copy(root / "valpool" / name / f"{i}.png", root / "split" / "val" / name / f"{i}.png")
        if c > 0:
            shutil.copytree(root / "all" / name, root / "bcd" / name)
        if c < 3:
            shutil.copytree(root / "all" / name, root / "abc" / name)
            (root / "one" / name).mkdir(parents=True)
            shutil.copy(root / "all" / name / "0.png", root / "one" / name / "0.png")
            for part in ("train", "val"):
                shutil.copytree(root / "split" / part / name, root / "split3" / part / name)
    far = root / "far"
    far.mkdir()
    grid = np.zeros((36, 36, 3), np.uint8)
    grid[::2, :, 2], grid[:, ::2, 0] = 255, 255
    Image.fromarray(grid).save(far / "grid.png")
    Image.fromarray(np.full((36, 36, 3), (0, 0, 255), np.uint8)).save(far / "blue.png")
    return root


def _fit_reject(root: Path, folder: str, method: str = "protonet", **kw: Any) -> Classifier:
    return focusshot.fit(root / folder, backbone=BACKBONE, method=method, cache_dir=root / "cache", **kw)


def _same_choice(got: dict[str, Any], fresh: dict[str, Any]) -> None:
    """``got`` (re-chosen by update) is ``fresh``'s record (fit on the union) with ``rechosen_by``."""
    assert got["rechosen_by"] == "update" and "rechosen_by" not in fresh
    assert got["threshold"] == pytest.approx(fresh["threshold"], rel=1e-9, abs=1e-12)
    rest = {k: v for k, v in got.items() if k not in ("rechosen_by", "threshold")}
    assert rest == {k: v for k, v in fresh.items() if k != "threshold"}  # counts, rule, AUROC, rates


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("protonet", {}),
        ("ridge", {}),
        ("logistic", {"reject_tpr": 0.9, "open_score": "msp"}),
        ("zeroshot", {"open_score": "mcm"}),
    ],
)
@pytest.mark.parametrize(("folder", "new"), [("abc", "class_3"), ("bcd", "class_0")])
def test_an_auto_threshold_is_chosen_again_as_fit_chooses_it_on_the_union(
    method: str, kw: dict[str, Any], folder: str, new: str, open_data: Path
) -> None:
    """``class_0`` added to ``bcd`` comes last in the updated classifier but first in a folder fit
    of the union: the folds still run by class name, so each holds out the image fit's does."""
    old = _fit_reject(open_data, folder, method, reject="auto", **kw)
    updated = update_classifier(old, [open_data / "all" / new], cache_dir=open_data / "cache")
    fresh = _fit_reject(open_data, "all", method, reject="auto", **kw)
    assert updated.class_names[-1] == new
    _same_choice(updated.info["reject"], fresh.info["reject"])
    r = updated.info["reject"]
    assert r["folds"] == 4 and r["known_scores"] == 4 * 3 and r["unknown_scores"] == 4 * 3
    (note,) = updated.info["updates"][-1]["notes"]
    assert note.startswith("rejection threshold re-chosen by leave-one-class-out on the updated support set")
    assert f"{r['score']} = {r['threshold']:.6g} (was {old.info['reject']['threshold']:.6g})" in note


def test_the_threshold_is_chosen_after_the_refitted_temperature(open_data: Path) -> None:
    """msp reads the temperature: removing a class refits it on the kept validation images, and the
    threshold is chosen with it, as fit --calibrate --reject auto chooses it on what remains."""
    kw: dict[str, Any] = {"reject": "auto", "open_score": "msp", "calibrate": True}
    old = _fit_reject(open_data, "split", "logistic", **kw)
    updated = update_classifier(old, remove=["class_3"], cache_dir=open_data / "cache")
    fresh = _fit_reject(open_data, "split3", "logistic", **kw)
    assert updated.info["calibration"] == pytest.approx(fresh.info["calibration"])
    assert updated.temperature != 1.0
    _same_choice(updated.info["reject"], fresh.info["reject"])
    untempered = _fit_reject(open_data, "split3", "logistic", reject="auto", open_score="msp")
    assert updated.info["reject"]["threshold"] != pytest.approx(untempered.info["reject"]["threshold"])
    assert [n.split(" ")[0] for n in updated.info["updates"][-1]["notes"]] == ["temperature", "rejection"]


def test_one_image_per_class_grown_with_a_second_image_chooses_by_held_out_images(open_data: Path) -> None:
    old = _fit_reject(open_data, "one", reject="auto")
    assert "augmented views" in old.info["reject"]["chosen_by"]
    updated = update_classifier(old, [open_data / "all" / "class_3"], cache_dir=open_data / "cache")
    union = open_data / "one_plus"
    if not union.exists():
        shutil.copytree(open_data / "one", union)
        shutil.copytree(open_data / "all" / "class_3", union / "class_3")
    fresh = _fit_reject(open_data, "one_plus", reject="auto")
    _same_choice(updated.info["reject"], fresh.info["reject"])
    assert updated.info["reject"]["chosen_by"] == "leave-one-class-out on the support set"
    assert "views" not in updated.info["reject"]


def test_update_command_rechooses_and_predict_rejects_with_it(
    open_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _fit_reject(open_data, "abc", reject="auto").save(tmp_path / "clf.safetensors")
    add = ["update", str(path), "--add", str(open_data / "all" / "class_3")]
    assert main([*add, "--cache-dir", str(open_data / "cache"), "--quiet"]) == 0
    out = capsys.readouterr().out
    clf = Classifier.load(path)
    r = clf.info["reject"]
    assert r["rechosen_by"] == "update" and clf.info["updates"][-1]["notes"][0] in out
    assert f"rejects below distance = {r['threshold']:.6g} (by update: " in out
    far = clf.predict(open_data / "far")
    assert [p.label for p in far] == [UNKNOWN, UNKNOWN] and all(p.score < r["threshold"] for p in far)
    new = clf.predict(open_data / "query" / "class_3")  # the new class's own images are accepted
    assert [p.label for p in new] == ["class_3", "class_3"]
    assert all(p.label != UNKNOWN for p in clf.predict(open_data / "far", reject=False))


def _dropped(clf: Classifier, root: Path) -> str:
    """The note of an update that dropped the rejection threshold; checks that it is gone (the far
    images of ``root`` are then named a class, with no score)."""
    assert "reject" not in clf.info
    (note,) = [n for n in clf.info["updates"][-1]["notes"] if "rejection" in n]
    assert note.startswith("rejection threshold dropped: ")
    assert all(p.score is None and p.label != UNKNOWN for p in clf.predict(root / "far"))
    return note


def test_a_hand_set_threshold_is_dropped_with_its_value(open_data: Path, tmp_path: Path) -> None:
    old = _fit_reject(open_data, "abc", reject=-0.25)
    assert old.info["reject"]["chosen_by"] == "given"
    updated = Classifier.load(
        update_file(
            old.save(tmp_path / "c.safetensors"),
            [open_data / "all" / "class_3"],
            cache_dir=open_data / "cache",
        )[0]
    )
    note = _dropped(updated, open_data)
    assert "set by hand (distance = -0.25)" in note and "predict --reject VALUE" in note


def test_one_image_per_class_after_the_update_drops_it(open_data: Path, tmp_path: Path) -> None:
    old = _fit_reject(open_data, "one", reject="auto")
    single = tmp_path / "class_9"
    single.mkdir()
    shutil.copy(open_data / "all" / "class_3" / "0.png", single / "0.png")
    note = _dropped(update_classifier(old, [single], cache_dir=open_data / "cache"), open_data)
    assert "every class of the updated support set has one image" in note
    assert "augmented views of the images themselves" in note


def test_fewer_than_three_classes_drops_it(open_data: Path) -> None:
    old = _fit_reject(open_data, "abc", reject="auto")
    note = _dropped(update_classifier(old, remove=["class_1"], cache_dir=open_data / "cache"), open_data)
    assert "needs at least 3 classes" in note and "the support set has 2" in note


def test_what_the_features_alone_cannot_choose_again() -> None:
    auto: dict[str, Any] = {"score": "max_logit", "threshold": 1.5, "rule": "balanced"}
    auto["chosen_by"] = "leave-one-class-out on the support set"
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert rejection_refusal(auto, create_method("protonet"), labels) == ""
    assert "one image" in rejection_refusal(auto, create_method("protonet"), torch.tensor([0, 1, 2]))
    assert "reads each image's box" in rejection_refusal(auto, create_method("falip"), labels)
    views = rejection_refusal(auto, create_method("clip_lora", {"views": 2}), labels)
    assert "fits on augmented views of the images" in views
    given = {"score": "msp", "threshold": 0.4, "chosen_by": "given"}
    assert "set by hand (msp = 0.4)" in rejection_refusal(given, create_method("protonet"), labels)
    bare = {"score": "msp", "threshold": 0.4}
    assert "does not say that leave-one-class-out chose it" in rejection_refusal(
        bare, create_method("protonet"), labels
    )


def test_update_reject_auto_gives_a_file_fitted_without_one_the_threshold_fit_would_choose(
    open_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``update --reject auto`` with nothing else: the file fitted without ``--reject`` gets the
    threshold ``fit --reject auto`` chooses on the same images; with a class added and the tpr rule
    on another score, the one a fresh fit on the union chooses."""
    path = _fit_reject(open_data, "abc").save(tmp_path / "clf.safetensors")
    assert "reject" not in Classifier.load(path).info
    cache = ["--cache-dir", str(open_data / "cache"), "--quiet"]
    assert main(["update", str(path), "--reject", "auto", *cache]) == 0
    out = capsys.readouterr().out
    clf = Classifier.load(path)
    _same_choice(clf.info["reject"], _fit_reject(open_data, "abc", reject="auto").info["reject"])
    assert clf.class_names == ["class_0", "class_1", "class_2"]
    (note,) = clf.info["updates"][-1]["notes"]
    assert note.endswith("(there was none)") and "--reject auto" in note and note in out
    assert [p.label for p in clf.predict(open_data / "far")] == [UNKNOWN, UNKNOWN]
    kw: dict[str, Any] = {"reject_tpr": 0.9, "open_score": "max_logit"}
    grown = update_classifier(
        clf, [open_data / "all" / "class_3"], cache_dir=open_data / "cache", reject="auto", **kw
    )
    _same_choice(grown.info["reject"], _fit_reject(open_data, "all", reject="auto", **kw).info["reject"])
    assert grown.info["reject"]["score"] == "max_logit" and grown.info["reject"]["target_tpr"] == 0.9


def test_update_reject_value_sets_a_threshold_by_hand(open_data: Path) -> None:
    old = _fit_reject(open_data, "abc", reject="auto")
    updated = update_classifier(old, cache_dir=open_data / "cache", reject=-0.5, open_score="max_logit")
    r = updated.info["reject"]
    assert (r["score"], r["threshold"], r["chosen_by"]) == ("max_logit", -0.5, "given")
    (note,) = updated.info["updates"][-1]["notes"]
    assert note.startswith(
        "rejection threshold set by hand (--reject -0.5): max_logit = -0.5 (was distance = "
    )
    kept = update_classifier(old, cache_dir=open_data / "cache", reject=-20.0)  # the stored score
    assert kept.info["reject"]["score"] == "distance"


def test_update_reject_that_cannot_be_met_is_refused_before_reading_and_leaves_the_file(
    open_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _fit_reject(open_data, "one").save(tmp_path / "one.safetensors")
    before = path.read_bytes()
    cache = ["--cache-dir", str(open_data / "cache"), "--quiet"]
    assert main(["update", str(path), "--reject", "auto", *cache]) == 2
    assert "every class of the updated support set has one image" in capsys.readouterr().err
    missing = tmp_path / "missing"
    (missing / "class_9").mkdir(parents=True)
    (missing / "class_9" / "0.png").write_bytes(b"not an image")  # never read: refused first
    assert main(["update", str(path), "--add", str(missing / "class_9"), "--reject", "auto", *cache]) == 2
    err = capsys.readouterr().err
    assert "reject='auto'" in err and "not an image" not in err
    add = ["--add", str(open_data / "all" / "class_3")]
    assert main(["update", str(path), *add, "--reject-tpr", "0.9", *cache]) == 2
    assert "give reject too" in capsys.readouterr().err
    assert main(["update", str(path), "--reject-tpr", "0.9", *cache]) == 2
    assert "give reject too" in capsys.readouterr().err
    assert main(["update", str(path), *cache]) == 2
    assert "nothing to update" in capsys.readouterr().err
    assert main(["update", str(path), "--reject", "auto", "--open-score", "nope", *cache]) == 2
    assert "nope" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_fold_order_is_by_name_for_a_name_ordered_classifier_else_its_own() -> None:
    assert fold_order(["a", "c"], ["a", "c", "b"]) == [0, 2, 1]  # as a folder of the union folds
    assert fold_order(["c", "a"], ["c", "a", "b"]) is None  # fitted in its own order: kept


def test_a_classifier_fitted_in_its_own_class_order_keeps_it(open_data: Path) -> None:
    """Classes not in name order (from Python): ``update --reject auto`` with nothing else changed
    gives the threshold the fit itself chose."""
    from focusshot.data.sources import from_folder

    data = from_folder(open_data / "abc")
    assert isinstance(data, LabelledImages)
    names = list(reversed(data.class_names))
    flipped = LabelledImages(data.paths, [len(names) - 1 - y for y in data.labels], names, None)
    old = focusshot.fit(
        flipped, backbone=BACKBONE, method="ridge", cache_dir=open_data / "cache", reject="auto"
    )
    by_name = _fit_reject(open_data, "abc", "ridge", reject="auto")
    assert old.info["reject"]["threshold"] != by_name.info["reject"]["threshold"]  # the order matters
    again = update_classifier(old, cache_dir=open_data / "cache", reject="auto")
    _same_choice(again.info["reject"], old.info["reject"])
