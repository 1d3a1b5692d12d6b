"""fit / save / load / predict for practitioners, through the Python API and the CLI."""

import csv

import pytest
import torch

import focusshot
from focusshot.api import Classifier, fit
from focusshot.cli import main
from tests.evaluation.test_protocols import _write_dataset


def test_fit_save_load_predict(tmp_path) -> None:
    support = _write_dataset(tmp_path / "support", classes=3, per_class=4)
    clf = fit(support, backbone="tiny-vit", method="protonet")
    path = clf.save(tmp_path / "clf.safetensors")
    again = Classifier.load(path)
    assert again.class_names == ["class_0", "class_1", "class_2"]
    images = sorted((support / "class_1").iterdir())
    preds = again.predict(images, top_k=2)
    assert [p.path for p in preds] == [str(p) for p in images]
    assert all(p.label == "class_1" for p in preds)  # support images of an easy class
    assert all(len(p.top) == 2 and p.top[0][0] == p.label for p in preds)
    probs, _, _ = clf.predict_proba(images)
    torch.testing.assert_close(probs, again.predict_proba(images)[0])


def test_load_refuses_other_backbone_weights(tmp_path) -> None:
    clf = fit(_write_dataset(tmp_path / "s", classes=2, per_class=2), backbone="tiny-vit")
    path = clf.save(tmp_path / "clf.safetensors")
    with pytest.raises(ValueError, match="differ from those"):
        Classifier.load(path, backbone=focusshot.create_backbone("tiny-vit", seed=5))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.safetensors"):
        Classifier.load(tmp_path / "junk.safetensors")


