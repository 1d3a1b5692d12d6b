"""The fixed K-shot draw (CoOp protocol)."""

from __future__ import annotations

import pytest

from focusshot.data.fewshot import few_shot_indices, few_shot_subset, validation_shots
from focusshot.data.sources import LabelledImages


def _data(counts: dict[str, int]) -> LabelledImages:
    paths: list[str] = []
    labels: list[int] = []
    for label, (name, n) in enumerate(counts.items()):
        paths += [f"/imgs/{name}/{i}.jpg" for i in range(n)]
        labels += [label] * n
    return LabelledImages(paths, labels, list(counts), split="train")


def test_k_per_class_and_grouped() -> None:
    data = _data({"a": 10, "b": 7, "c": 12})
    sub = few_shot_subset(data, shots=4, seed=1)
    assert sub.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert sub.class_names == data.class_names and sub.split == "train"
    assert len(set(sub.paths)) == 12
    for path, label in zip(sub.paths, sub.labels, strict=True):
        assert f"/{data.class_names[label]}/" in path


def test_seeded_and_reproducible() -> None:
    data = _data({"a": 30, "b": 30})
    assert few_shot_subset(data, 5, seed=3) == few_shot_subset(data, 5, seed=3)
    assert few_shot_subset(data, 5, seed=3).paths != few_shot_subset(data, 5, seed=4).paths


def test_smaller_k_is_contained_in_larger_k() -> None:
    labels = [i % 3 for i in range(60)]
    one = set(few_shot_indices(labels, 1, seed=0))
    four = set(few_shot_indices(labels, 4, seed=0))
    sixteen = set(few_shot_indices(labels, 16, seed=0))
    assert one < four < sixteen


def test_class_draw_does_not_depend_on_other_classes() -> None:
    small = _data({"a": 20, "b": 20})
    big = _data({"a": 20, "b": 20, "c": 20})
    assert few_shot_subset(small, 3, 7).paths == few_shot_subset(big, 3, 7).paths[:6]


def test_too_few_images_names_the_class() -> None:
    data = _data({"a": 10, "shoes": 2, "hat": 0})
    with pytest.raises(ValueError, match=r"'shoes' has 2, 'hat' has 0.*allow_fewer=True"):
        few_shot_subset(data, 4, seed=0)
    sub = few_shot_subset(data, 4, seed=0, allow_fewer=True)
    assert sub.labels == [0, 0, 0, 0, 1, 1]


def test_bad_arguments() -> None:
    data = _data({"a": 3})
    with pytest.raises(ValueError, match="shots"):
        few_shot_subset(data, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        few_shot_subset(data, 1, seed=-1)


@pytest.mark.parametrize(("k", "expected"), [(1, 1), (2, 2), (4, 4), (8, 4), (16, 4)])
def test_validation_shots(k: int, expected: int) -> None:
    assert validation_shots(k) == expected


def test_validation_shots_rejects_zero() -> None:
    with pytest.raises(ValueError):
        validation_shots(0)
