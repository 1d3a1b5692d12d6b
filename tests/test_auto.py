"""fit --method auto: cross-validation on the support set alone, folds that keep every class, the
one-image-per-class fallback, the budget for methods that train, and the saved report."""

import json
import random

import pytest

from focusshot.api import Classifier, fit
from focusshot.auto import choose_method, cv_folds
from focusshot.backbones.registry import create_backbone
from focusshot.cli import main
from focusshot.data.sources import from_folder
from focusshot.evaluation.cache import FeatureCache
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


def test_one_image_per_class_refuses_to_estimate(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data", classes=3, per_class=1)
    clf = fit(root, backbone="tiny-vit", method="auto")
    rep = clf.info["auto"]
    assert not rep["estimated"] and rep["method"] == "protonet" == clf.method  # tiny-vit has no text
    assert "no honest estimate" in rep["reason"]
    again = Classifier.load(clf.save(tmp_path / "c.safetensors"))
    assert again.info["auto"]["method"] == "protonet"


def test_budget_limits_methods_that_train_and_cli_writes_the_report(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data", classes=2, per_class=3)
    clip = create_backbone("tiny-clip-vit")
    rep = choose_method(
        clip, from_folder(root), FeatureCache(tmp_path / "c"), budget_s=0.0, candidates=["protonet", "coop"]
    )
    assert [r["method"] for r in rep["candidates"]] == ["protonet"] and "budget" in rep["skipped"]["coop"]
    out = tmp_path / "auto.safetensors"
    args = ["fit", str(root), "--backbone", "tiny-clip-vit", "--random-weights", "--method", "auto"]
    assert main([*args, "--budget", "0s", "--output", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "auto.auto.json").read_text())
    assert f"auto chose {report['method']!r}" in text and "cross-validated accuracy" in text
    with pytest.raises(ValueError, match="no options"):
        fit(root, backbone="tiny-vit", method="auto", options={"C": 1})