def test_cli_fit_predict_evaluate(tmp_path, capsys) -> None:
    support = _write_dataset(tmp_path / "support", classes=3, per_class=4)
    clf = tmp_path / "clf.safetensors"
    assert (
        main(
            [
                "fit",
                str(support),
                "--backbone",
                "tiny-vit",
                "--method",
                "ridge",
                "--output",
                str(clf),
                "--quiet",
            ]
        )
        == 0
    )
    preds = tmp_path / "preds.csv"
    assert (
        main(
            ["predict", str(clf), str(support / "class_2"), "--output", str(preds), "--top-k", "3", "--quiet"]
        )
        == 0
    )
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 4 and {"path", "label", "confidence", "top3_label"} <= set(rows[0])
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
    code = main(
        [
            "evaluate",
            "--backbone",
            "tiny-vit",
            "--data",
            str(support),
            "--method",
            "protonet,svm",
            "--ways",
            "3",
            "--shots",
            "1",
            "--queries",
            "2",
            "--episodes",
            "3",
            "--output",
            str(tmp_path / "run"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| protonet |" in out and "| svm |" in out
    assert f"(relevance maps): {tmp_path / 'run' / 'explain_maps.png'}" in out  # no boxes, still drawn
    assert (
        main(
            [
                "evaluate",
                "--backbone",
                "tiny-vit",
                "--data",
                str(support),
                "--method",
                "nope",
                "--output",
                str(tmp_path / "r2"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_all_methods_depend_on_the_backbone() -> None:
    from focusshot.api import resolve_methods

    plain = resolve_methods(["all"], focusshot.create_backbone("tiny-vit"))
    clip = resolve_methods(["protonet", "all"], focusshot.create_backbone("tiny-clip-vit"))
    assert "protonet" in plain and "metaoptnet" in plain and "zeroshot" not in plain
    assert clip[0] == "protonet" and clip.count("protonet") == 1
    assert {"zeroshot", "tip_adapter", "tip_adapter_f"} <= set(clip)


def test_top_level_surface() -> None:
    assert focusshot.fit is fit and focusshot.Classifier is Classifier
    from focusshot.heads import MetaOptNet

    method = focusshot.create_method("metaoptnet")
    assert method.name == "metaoptnet" and isinstance(method.options, MetaOptNet)  # options: the head
    assert "protonet" in focusshot.list_methods()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        focusshot.nope  # noqa: B018


def test_calibrated_fit_and_uncertainty_columns(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    data = _write_dataset(tmp_path / "data", classes=3, per_class=3, splits=("train", "val", "test"))
    plain = fit(data, backbone="tiny-vit", method="protonet")
    clf = fit(data, backbone="tiny-vit", method="protonet", calibrate=True)
    cal = clf.info["calibration"]
    assert cal["validation_nll_after"] <= cal["validation_nll_before"] + 1e-9 and cal["temperature"] > 0
    again = Classifier.load(clf.save(tmp_path / "c.safetensors"))
    assert again.temperature == pytest.approx(cal["temperature"])
    images = sorted((data / "test" / "class_2").iterdir())
    p0, p1 = plain.predict_proba(images)[0], again.predict_proba(images)[0]
    assert torch.equal(p0.argmax(-1), p1.argmax(-1))
    logits = again.fitted.logits(again.embed(images).features).double()
    assert torch.allclose(p1.double(), (logits / cal["temperature"]).softmax(-1), atol=1e-6)
    with pytest.raises(ValueError, match="validation split"):
        fit(_write_dataset(tmp_path / "flat", classes=2, per_class=2), backbone="tiny-vit", calibrate=True)
    # APT writes its MC-dropout uncertainty as extra prediction columns
    apt = tmp_path / "apt.safetensors"
    args = ["fit", str(data), "--backbone", "tiny-clip-vit", "--random-weights", "--method", "apt"]
    assert main([*args, "--set", "apt.epochs=2", "--calibrate", "--output", str(apt), "--quiet"]) == 0
    out = tmp_path / "apt.csv"
    assert main(["predict", str(apt), str(data / "test"), "--output", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9 and {"entropy", "mutual_information", "confidence"} <= set(rows[0])
    assert all(float(r["mutual_information"]) >= 0 for r in rows)


def test_fit_lists_every_bad_image_and_can_skip_them(tmp_path, monkeypatch, capsys) -> None:
    from focusshot.data.images import ImageErrors

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    data = _write_dataset(tmp_path / "data", classes=2, per_class=3)
    (data / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (data / "class_1" / "empty.png").write_bytes(b"")
    (data / "class_1" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageErrors) as info:
        fit(data, backbone="tiny-vit")
    names = {e.path.name for e in info.value.errors}
    assert {"broken.png", "empty.png"} <= names
    clf = fit(data, backbone="tiny-vit", skip_bad=True)
    skipped = {p.rsplit("/", 1)[-1] for p in clf.info["fitted_on"]["skipped_images"]}
    assert skipped == names and clf.info["fitted_on"]["images"] == 6
    out = tmp_path / "clf.safetensors"
    assert main(["fit", str(data), "--backbone", "tiny-vit", "--output", str(out), "--quiet"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert (
        main(["fit", str(data), "--backbone", "tiny-vit", "--output", str(out), "--quiet", "--skip-bad"]) == 0
    )
    assert "skipped" in capsys.readouterr().err


def test_a_fit_derives_and_resolves_its_prefix_once(tmp_path, monkeypatch) -> None:
    """The request resolves the prefix; extraction, validation, the augmented views and the
    classifier read it as a value (issue 31)."""
    from focusshot.backbones.prefix import Prefix
    from focusshot.methods.feature_heads import FeatureHeadMethod

    support = _write_dataset(tmp_path / "support", classes=3, per_class=3, splits=("train", "val"))
    calls = {"resolve": 0, "prefix": 0}
    resolve, prefix = Prefix.resolve, FeatureHeadMethod.prefix

    def counting_resolve(self, backbone):
        calls["resolve"] += 1
        return resolve(self, backbone)

    def counting_prefix(self, backbone):
        calls["prefix"] += 1
        return prefix(self, backbone)

    monkeypatch.setattr(Prefix, "resolve", counting_resolve)
    monkeypatch.setattr(FeatureHeadMethod, "prefix", counting_prefix)
    clf = fit(support, backbone="tiny-vit", method="protonet", cache_dir=tmp_path / "cache", reject="auto")
    assert calls == {"resolve": 1, "prefix": 1}
    assert clf.prefix == clf.request.prefix == Prefix.pooled()
