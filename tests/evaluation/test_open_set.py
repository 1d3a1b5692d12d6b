"""Open-set scores, metrics, the threshold choice and rejection in fit -> save -> load -> predict."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import focusshot
from focusshot.backbones.registry import create_backbone
from focusshot.classifier import UNKNOWN, Classifier
from focusshot.cli import main
from focusshot.data.images import load_rgb
from focusshot.data.labelled import LabelledImages
from focusshot.data.transforms import AugmentTransform, box_to_view
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.open_set import (
    LOCO_VIEWS,
    NoKnownViews,
    auroc,
    balanced_threshold,
    fpr_at_tpr,
    loco_refusal,
    loco_scores,
    open_accuracy,
    oracle_threshold,
    roc_curve,
    tpr_threshold,
)
from focusshot.evaluation.prepare import PreparedImages, prepare_fit, prepare_images, view_regions
from focusshot.heads import NearestNeighbour, ProtoNet, ZeroShot
from focusshot.methods.base import create_method, list_methods, method_class
from focusshot.methods.open_set import SCORES, check_score, logit_score, mcm
from tests.methods.helpers import class_folders


def test_auroc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    k, u = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    pairs = (k[:, None] > u[None, :]).mean() + 0.5 * (k[:, None] == u[None, :]).mean()
    assert auroc(k, u) == pytest.approx(pairs, abs=1e-12)
    assert auroc([1, 2], [0, 0]) == 1.0 and auroc([0, 0], [1, 2]) == 0.0 and auroc([1], [1]) == 0.5


def test_roc_curve_area_is_auroc() -> None:
    rng = np.random.default_rng(1)
    k, u = rng.normal(1, 1, 50), rng.normal(0, 1, 70)
    fpr, tpr = roc_curve(k, u)
    area = float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))
    assert area == pytest.approx(auroc(k, u), abs=1e-9)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (1.0, 1.0, 0.0, 0.0)


def test_tpr_threshold_and_fpr() -> None:
    known = np.arange(1, 101, dtype=float)  # 1..100
    t = tpr_threshold(known, 0.95)
    assert (known >= t).mean() >= 0.95 and (known >= t + 1).mean() < 0.95
    assert fpr_at_tpr(known, [0.0, 5.5, 6.0, 50.0], 0.95) == 0.5  # 6 and 50 are >= 6
    with pytest.raises(ValueError, match="true-positive rate"):
        tpr_threshold(known, 1.5)


def test_balanced_threshold_equalises_the_error_rates() -> None:
    known, unknown = np.arange(10, 20, dtype=float), np.arange(0, 12, dtype=float)
    t = balanced_threshold(known, unknown)
    fnr, fpr = (known < t).mean(), (unknown >= t).mean()
    assert max(fnr, fpr) <= 0.2 and 10 <= t <= 12
    assert balanced_threshold([5.0, 6.0], [1.0, 2.0]) == pytest.approx(3.5)  # separable: in the gap


def test_open_accuracy_and_oracle() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.7, 0.1])
    correct = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    known = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert open_accuracy(scores, correct, known, 0.5) == pytest.approx(3 / 6)  # 0.9 right; 0.2, 0.1 rejected
    t, acc = oracle_threshold(scores, correct, known)
    brute = max(open_accuracy(scores, correct, known, c) for c in [-1, 0.15, 0.25, 0.5, 0.75, 0.85, 1])
    assert acc == pytest.approx(brute) and open_accuracy(scores, correct, known, t) == pytest.approx(acc)


def test_logit_scores() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    msp = logit_score(logits, "msp")
    assert msp[1] == pytest.approx(1 / 3) and msp[0] > msp[1]
    assert logit_score(logits, "msp", temperature=1e6)[0] == pytest.approx(1 / 3, abs=1e-5)
    assert logit_score(logits, "max_logit").tolist() == [2.0, 0.0]
    assert logit_score(logits, "energy")[1] == pytest.approx(math.log(3))
    sims = torch.tensor([[0.3, 0.1], [0.2, 0.2]])
    assert mcm(sims).tolist() == pytest.approx([1 / (1 + math.exp(-0.2)), 0.5])
    with pytest.raises(ValueError, match="valid scores: msp, max_logit, energy, distance, mcm"):
        check_score("entropy")


def test_head_distances() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    proto = ProtoNet().fit(support, labels)
    q = torch.tensor([[1.0, 0.0], [0.0, 7.0]])
    assert proto.nearest_distance(q).tolist() == pytest.approx([0.0, 3.0])
    nn = NearestNeighbour(metric="euclidean").fit(support, labels)
    assert nn.nearest_distance(q).tolist() == pytest.approx([1.0, 3.0])
    cos = NearestNeighbour().fit(support[1:], labels[1:])
    assert cos.nearest_distance(torch.tensor([[1.0, 1.0]])).item() == pytest.approx(1 - math.sqrt(0.5))
    text = torch.nn.functional.normalize(torch.randn(3, 2, 4), dim=-1)
    zs = ZeroShot(text).classifier()
    f = torch.randn(5, 4)
    torch.testing.assert_close(zs.text_similarities(f) * zs.scale, zs.logits(f))


def test_loco_refusals() -> None:
    head = create_method("protonet")
    assert loco_refusal(head, [0, 0, 1, 1, 2, 2]) == ""
    assert loco_refusal(head, [0, 1, 2]) == ""  # one image per class: augmented views play the known
    assert "at least 3 classes" in loco_refusal(head, [0, 0, 1, 1])
    assert "trains per fit" in loco_refusal(create_method("lora"), [0, 0, 1, 1, 2, 2])
    # region methods too: at one image per class each view gets its image's box (loco_scores)
    assert loco_refusal(create_method("red_circle"), [0, 1, 2]) == ""
    assert loco_refusal(create_method("falip"), [0, 0, 1, 2]) == ""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("open")
    class_folders(root / "support", classes=3, per_class=3)
    class_folders(root / "query", classes=3, per_class=2)
    return root


def test_fit_reject_auto_save_load_predict(folders: Path, tmp_path: Path) -> None:
    clf = focusshot.fit(
        folders / "support", backbone="tiny-clip-vit", method="protonet", cache_dir=tmp_path, reject="auto"
    )
    r = clf.info["reject"]
    assert r["score"] == "distance" and r["rule"] == "balanced" and r["folds"] == 3
    assert r["known_scores"] == 6 and r["unknown_scores"] == 9 and math.isfinite(r["threshold"])
    again = Classifier.load(clf.save(tmp_path / "c.safetensors"))
    assert again.info["reject"] == r
    preds = again.predict(folders / "query")
    assert all(p.score is not None for p in preds)
    assert all((p.label == UNKNOWN) == (p.score < r["threshold"]) for p in preds)
    high = again.predict(folders / "query", reject=1e9)  # every distance score is <= 0
    assert all(p.label == UNKNOWN for p in high)
    off = again.predict(folders / "query", reject=False)
    assert all(p.score is None and p.label != UNKNOWN for p in off)
    tpr = focusshot.fit(
        folders / "support", backbone="tiny-clip-vit", method="protonet", cache_dir=tmp_path,
        reject="auto", reject_tpr=0.9, open_score="msp",
    )  # fmt: skip
    assert tpr.info["reject"]["rule"] == "tpr" and tpr.info["reject"]["target_tpr"] == 0.9
    assert tpr.info["reject"]["score"] == "msp" and tpr.info["reject"]["tpr"] >= 0.9


def test_fit_reject_auto_at_one_shot(folders: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    for c in range(3):  # the first image of each support class
        (one / f"class_{c}").mkdir(parents=True)
        image = folders / "support" / f"class_{c}" / "0.png"
        (one / f"class_{c}" / "0.png").write_bytes(image.read_bytes())
    fit = dict(backbone="tiny-clip-vit", method="protonet", cache_dir=tmp_path / "cache", reject="auto")
    clf = focusshot.fit(one, **fit)
    r = clf.info["reject"]
    assert r["chosen_by"] == "leave-one-class-out on the support set, augmented views as the known images"
    assert r["views"] == LOCO_VIEWS and r["view_seed"] == 0 and r["folds"] == 3 and r["rule"] == "balanced"
    # each fold: the 2 other classes' image, LOCO_VIEWS views each, known; the held-out image unknown
    assert r["known_scores"] == 3 * 2 * LOCO_VIEWS and r["unknown_scores"] == 3
    assert math.isfinite(r["threshold"]) and 0 <= r["tpr"] <= 1 and 0 <= r["fpr"] <= 1
    assert Classifier.load(clf.save(tmp_path / "one.safetensors")).info["reject"] == r
    assert focusshot.fit(one, **fit).info["reject"] == r  # same seed, same views, same threshold
    other = focusshot.fit(one, **fit, seed=1).info["reject"]
    assert other["view_seed"] == 1 and other["known_scores"] == r["known_scores"]
    tpr = focusshot.fit(one, **fit, reject_tpr=0.9).info["reject"]
    assert tpr["rule"] == "tpr" and tpr["views"] == LOCO_VIEWS and tpr["tpr"] >= 0.9
    with pytest.raises(ValueError, match="reads each image's box, but .* has none"):  # as at any shot
        focusshot.fit(one, backbone="tiny-clip-vit", method="red_circle", reject="auto", cache_dir=tmp_path)


def test_one_shot_known_scores_are_views_never_the_fitted_images(folders: Path, tmp_path: Path) -> None:
    from focusshot.backbones.registry import create_backbone
    from focusshot.data.sources import open_source
    from focusshot.evaluation.cache import FeatureCache
    from focusshot.evaluation.prepare import prepare_images
    from focusshot.methods.request import resolve

    backbone = create_backbone("tiny-clip-vit")
    request = resolve("protonet", None, backbone)
    m = request.method
    data = open_source(folders / "support")
    prepared = prepare_images(backbone, FeatureCache(tmp_path), data, [request])
    index = torch.tensor([0, 3, 6])  # one image of each class
    known, unknown = loco_scores(m, prepared, ["distance"], index=index, seed=0)
    assert known["distance"].shape == (3 * 2 * LOCO_VIEWS,) and unknown["distance"].shape == (3,)
    # a fitted image scored as it is sits on its own prototype (distance 0); none of the views does
    assert (known["distance"] < 0).all()
    again, _ = loco_scores(m, prepared, ["distance"], index=index, seed=0, view_seed=5)
    assert not torch.equal(again["distance"], known["distance"])  # other views
    # two images of a class: the held-out-image rule, no views
    k2, u2 = loco_scores(m, prepared, ["distance"], index=torch.tensor([0, 1, 3, 6]), seed=0)
    assert k2["distance"].shape == (2,) and u2["distance"].shape == (4,)


#: the registered methods that read a box per image and train nothing (FALIP, FALIP-Tip, the
#: drawn prompts): leave-one-class-out runs for them
REGION_METHODS = [n for n in list_methods() if not method_class(n).trains and create_method(n).needs_regions]
#: a box over most of a 36x36 support image: every view of half its area or more shows most of it
WIDE_BOX = (2.0, 2.0, 34.0, 34.0)
#: a box in a corner that some views crop away
CORNER_BOX = (0.0, 0.0, 12.0, 12.0)


def _one_shot(folders: Path, boxes: list[tuple[float, ...] | None]) -> LabelledImages:
    """The first support image of each class, with ``boxes`` (one per class)."""
    paths = [str(folders / "support" / f"class_{c}" / "0.png") for c in range(3)]
    return LabelledImages(paths, [0, 1, 2], ["class_0", "class_1", "class_2"], list(boxes))


def _manifest(path: Path, data: LabelledImages) -> Path:
    """``data`` as a JSONL manifest (with its boxes where it has them)."""
    with path.open("w") as out:
        for p, y, box in zip(data.paths, data.labels, data.boxes or [None] * 3, strict=True):
            row = {"path": p, "label": data.class_names[y], **({"box": list(box)} if box else {})}
            out.write(json.dumps(row) + "\n")
    return path


def test_region_methods_are_registered() -> None:
    assert {"falip", "falip_tip", "red_circle", "blur_box"} <= set(REGION_METHODS)


@pytest.mark.parametrize("name", REGION_METHODS)
def test_fit_reject_auto_at_one_shot_with_boxes(name: str, folders: Path, tmp_path: Path) -> None:
    boxed = _manifest(tmp_path / "boxes.jsonl", _one_shot(folders, [WIDE_BOX] * 3))
    fit = dict(backbone="tiny-clip-vit", method=name, cache_dir=tmp_path / "cache", reject="auto")
    clf = focusshot.fit(boxed, **fit)
    r = clf.info["reject"]
    assert r["chosen_by"] == "leave-one-class-out on the support set, augmented views as the known images"
    assert r["views"] == LOCO_VIEWS and r["view_seed"] == 0 and r["folds"] == 3
    assert r["known_scores"] == 3 * 2 * LOCO_VIEWS and r["unknown_scores"] == 3  # every view shows its box
    assert r["score"] == method_class(name).open_score and math.isfinite(r["threshold"])
    assert Classifier.load(clf.save(tmp_path / "c.safetensors")).info["reject"] == r
    assert focusshot.fit(boxed, **fit).info["reject"] == r
    # the same images scored without their regions (views and held-out images alike) choose otherwise
    bare = _manifest(tmp_path / "bare.jsonl", _one_shot(folders, [None] * 3))
    whole = focusshot.fit(bare, **fit, options={"missing_box": "whole"}).info["reject"]
    assert whole["known_scores"] == r["known_scores"] and whole["threshold"] != r["threshold"]


def _prepared(name: str, data: LabelledImages, cache: Path, **options: object) -> PreparedImages:
    from focusshot.methods.request import resolve

    backbone = create_backbone("tiny-clip-vit")
    return prepare_images(backbone, FeatureCache(cache), data, [resolve(name, options or None, backbone)])


@pytest.mark.parametrize("name", ["falip", "red_circle"])
def test_one_shot_known_views_are_scored_with_their_own_boxes(
    name: str, folders: Path, tmp_path: Path
) -> None:
    data = _one_shot(folders, [WIDE_BOX, (4.0, 6.0, 20.0, 30.0), (14.0, 3.0, 35.0, 25.0)])
    prepared = _prepared(name, data, tmp_path)
    m, backbone = create_method(name), prepared.backbone
    known, unknown = loco_scores(m, prepared, ["max_logit"], seed=0)
    assert known["max_logit"].shape == (3 * 2 * LOCO_VIEWS,) and unknown["max_logit"].shape == (3,)
    # fold 0 by hand: class 0 plays the unknown, views v of images 1 and 2 (in that order) the known
    feats, ys, ctx = prepare_fit(m, prepared, torch.tensor([1, 2]), classes=[1, 2], seed=0)
    fitted = m.fit(feats, ys, ctx)
    queries, regions = [], []
    for v in range(1, LOCO_VIEWS + 1):
        t = AugmentTransform(backbone.preprocess, v, seed=0)
        prefix = prepared.prefixes[name].with_view(v, 0)
        views = prepared.cache.get_resolved(backbone, data.paths[1:], prefix, progress=False)
        for j in (1, 2):
            queries.append(views[j - 1])
            box = data.boxes[j]
            assert box is not None
            mapped = box_to_view(box, t.geometry(load_rgb(data.paths[j])))
            assert mapped is not None
            regions.append(mapped)
    q = torch.stack(queries)
    with torch.inference_mode():
        expected = fitted.logits(q, regions=torch.tensor(regions)).max(-1).values
        unboxed = fitted.logits(q, regions=torch.full((len(q), 4), float("nan"))).max(-1).values
        held_out = fitted.logits(*prepared.rows(m, torch.tensor([0]))).max(-1).values
    torch.testing.assert_close(known["max_logit"][: 2 * LOCO_VIEWS].float(), expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(unboxed, expected)  # the boxes change the scores they are read for
    torch.testing.assert_close(unknown["max_logit"][:1].float(), held_out, rtol=1e-5, atol=1e-4)


def test_views_that_crop_the_box_away_follow_missing_box(folders: Path, tmp_path: Path) -> None:
    data = _one_shot(folders, [CORNER_BOX] * 3)
    skip = _prepared("red_circle", data, tmp_path)
    whole = _prepared("red_circle", data, tmp_path, missing_box="whole")
    regions, shown = view_regions(skip.backbone, data, [0, 1, 2], LOCO_VIEWS, 0)
    assert 0 < int(shown.sum()) < shown.numel()  # some views show the corner, some do not
    assert torch.isnan(regions[~shown]).all() and not torch.isnan(regions[shown]).any()
    k_skip, u_skip = loco_scores(create_method("red_circle"), skip, ["max_logit"])
    m_whole = create_method("red_circle", {"missing_box": "whole"})
    k_whole, u_whole = loco_scores(m_whole, whole, ["max_logit"])
    # error (the default): a view that hides its box is no known query; whole: scored unprompted
    keep = torch.cat([shown[:, [j for j in range(3) if j != h]].flatten() for h in range(3)])
    assert k_skip["max_logit"].shape == (int(keep.sum()),) and k_whole["max_logit"].shape == keep.shape
    # (scored in batches of another size: equal within float tolerance)
    torch.testing.assert_close(k_whole["max_logit"][keep], k_skip["max_logit"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(u_whole["max_logit"], u_skip["max_logit"], rtol=1e-5, atol=1e-4)
    # an image without a box: its views have none either, and nothing is missing from them
    no_box = dataclasses.replace(data, boxes=[None, CORNER_BOX, CORNER_BOX])
    r0, s0 = view_regions(skip.backbone, no_box, [0, 1], LOCO_VIEWS, 0)
    assert torch.isnan(r0[:, 0]).all() and s0[:, 0].all()
    torch.testing.assert_close(r0[:, 1], regions[:, 1], equal_nan=True)


def test_no_view_shows_its_box(tmp_path: Path) -> None:
    from focusshot.evaluation.open_protocol import _auto

    paths = []
    for c in range(3):  # 200x200 images, a 3x3 box in the corner: every view of half the area misses it
        arr = np.full((200, 200, 3), 60 * c + 20, dtype=np.uint8)
        paths.append(str(tmp_path / f"{c}.png"))
        Image.fromarray(arr).save(paths[-1])
    data = LabelledImages(paths, [0, 1, 2], ["a", "b", "c"], [(0.0, 0.0, 3.0, 3.0)] * 3)
    prepared = _prepared("red_circle", data, tmp_path / "cache")
    _, shown = view_regions(prepared.backbone, data, [0, 1, 2], LOCO_VIEWS, 0)
    assert not shown.any()
    m = create_method("red_circle")
    with pytest.raises(NoKnownViews, match="none of the 4 augmented views of the 3 support images"):
        loco_scores(m, prepared, ["max_logit"])
    why = _auto(m, prepared, torch.arange(3), [0, 1, 2], ["max_logit"], 0)
    assert isinstance(why, str) and "missing_box='whole'" in why  # the protocol records it, runs on
    manifest = _manifest(tmp_path / "m.jsonl", data)
    fit = dict(backbone="tiny-clip-vit", method="red_circle", reject="auto", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="leave-one-class-out has no known images"):
        focusshot.fit(manifest, **fit)
    got = focusshot.fit(manifest, **fit, options={"missing_box": "whole"})
    assert got.info["reject"]["known_scores"] == 3 * 2 * LOCO_VIEWS


def test_files_without_rejection_load_and_predict_unchanged(folders: Path, tmp_path: Path) -> None:
    clf = focusshot.fit(folders / "support", backbone="tiny-clip-vit", method="logistic", cache_dir=tmp_path)
    again = Classifier.load(clf.save(tmp_path / "plain.safetensors"))
    assert "reject" not in again.info and again.rejection() == ("msp", None)
    preds = again.predict(folders / "query")
    assert all(p.score is None and p.label != UNKNOWN for p in preds)


def test_reject_errors(folders: Path, tmp_path: Path) -> None:
    sup = folders / "support"
    with pytest.raises(ValueError, match="valid scores: msp"):
        focusshot.fit(sup, backbone="tiny-clip-vit", reject="auto", open_score="odin", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no class prototypes"):
        focusshot.fit(sup, backbone="tiny-clip-vit", method="ridge", reject=0.3, open_score="distance")
    with pytest.raises(ValueError, match="trains per fit"):
        focusshot.fit(sup, backbone="tiny-clip-vit", method="lora", reject="auto", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="give reject too"):
        focusshot.fit(sup, backbone="tiny-clip-vit", reject_tpr=0.9, cache_dir=tmp_path)
    clf = focusshot.fit(sup, backbone="tiny-clip-vit", method="protonet", cache_dir=tmp_path, reject=-0.5)
    assert clf.info["reject"] == {"score": "distance", "threshold": -0.5, "chosen_by": "given"}
    with pytest.raises(ValueError, match="stored threshold is for the score 'distance'"):
        clf.rejection(None, "msp")
    assert clf.rejection(0.5, "msp") == ("msp", 0.5)


def test_every_registered_score_is_described() -> None:
    from focusshot.methods.base import list_methods, method_class

    for name in list_methods():
        assert method_class(name).open_score in SCORES, name


def test_cli_fit_reject_and_predict(
    folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.safetensors"
    base = ["fit", str(folders / "support"), "--backbone", "tiny-clip-vit", "--output", str(out)]
    cache = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main([*base, "--method", "nearest_neighbour", "--reject", "auto", *cache]) == 0
    assert "rejects below distance" in capsys.readouterr().out
    csv_path = tmp_path / "p.csv"
    assert main(["predict", str(out), str(folders / "query"), "--output", str(csv_path), "--quiet"]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6 and "score" in rows[0]
    threshold = Classifier.load(out).info["reject"]["threshold"]
    assert all((r["label"] == UNKNOWN) == (float(r["score"]) < threshold) for r in rows)
    predict = ["predict", str(out), str(folders / "query"), "--output", str(csv_path), "--quiet"]
    assert main([*predict, "--reject", "1"]) == 0  # cosine distance scores are <= 0
    assert {r["label"] for r in csv.DictReader(csv_path.open())} == {UNKNOWN}
    assert main([*predict, "--no-reject"]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert "score" not in rows[0] and UNKNOWN not in {r["label"] for r in rows}
    assert main([*predict, "--open-score", "nope"]) == 2
    assert "valid scores: msp, max_logit, energy, distance, mcm" in capsys.readouterr().err
    assert main([*base, "--method", "lora", "--reject", "auto", *cache]) == 2
    assert "trains per fit" in capsys.readouterr().err
