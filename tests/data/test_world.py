"""FocusWorld: classes and splits, scene sampling and rendering, suites, materialisation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focusshot.data import world as w
from focusshot.data.sources import LabelledImages, from_manifest, open_source


def _scenes(suite: str, n: int, seed: int = 0, size: int = 64) -> list[w.SceneSpec]:
    rng = np.random.default_rng(seed)
    pool = w.suite_classes(suite)
    return [w.sample_scene(rng, pool, size, suite) for _ in range(n)]


# ----------------------------------------------------------------------------- classes and splits


def test_classes_ids_and_names() -> None:
    classes = w.all_classes()
    assert len(classes) >= 200
    assert [c.id for c in classes] == list(range(len(classes)))
    assert len({c.name for c in classes}) == len(classes)
    star = w.class_by_name("red striped star")
    assert (star.colour, star.pattern, star.shape) == ("red", "striped", "star")
    assert w.WorldClass.from_id(star.id) == star
    assert w.WorldClass("circle", "orange", "plain").phrase() == "an orange plain circle"
    with pytest.raises(ValueError, match="unknown shape"):
        w.WorldClass("blob", "red", "plain")
    with pytest.raises(ValueError, match="no FocusWorld class"):
        w.class_by_name("red spotted star")
    assert set(w.caption_vocabulary()) >= {"a", "an", "and", "red", "striped", "star"}


def test_base_novel_split_is_disjoint_and_compositional() -> None:
    base, novel, fine = w.base_classes(), w.novel_classes(), w.fine_classes()
    base_ids, novel_ids = {c.id for c in base}, {c.id for c in novel}
    assert not base_ids & novel_ids
    assert base_ids | novel_ids == set(range(len(w.all_classes())))
    assert 0.2 <= len(novel) / len(w.all_classes()) <= 0.3
    for values, get in ((w.SHAPES, "shape"), (tuple(w.COLOURS), "colour"), (w.PATTERNS, "pattern")):
        assert {getattr(c, get) for c in base} == set(values), f"a {get} value is missing from base"
    # every (shape, pattern) and (colour, pattern) pair is seen in base as well
    assert {(c.shape, c.pattern) for c in base} == {(s, p) for s in w.SHAPES for p in w.PATTERNS}
    assert {(c.colour, c.pattern) for c in base} == {(k, p) for k in w.COLOURS for p in w.PATTERNS}
    # fine-grained block: novel, and every class has neighbours one attribute away
    assert {c.id for c in fine} <= novel_ids
    assert len(fine) >= 10
    for c in fine:
        assert sum(w.attribute_difference(c, o) == 1 for o in fine) >= 3
    # stable: the split is fixed, not drawn per call
    assert [c.id for c in w.novel_classes()] == [c.id for c in novel]


# ----------------------------------------------------------------------------- scenes


def test_scenes_are_deterministic() -> None:
    a = _scenes("world:clutter", 6, seed=3)
    b = _scenes("world:clutter", 6, seed=3)
    assert a == b
    for sa, sb in zip(a, b, strict=True):
        ia, ma = w.render_scene(sa)
        ib, mb = w.render_scene(sb)
        assert np.array_equal(np.asarray(ia), np.asarray(ib)) and np.array_equal(ma, mb)
    assert [s.caption for s in _scenes("world:clutter", 6, seed=4)] != [s.caption for s in a]
    # a spec survives JSON and renders to the same pixels
    spec = w.SceneSpec.from_dict(json.loads(json.dumps(a[0].to_dict())))
    assert spec == a[0]
    assert np.array_equal(w.render_scene_full(spec).image, w.render_scene_full(a[0]).image)
    # the in-memory stream is deterministic too
    x1, c1, y1 = next(w.iter_batches("world:base", 4, 32, seed=1))
    x2, c2, y2 = next(w.iter_batches("world:base", 4, 32, seed=1))
    assert x1.shape == (4, 32, 32, 3) and x1.dtype == np.uint8
    assert np.array_equal(x1, x2) and c1 == c2 and np.array_equal(y1, y2)
    it = w.iter_batches("world:base", 4, 32, seed=1)
    next(it)
    second = next(it)
    resumed = next(w.iter_batches("world:base", 4, 32, seed=1, start=1))
    assert np.array_equal(second[0], resumed[0]) and second[1] == resumed[1]
    assert not np.array_equal(x1, second[0])


def test_stream_can_share_a_pool_of_backgrounds() -> None:
    x0, c0, y0 = next(w.iter_batches("world:base", 6, 32, seed=2))
    x1, c1, y1 = next(w.iter_batches("world:base", 6, 32, seed=2, backgrounds=1))
    # the same scenes (objects, captions, labels), other backgrounds
    assert c0 == c1 and np.array_equal(y0, y1) and not np.array_equal(x0, x1)

    def shared_pixels(x: np.ndarray) -> float:
        """Mean fraction of pixels two scenes of a batch have exactly equal."""
        pairs = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))]
        return float(np.mean([(x[i] == x[j]).all(-1).mean() for i, j in pairs]))

    # one background for all: every pixel no object covers is the same in every scene
    assert shared_pixels(x1) > 0.3 > 0.01 > shared_pixels(x0)
    again = next(w.iter_batches("world:base", 6, 32, seed=2, backgrounds=1))[0]
    assert np.array_equal(x1, again)
    with pytest.raises(ValueError, match="backgrounds"):
        next(w.iter_batches("world:base", 6, 32, seed=2, backgrounds=-1))


def test_image_and_masks_are_consistent_with_boxes() -> None:
    for spec in _scenes("world:clutter", 40, seed=5):
        out = w.render_scene_full(spec)
        image, mask = w.render_scene(spec)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()
        assert np.array_equal(mask, out.masks[spec.target_index])
        for m, (x0, y0, x1, y1) in zip(out.masks, out.boxes, strict=True):
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        # visible masks never overlap: each pixel shows at most one object
        assert out.masks.sum(axis=0).max() <= 1


def test_shapes_fit_their_circle_and_look_different() -> None:
    masks = {}
    for shape in w.SHAPES:
        cls = w.WorldClass(shape, "red", "plain")
        obj = w.ObjectSpec(cls.id, 32.0, 32.0, 20.0, 0.0, (0.0, 0.0), (1.0, 1.0, 1.0))
        spec = w.SceneSpec(64, (obj,), 0, 7, cls.phrase())
        m = w.render_scene_full(spec).target_mask
        ys, xs = np.nonzero(m)
        assert np.all(np.hypot(xs + 0.5 - 32, ys + 0.5 - 32) <= 20.0 + 1e-9), shape
        assert m.sum() > 0.25 * math.pi * 20**2, f"{shape} is too small"
        masks[shape] = m
    for a in w.SHAPES:
        for b in w.SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.9, (a, b)


def test_occlusion_is_bounded_and_happens() -> None:
    fractions = []
    for spec in _scenes("world:clutter", 150, seed=11):
        out = w.render_scene_full(spec)
        vis = out.visible
        assert vis[spec.target_index] >= 0.6 - 1e-9
        assert all(v >= 0.5 - 1e-9 for i, v in enumerate(vis) if i != spec.target_index)
        fractions.append(vis[spec.target_index])
    assert min(fractions) < 0.9, "distractors never overlap the target"


def test_captions_name_every_object() -> None:
    for spec in _scenes("world:clutter", 30, seed=2) + _scenes("world:base", 30, seed=2):
        phrases = spec.caption.split(" and ")
        assert sorted(phrases) == sorted(o.world_class.phrase() for o in spec.objects)
    single = _scenes("world:single", 5)
    for spec in single:
        assert spec.caption == spec.target.world_class.phrase()
        assert spec.caption.split()[-3:] == w.WorldClass.from_id(spec.label).name.split()
    orders = {
        tuple(s.caption.split(" and ")) == tuple(o.world_class.phrase() for o in s.objects)
        for s in _scenes("world:clutter", 30, seed=8)
    }
    assert orders == {True, False}, "caption order should be random, not drawing order"


def test_suites_differ() -> None:
    novel = {c.id for c in w.novel_classes()}
    base = {c.id for c in w.base_classes()}
    fine = {c.id for c in w.fine_classes()}
    single = _scenes("world:single", 40)
    clutter = _scenes("world:clutter", 40)
    fine_scenes = _scenes("world:fine", 40)
    base_scenes = _scenes("world:base", 60)
    assert all(len(s.objects) == 1 for s in single + fine_scenes)
    counts = [len(s.objects) for s in clutter]
    assert min(counts) >= 2 and max(counts) <= 5 and len(set(counts)) >= 3
    assert {len(s.objects) for s in base_scenes} >= {1, 3}
    for scenes, pool in ((single, novel), (clutter, novel), (fine_scenes, fine), (base_scenes, base)):
        assert all(o.class_id in pool for s in scenes for o in s.objects)
    for s in clutter:
        ids = [o.class_id for o in s.objects]
        assert len(set(ids)) == len(ids)
    # clutter distractors are often one attribute away from the target
    near = [
        w.attribute_difference(d.world_class, s.target.world_class) == 1
        for s in clutter
        for d in s.distractors
    ]
    assert 0.25 < np.mean(near) < 0.95
    # targets are smaller in clutter than alone
    assert np.mean([s.target.radius for s in clutter]) < np.mean([s.target.radius for s in single])
    with pytest.raises(ValueError, match="unknown FocusWorld suite"):
        w.suite_classes("world:nope")


# ----------------------------------------------------------------------------- materialisation


def test_build_world_and_open_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    data = open_source("world:single?per_class=3&image_size=32")
    assert isinstance(data, LabelledImages)
    pool = w.suite_classes("world:single")
    assert data.class_names == [c.name for c in pool]
    assert len(data) == 3 * len(pool) and set(data.class_counts().values()) == {3}
    assert data.boxes is not None
    folder = tmp_path / "cache" / "world" / "single-s32-n3-seed0"
    assert (folder / "manifest.jsonl").is_file()
    for i in (0, 5, len(data) - 1):
        img = Image.open(data.paths[i])
        assert img.size == (32, 32) and img.mode == "RGB"
        mask = w.mask_for(data.paths[i])
        assert mask.shape == (32, 32) and mask.dtype == bool
        ys, xs = np.nonzero(mask)
        assert data.boxes[i] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert rows[0]["caption"] == w.class_by_name(rows[0]["label"]).phrase()
    assert rows[0]["distractors"] == []
    # the files equal a fresh render of the recorded scene
    spec = w.SceneSpec.from_dict(rows[0]["scene"])
    assert np.array_equal(np.asarray(Image.open(folder / rows[0]["path"])), w.render_scene_full(spec).image)
    # the manifest is a valid focusshot manifest too
    again = from_manifest(folder / "manifest.jsonl", class_names=data.class_names)
    assert again.paths == data.paths and again.labels == data.labels

    # idempotent: a second open reuses the build without rendering anything
    stamp = (folder / "world.json").stat().st_mtime_ns

    def boom(*_args: object, **_kw: object) -> None:
        raise AssertionError("rebuilt a complete suite")

    monkeypatch.setattr(w, "render_scene_full", boom)
    same = w.open_world("world:single?size=32&per_class=3&seed=0", cache_root=tmp_path / "cache" / "world")
    assert same == data
    assert (folder / "world.json").stat().st_mtime_ns == stamp


def test_build_world_clutter_rebuilds_on_new_settings(tmp_path: Path) -> None:
    root = tmp_path / "clutter"
    a = w.build_world("world:clutter", root, image_size=32, per_class=1, seed=0)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert all(len(r["distractors"]) >= 1 for r in rows)
    assert all(len(r["caption"].split(" and ")) == 1 + len(r["distractors"]) for r in rows)
    b = w.build_world("world:clutter", root, image_size=32, per_class=2, seed=0)
    assert len(b) == 2 * len(a)
    # per-image seeds do not depend on per_class: the first image of each class is unchanged
    first = {lab: p for p, lab in zip(b.paths, b.labels, strict=True) if p.endswith("000.png")}
    for p, lab in zip(a.paths, a.labels, strict=True):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(first[lab])))
    # a folder with someone else's images is never overwritten
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "keep.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="no FocusWorld build made"):
        w.build_world("world:fine", foreign, image_size=32, per_class=1)
    assert (foreign / "images" / "keep.png").is_file()


def test_world_spec_parsing() -> None:
    assert w.parse_world_spec("world:clutter") == (
        "world:clutter",
        {"image_size": 64, "per_class": 30, "seed": 0},
    )
    assert w.parse_world_spec("world:fine?size=48&per_class=5&seed=2")[1] == {
        "image_size": 48,
        "per_class": 5,
        "seed": 2,
    }
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        w.parse_world_spec("world:fine?colour=red")
    with pytest.raises(ValueError, match="needs an integer"):
        w.parse_world_spec("world:fine?seed=x")
    with pytest.raises(ValueError, match="unknown FocusWorld suite"):
        w.parse_world_spec("world:everything")
    with pytest.raises(FileNotFoundError):
        w.mask_for("/nonexistent/image.png")
