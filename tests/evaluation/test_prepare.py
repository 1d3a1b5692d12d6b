"""The one fit preparation: what prepare_fit hands a method, and that every caller goes through it."""

import inspect

import pytest
import torch

import focusshot
from focusshot.data.episodes import EpisodeSampler
from focusshot.evaluation import prepare
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.prepare import prepare_fit, prepare_images
from focusshot.methods.request import resolve

WORLD = "world:clutter?per_class=4&image_size=32"


@pytest.fixture(scope="module")
def clip():
    return focusshot.create_backbone("tiny-clip-vit").eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from focusshot.data.sources import open_source

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOCUSSHOT_CACHE", str(tmp_path_factory.mktemp("fs")))
        return open_source(WORLD)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return FeatureCache(tmp_path_factory.mktemp("cache"))


def _requests(backbone):
    return {
        "protonet": resolve("protonet", None, backbone),
        "zeroshot": resolve("zeroshot", None, backbone),
        "falip": resolve("falip", None, backbone),
        "fort_box": resolve("lora+fort", {"prompts": "box"}, backbone),
        "fort_rollout": resolve("lora+fort", None, backbone),
        "lora_views": resolve("lora", {"views": 2}, backbone),
    }


def test_prepare_fit_hands_each_method_what_it_needs(clip, world, cache) -> None:
    requests = _requests(clip)
    ms = {key: r.method for key, r in requests.items()}
    pool = prepare_images(clip, cache, world, list(requests.values()))
    # one prefix computed once: methods reading the same prefix share the tensor
    assert pool.features["protonet"] is pool.features["zeroshot"]
    assert pool.features["lora+fort"] is pool.features["lora"]
    assert pool.text is not None and pool.text.shape[0] == len(world.class_names)
    assert pool.regions is not None and pool.regions.shape == (len(world.paths), 4)
    # each request's prefix is read as it was resolved, never derived again
    assert all(pool.prefixes[r.name] == r.prefix for r in requests.values())

    ep = next(iter(EpisodeSampler(world.labels, 3, 2, 2, 1, 7, class_names=world.class_names)))
    sup = torch.tensor(ep.support)
    for key, m in ms.items():
        feats, labels, ctx = prepare_fit(m, pool, sup, classes=ep.classes, seed=ep.seed, view_seed=5)
        assert torch.equal(feats, pool.features[m.name][sup])
        assert labels.tolist() == list(ep.support_labels)  # the episode's own labels, 0..N-1
        assert ctx.num_classes == 3 and ctx.class_names == [world.class_names[c] for c in ep.classes]
        assert ctx.seed == ep.seed and ctx.val is None and ctx.val_regions is None
        # text iff the method needs text; regions iff the method instance reads them
        assert (ctx.text is not None) == m.needs_text, key
        if m.needs_text:
            assert torch.equal(ctx.text, pool.text[list(ep.classes)])
        assert (ctx.regions is not None) == m.needs_regions, key
        if m.needs_regions:
            assert torch.equal(ctx.regions, pool.regions[sup])
        # augmented views iff the method asks for them: (V, N, *prefix), seeded by view_seed
        if m.augment_views():
            assert ctx.views is not None and ctx.views.shape == (2, *feats.shape)
            prefix = requests[key].prefix.with_view(1, 5)
            assert torch.equal(ctx.views[0], cache.get(clip, [world.paths[i] for i in ep.support], prefix))
        else:
            assert ctx.views is None, key
    # FORT's needs_regions is the instance's (its prompts option), not the class's
    assert ms["fort_box"].needs_regions and not ms["fort_rollout"].needs_regions


