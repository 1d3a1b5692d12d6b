"""FocusWorld suites cut into train/val/test by the ``split`` option of a ``world:`` spec."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import focusshot
from focusshot.data.sources import (
    WORLD_SPLIT_FRACTIONS,
    LabelledImages,
    _split_counts,
    open_source,
    split_per_class,
)

SUITE = "world:clutter?per_class=10&image_size=32"


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the module, so the small suite is generated once."""
    return tmp_path_factory.mktemp("world-cache")


@pytest.fixture
def cache(world_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(world_cache))
    return world_cache


def _splits(spec: str) -> dict[str, LabelledImages]:
    data = open_source(spec)
    assert isinstance(data, dict)
    return data


def _class_counts(data: LabelledImages) -> set[int]:
    return set(data.class_counts().values())


# ----------------------------------------------------------------------------- the default split


def test_default_split_is_disjoint_covers_the_suite_and_has_every_class(cache: Path) -> None:
    whole = open_source(SUITE)
    assert isinstance(whole, LabelledImages) and whole.split is None  # unchanged without the option
    splits = _splits(SUITE + "&split=1")
    assert list(splits) == ["train", "val", "test"]
    for name, part in splits.items():
        assert part.split == name
        assert part.class_names == whole.class_names
        assert part.boxes is not None and len(part.boxes) == len(part)
    sets = {name: set(part.paths) for name, part in splits.items()}
    assert sum(len(s) for s in sets.values()) == len(whole)  # no path twice ...
    assert set().union(*sets.values()) == set(whole.paths)  # ... and every path once
    # 0.5/0.2/0.3 of 10 images, in every class
    assert [_class_counts(splits[n]) for n in ("train", "val", "test")] == [{5}, {2}, {3}]
    # labels and boxes are those of the same image in the whole suite
    by_path = {
        p: (lab, box) for p, lab, box in zip(whole.paths, whole.labels, whole.boxes or [], strict=True)
    }
    for part in splits.values():
        for p, lab, box in zip(part.paths, part.labels, part.boxes or [], strict=True):
            assert by_path[p] == (lab, box)
    # cut by scene index: the first half of each class trains, the last 3 test
    first = whole.class_names[0].replace(" ", "_")
    assert [Path(p).name for p in splits["train"].paths if f"/{first}/" in p] == [
        f"{i:03d}.png" for i in range(5)
    ]
    assert [Path(p).name for p in splits["test"].paths if f"/{first}/" in p] == [
        "007.png",
        "008.png",
        "009.png",
    ]
    # same suite files: one cache folder serves both specs
    assert len(list((cache / "world").iterdir())) == 1


def test_split_is_deterministic_across_calls_and_fresh_caches(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _splits(SUITE + "&split=1")
    again = _splits(SUITE + "&split=1")
    assert {k: v.to_dict() for k, v in first.items()} == {k: v.to_dict() for k, v in again.items()}
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fresh"))  # regenerated from scratch
    fresh = _splits(SUITE + "&split=yes")
    for name in first:
        rel = [Path(p).relative_to(cache) for p in first[name].paths]
        assert [Path(p).relative_to(tmp_path / "fresh") for p in fresh[name].paths] == rel
        assert fresh[name].labels == first[name].labels and fresh[name].boxes == first[name].boxes


@pytest.mark.parametrize(
    ("value", "counts"),
    [("0.6,0.2,0.2", (6, 2, 2)), ("0.34,0.33,0.33", (4, 3, 3)), ("0.8,0.1,0.1", (8, 1, 1)), ("1", (5, 2, 3))],
)
def test_fractions_are_respected(cache: Path, value: str, counts: tuple[int, int, int]) -> None:
    splits = _splits(f"{SUITE}&split={value}")
    assert tuple(len(splits[n]) for n in ("train", "val", "test")) == tuple(c * 64 for c in counts)
    assert [_class_counts(splits[n]) for n in ("train", "val", "test")] == [{c} for c in counts]


def test_split_zero_means_no_split(cache: Path) -> None:
    data = open_source(SUITE + "&split=0")
    assert isinstance(data, LabelledImages) and data.split is None and len(data) == 640


def test_split_counts_share_out_every_image() -> None:
    assert WORLD_SPLIT_FRACTIONS == (0.5, 0.2, 0.3)
    for fractions in [(0.5, 0.2, 0.3), (1 / 3, 1 / 3, 1 / 3), (0.7, 0.15, 0.15), (0.1, 0.1, 0.8)]:
        for n in range(60):
            counts = _split_counts(n, fractions)
            assert sum(counts) == n and min(counts) >= 0
            assert all(abs(c - f * n) < 1 for c, f in zip(counts, fractions, strict=True))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("split=maybe", "option 'split' takes 1"),
        ("split=", "option 'split' takes 1"),
        ("split=0.5,0.5", "option 'split' takes 1"),
        ("split=a,b,c", "option 'split' takes 1"),
        ("split=0.5,0.2,0.2", "must sum to 1"),
        ("split=0.7,0,0.3", "must be positive"),
        ("split=1.2,-0.1,-0.1", "must be positive"),
        ("split=nan,0.5,0.5", "must be positive"),
        ("split=1&split=0.6,0.2,0.2", "given 2 times"),
        ("splits=1", "unknown option 'splits'.*split"),
        ("per_class=2&split=1", "class 'red plain circle' has 2 images.*3 or more per class"),
        ("per_class=6&split=0.8,0.1,0.1", "class 'red plain circle' has 6 images.*7 or more per class"),
    ],
)
def test_bad_split_options_fail_clearly_before_generating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str, match: str
) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=match) as err:
        open_source(f"world:clutter?image_size=32&{query}")
    assert str(err.value).startswith("world:clutter?")  # names the spec
    assert not (tmp_path / "world").exists()


