"""Leakage guards: identical image bytes under two labels, across splits, or repeated in a class
are found, warned about with the files named, refused with strict, and counted in run.json."""

import json
import logging
import shutil

import pytest
from tests.evaluation.test_protocols import _write_dataset

from focusshot.api import evaluate, fit
from focusshot.cli import main
from focusshot.data.integrity import find_duplicates
from focusshot.data.sources import LabelledImages, from_folder


def _leaky(tmp_path):
    root = _write_dataset(tmp_path / "data", classes=3, per_class=4, splits=("train", "val", "test"))
    # the same photo in train and test, and one train image copied into another class
    shutil.copy(root / "train" / "class_0" / "000.png", root / "test" / "class_0" / "copy.png")
    shutil.copy(root / "train" / "class_1" / "001.png", root / "train" / "class_2" / "relabelled.png")
    return root


def test_find_duplicates_groups_identical_bytes(tmp_path) -> None:
    splits = from_folder(_leaky(tmp_path))
    report = find_duplicates(splits)
    assert report.counts() == {"conflicting_labels": 1, "across_splits": 1, "repeated": 0}
    assert any("copy.png" in x for x in report.across_splits[0])
    assert any("relabelled.png" in x for x in report.conflicting_labels[0])
    one = splits["train"]
    twice = LabelledImages([*one.paths, one.paths[0]], [*one.labels, one.labels[0]], one.class_names)
    assert find_duplicates({"data": twice}).counts()["repeated"] == 1


def test_runs_warn_by_default_and_refuse_with_strict(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _leaky(tmp_path)
    with caplog.at_level(logging.WARNING, logger="focusshot"):
        out = evaluate("tiny-vit", root, ["protonet"], "split", tmp_path / "run", shots=[1], seeds=[1])
    assert "copy.png" in caplog.text and "relabelled.png" in caplog.text
    checks = json.loads((out.directory / "run.json").read_text())["data_checks"]
    assert checks["across_splits"] == 1 and checks["conflicting_labels"] == 1
    with pytest.raises(ValueError, match="strict"):
        evaluate(
            "tiny-vit", root, ["protonet"], "split", tmp_path / "run2", shots=[1], seeds=[1], strict=True
        )
    with pytest.raises(ValueError, match="relabelled.png"):
        fit(root, backbone="tiny-vit", strict=True)
    assert fit(root, backbone="tiny-vit").info["fitted_on"]["data_checks"]["conflicting_labels"] == 1
    assert (
        main(["fit", str(root), "--backbone", "tiny-vit", "--output", str(tmp_path / "c.st"), "--strict"])
        == 2
    )