def test_prepare_fit_with_validation_and_every_class(clip, world, cache) -> None:
    request = resolve("falip", None, clip)
    m = request.method
    train = prepare_images(clip, cache, world, [request])
    val = prepare_images(clip, cache, world, [request], text=False)
    assert val.text is None and val.regions is not None
    idx, vidx = torch.tensor([0, 5, 9]), torch.tensor([1, 2])
    feats, labels, ctx = prepare_fit(
        m, train, idx, val=val, val_index=vidx, seed=3, device="cpu", progress=True
    )
    assert torch.equal(feats, train.features["falip"][idx])
    assert labels.tolist() == [world.labels[i] for i in idx.tolist()]
    assert ctx.num_classes == len(world.class_names) and ctx.class_names == world.class_names
    assert ctx.text is train.text and ctx.progress and ctx.seed == 3
    assert ctx.val is not None
    assert torch.equal(ctx.val[0], val.features["falip"][vidx]) and ctx.val[1].tolist() == [
        world.labels[i] for i in vidx.tolist()
    ]
    assert torch.equal(ctx.val_regions, val.regions[vidx])
    whole, all_labels, _ = prepare_fit(m, train)  # no index: the whole set
    assert whole is train.features["falip"] and all_labels.tolist() == list(world.labels)


def test_preparation_refuses_text_without_a_text_tower_and_images_without_boxes(tmp_path, world) -> None:
    import dataclasses

    cache = FeatureCache(tmp_path / "cache")
    vit = focusshot.create_backbone("tiny-vit")
    with pytest.raises(ValueError, match="no text tower"):
        prepare_images(vit, cache, world, [resolve("zeroshot", None, vit)])
    clip = focusshot.create_backbone("tiny-clip-vit")
    boxless = dataclasses.replace(world, boxes=[None, *world.boxes[1:]])
    with pytest.raises(ValueError, match="reads each image's box"):
        prepare_images(clip, cache, boxless, [resolve("falip", None, clip)])
    whole = prepare_images(clip, cache, boxless, [resolve("falip", {"missing_box": "whole"}, clip)])
    assert torch.isnan(whole.regions[0]).all() and not torch.isnan(whole.regions[1]).any()