def test_split_per_class_names_the_class_that_is_too_small() -> None:
    data = LabelledImages(
        paths=[f"{c}{i}.png" for c, n in (("a", 5), ("b", 2), ("c", 4)) for i in range(n)],
        labels=[0] * 5 + [1] * 2 + [2] * 4,
        class_names=["cat", "dog", "eel"],
    )
    with pytest.raises(ValueError, match="class 'dog' has 2 images"):
        split_per_class(data)
    with pytest.raises(ValueError, match="already the 'train' split"):
        split_per_class(LabelledImages(**{**data.to_dict(), "split": "train"}))
    with pytest.raises(ValueError, match="class 'dog' has 0 images"):  # a class with no images at all
        split_per_class(data.subset([0, 1, 2, 3, 4, 7, 8, 9, 10]))
    two = LabelledImages(
        paths=data.paths[:5] + data.paths[7:], labels=[0] * 5 + [1] * 4, class_names=["a", "c"]
    )
    ok = split_per_class(two, (0.4, 0.2, 0.4))
    assert ok["train"].paths == ["a0.png", "a1.png", "c0.png", "c1.png"]
    assert Counter(ok["val"].labels) == {0: 1, 1: 1} and ok["val"].boxes is None


# ----------------------------------------------------------------------------- end to end


def test_split_protocol_runs_on_a_world_suite_and_selects_on_val(cache: Path, tmp_path: Path) -> None:
    out = focusshot.evaluate(
        "tiny-clip-vit",
        SUITE + "&split=0.5,0.2,0.3",
        ["protonet", "logistic"],
        protocol="split",
        shots=[1, 2],
        seeds=[1],
        output=tmp_path / "r",
        cache_dir=tmp_path / "c",
    )
    rows = [r for r in out.rows if r["method"] == "logistic"]
    assert sorted(r["shots"] for r in rows) == [1, 2]
    assert all(r["selected_on"] == "val" and r["test_images"] == 3 * 64 for r in rows)
    assert {r["method"] for r in out.rows} == {"protonet", "logistic"}
    # an episodic run draws from the split asked for
    ep = focusshot.evaluate(
        "tiny-clip-vit",
        SUITE + "&split=1",
        ["protonet"],
        ways=5,
        shots=1,
        queries=1,
        episodes=3,
        split="val",
        output=tmp_path / "e",
        cache_dir=tmp_path / "c",
        figures=False,
    )
    assert len(ep.rows) == 3


def test_distractor_boxes_replace_the_target_boxes_only(cache: Path) -> None:
    spec = "world:clutter?per_class=3&image_size=32"
    target, wrong = open_source(spec), open_source(spec + "&box=distractor")
    assert isinstance(target, LabelledImages) and isinstance(wrong, LabelledImages)
    assert wrong.paths == target.paths and wrong.labels == target.labels
    assert wrong.boxes is not None and all(b is not None for b in wrong.boxes)  # clutter: 1-4 distractors
    assert all(a != b for a, b in zip(target.boxes, wrong.boxes, strict=True))
    split = _splits(spec + "&box=distractor&split=1")
    assert split["test"].boxes == [wrong.boxes[wrong.paths.index(p)] for p in split["test"].paths]
    with pytest.raises(ValueError, match="'box'"):
        open_source(spec + "&box=other")