def test_every_caller_prepares_its_fits_with_prepare_fit(tmp_path, monkeypatch) -> None:
    """The episodic and split protocols, fit and fit --method auto build no FitContext of their
    own: each fit goes through prepare.prepare_fit."""
    from focusshot import api, auto
    from focusshot.evaluation import protocols
    from tests.evaluation.test_protocols import _write_dataset

    for module in (api, auto, protocols):
        assert module.prepare_fit is prepare.prepare_fit
        assert "FitContext(" not in inspect.getsource(module)
    calls: list[str] = []

    def counting(method, *args, **kwargs):
        calls.append(method.name)
        return prepare.prepare_fit(method, *args, **kwargs)

    for module in (api, auto, protocols):
        monkeypatch.setattr(module, "prepare_fit", counting)
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    data = _write_dataset(tmp_path / "data", classes=3, per_class=4, splits=("train", "val", "test"))
    clip = focusshot.create_backbone("tiny-clip-vit")
    cache = FeatureCache(tmp_path / "cache")
    from focusshot.data.sources import open_source

    splits = open_source(data)
    cfg = protocols.EpisodicConfig(ways=2, shots=1, queries=1, episodes=2, seed=0)
    protocols.run_episodic(clip, splits["test"], ["protonet"], cfg, tmp_path / "ep", cache, attention=False)
    assert calls == ["protonet"] * 2
    protocols.run_split(clip, splits, ["zeroshot"], protocols.SplitConfig((1,), (1,)), tmp_path / "sp", cache)
    assert calls[2:] == ["zeroshot"]
    api.fit(data, clip, "tip_adapter", cache_dir=tmp_path / "cache")
    assert calls[3:] == ["tip_adapter"]
    del calls[:]
    # two candidates, no time limit: every fold of each is prepared (the budget is tested elsewhere)
    monkeypatch.setattr(auto, "auto_candidates", lambda: ["protonet", "tip_adapter"])
    clf = api.fit(data / "train", clip, "auto", cache_dir=tmp_path / "cache", budget_s=float("inf"))
    from collections import Counter

    counts = Counter(calls[:-1])
    assert clf.info["auto"]["folds"]["k"] == 12  # leave-one-out over the 12 training images
    assert [r["method"] for r in clf.info["auto"]["candidates"]] != []
    assert all(counts[r["method"]] == 12 for r in clf.info["auto"]["candidates"])
    assert calls[-1] == clf.method  # then the chosen method's own fit


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_boxes_are_in_the_upright_pixels_the_model_sees(tmp_path, orientation: int) -> None:
    """A phone photo stored sideways with an EXIF orientation tag is loaded upright; its box, given
    in those upright pixels, lands on the object in the evaluation crop."""
    from types import SimpleNamespace

    from PIL import Image

    from focusshot.backbones.base import Preprocess
    from focusshot.data.images import load_rgb, upright_size
    from focusshot.data.labelled import LabelledImages
    from focusshot.data.transforms import ImageTransform

    upright = Image.new("RGB", (96, 64), (128, 128, 128))
    box = (50, 10, 80, 40)  # x0, y0, x1, y1 in the upright image
    upright.paste((255, 0, 0), box)
    # stored so that PIL's exif_transpose turns it back upright
    turn = {1: None, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    stored = upright if turn is None else upright.transpose(turn)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{orientation}.png"
    stored.save(path, exif=exif)
    assert load_rgb(path).size == upright_size(path) == (96, 64)
    pre = Preprocess(resize=48, crop=48)
    region = prepare.region_tensor(
        SimpleNamespace(preprocess=pre), LabelledImages([str(path)], [0], ["a"], [box])
    )[0]
    x = ImageTransform(pre)(load_rgb(path))  # (3, 48, 48), normalised
    red = (x[0] > x[1] + 1.0).nonzero()  # rows, cols of the red object
    seen = torch.tensor([red[:, 1].min(), red[:, 0].min(), red[:, 1].max() + 1, red[:, 0].max() + 1]) / 48
    assert torch.allclose(region, seen.float(), atol=1.5 / 48), (region, seen)


@pytest.mark.parametrize("name", ["protonet", "zeroshot"])
def test_a_set_of_stored_features_prepares_fits_as_its_images_do(clip, world, cache, name) -> None:
    """``PreparedImages.of_features`` (a classifier file's kept support set) cuts the same fits
    out, and leave-one-class-out's held-out-image rule gives the same scores on it."""
    from focusshot.evaluation.open_set import loco_scores
    from focusshot.evaluation.prepare import PreparedImages

    request = resolve(name, None, clip)
    m = request.method
    images = prepare_images(clip, cache, world, [request])
    stored = PreparedImages.of_features(
        clip, cache, m, request.prefix, images.features[name].clone(), images.labels.clone(),
        world.class_names, text=images.text,
    )  # fmt: skip
    assert stored.data.boxes is None and stored.regions is None
    idx, classes = torch.tensor([0, 1, 4, 5, 9]), [2, 0, 1]
    f1, y1, c1 = prepare_fit(m, images, idx, classes=classes, seed=4)
    f2, y2, c2 = prepare_fit(m, stored, idx, classes=classes, seed=4)
    assert torch.equal(f1, f2) and torch.equal(y1, y2) and c1.class_names == c2.class_names
    assert (c2.text is not None) == m.needs_text and c2.seed == 4 and c2.views is None
    if m.needs_text:
        assert torch.equal(c1.text, c2.text)
    score = m.open_score
    known, unknown = loco_scores(m, images, [score], seed=1)
    k2, u2 = loco_scores(m, stored, [score], seed=1)
    assert torch.equal(known[score], k2[score]) and torch.equal(unknown[score], u2[score])


def test_a_set_of_stored_features_checks_its_rows(clip, cache) -> None:
    from focusshot.evaluation.prepare import PreparedImages

    request = resolve("protonet", None, clip)
    feats = torch.zeros(3, clip.num_features)
    with pytest.raises(ValueError, match="features has 3 rows but labels 2"):
        PreparedImages.of_features(
            clip, cache, request.method, request.prefix, feats, torch.tensor([0, 1]), ["a", "b"]
        )
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        PreparedImages.of_features(
            clip, cache, request.method, request.prefix, feats, torch.tensor([0, 1, 2]), ["a", "b"]
        )
