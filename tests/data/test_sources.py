"""Readers of labelled images: class folders, CSV/JSONL manifests, CoOp split files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from focusshot.data.sources import (
    LabelledImages,
    from_coop_split,
    from_folder,
    from_manifest,
    open_source,
)

CLOTHING = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "clothing-small"


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), colour).save(path)
    return path


def _class_tree(root: Path, spec: dict[str, int]) -> None:
    for name, n in spec.items():
        for i in range(n):
            _png(root / name / f"img{i}.png")


# ----------------------------------------------------------------------------- LabelledImages


def test_labelled_images_validates() -> None:
    with pytest.raises(ValueError, match="2 paths but 1 labels"):
        LabelledImages(["a", "b"], [0], ["x"])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        LabelledImages(["a", "b"], [0, 2], ["x", "y"])
    with pytest.raises(ValueError, match="duplicates"):
        LabelledImages(["a"], [0], ["x", "x"])
    with pytest.raises(ValueError, match="x0 < x1"):
        LabelledImages(["a"], [0], ["x"], boxes=[(5, 0, 1, 2)])


def test_labelled_images_subset_and_counts() -> None:
    data = LabelledImages(
        ["a", "b", "c"], [1, 0, 1], ["x", "y"], boxes=[None, (0, 0, 1, 1), None], split="train"
    )
    assert data.indices_by_class() == [[1], [0, 2]]
    assert data.class_counts() == {"x": 1, "y": 2}
    sub = data.subset([2, 1])
    assert sub.paths == ["c", "b"] and sub.labels == [1, 0] and sub.boxes == [None, (0.0, 0.0, 1.0, 1.0)]
    assert sub.class_names == ["x", "y"] and sub.split == "train"
    assert json.loads(json.dumps(data.to_dict()))["boxes"][1] == [0.0, 0.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- folders


def test_from_folder_single_layout_sorted(tmp_path: Path) -> None:
    _class_tree(tmp_path, {"zebra": 2, "ant": 3})
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"")
    _png(tmp_path / "ant" / "nested" / "deep.PNG")
    data = from_folder(tmp_path)
    assert isinstance(data, LabelledImages)
    assert data.split is None
    assert data.class_names == ["ant", "zebra"]
    assert data.labels == [0, 0, 0, 0, 1, 1]
    names = [os.path.relpath(p, tmp_path) for p in data.paths]
    assert names == [
        os.path.join("ant", "img0.png"),
        os.path.join("ant", "img1.png"),
        os.path.join("ant", "img2.png"),
        os.path.join("ant", "nested", "deep.PNG"),
        os.path.join("zebra", "img0.png"),
        os.path.join("zebra", "img1.png"),
    ]
    assert all(os.path.isabs(p) for p in data.paths)
    assert from_folder(tmp_path) == data  # deterministic


def test_from_folder_splits_share_class_list(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    _class_tree(tmp_path / "validation", {"cat": 1, "dog": 1})
    _class_tree(tmp_path / "test", {"dog": 1, "cat": 3})
    splits = from_folder(tmp_path)
    assert isinstance(splits, dict)
    assert list(splits) == ["train", "val", "test"]
    for name, part in splits.items():
        assert part.split == name
        assert part.class_names == ["cat", "dog"]
    assert splits["test"].labels == [0, 0, 0, 1]


def test_from_folder_val_alias(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"a": 1, "b": 1})
    _class_tree(tmp_path / "val", {"a": 1, "b": 1})
    splits = from_folder(tmp_path)
    assert isinstance(splits, dict) and set(splits) == {"train", "val"}


def test_from_folder_both_val_and_validation_is_an_error(tmp_path: Path) -> None:
    for split in ("train", "val", "validation"):
        _class_tree(tmp_path / split, {"a": 1})
    with pytest.raises(ValueError, match="validation"):
        from_folder(tmp_path)


def test_from_folder_empty_class_names_folder(tmp_path: Path) -> None:
    _class_tree(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"[/\\]b: class folder has no images"):
        from_folder(tmp_path)


def test_from_folder_split_with_different_classes(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"a": 1, "b": 1})
    _class_tree(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"test: class folders differ.*missing \['b'\].*unexpected \['c'\]"):
        from_folder(tmp_path)


def test_from_folder_missing_and_without_classes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        from_folder(tmp_path / "nope")
    _png(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        from_folder(tmp_path)


# ----------------------------------------------------------------------------- CSV / JSONL manifests


def test_csv_manifest_with_boxes_and_relative_paths(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "1.png")
    _png(tmp_path / "imgs" / "2.png")
    outside = _png(tmp_path / "elsewhere" / "3.png")
    man = tmp_path / "meta" / "data.csv"
    man.parent.mkdir()
    rows = [
        "path,label,x0,y0,x1,y1",
        "../imgs/1.png,dog,0,0,3,2",
        "../imgs/2.png,cat,,,,",
        f"{outside},dog,1,1,5,4",
    ]
    man.write_text("\n".join(rows) + "\n")
    data = from_manifest(man)
    assert isinstance(data, LabelledImages)
    assert data.class_names == ["cat", "dog"]
    assert data.labels == [1, 0, 1]
    assert data.paths[0] == str(tmp_path / "imgs" / "1.png")
    assert data.paths[2] == str(outside)
    assert data.boxes == [(0.0, 0.0, 3.0, 2.0), None, (1.0, 1.0, 5.0, 4.0)]


def test_csv_manifest_split_column(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / f"{i}.png")
    man = tmp_path / "m.csv"
    man.write_text("path,label,split\n0.png,b,train\n1.png,a,validation\n2.png,b,test\n3.png,a,train\n")
    splits = from_manifest(man)
    assert isinstance(splits, dict) and list(splits) == ["train", "val", "test"]
    assert splits["train"].labels == [1, 0]
    assert splits["train"].boxes is None
    assert all(s.class_names == ["a", "b"] for s in splits.values())


def test_integer_labels_are_kept(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"{i}.png")
    man = tmp_path / "m.csv"
    man.write_text("path,label\n0.png,2\n1.png,0\n2.png,1\n")
    data = from_manifest(man)
    assert isinstance(data, LabelledImages)
    assert data.labels == [2, 0, 1] and data.class_names == ["0", "1", "2"]
    named = from_manifest(man, class_names=["x", "y", "z"])
    assert isinstance(named, LabelledImages) and named.class_names == ["x", "y", "z"]
    man.write_text("path,label\n0.png,2\n1.png,0\n")
    with pytest.raises(ValueError, match=r"ids \[1\] never appear"):
        from_manifest(man)


@pytest.mark.parametrize(
    ("body", "error", "pattern"),
    [
        (
            "path,label\nmissing.png,a\n",
            FileNotFoundError,
            r"m\.csv, line 2: image file not found: .*missing\.png",
        ),
        ("path,label,x0,y0,x1,y1\nok.png,a,0,0,1,\n", ValueError, r"line 2: fill all of x0, y0, x1, y1"),
        ("path,label,x0,y0,x1,y1\nok.png,a,0,0,x,1\n", ValueError, r"line 2: box values must be numbers"),
        ("path,label,x0,y0,x1,y1\nok.png,a,4,0,1,1\n", ValueError, r"line 2: a box needs x0 < x1"),
        ("path,label,x0,y0\nok.png,a,0,0\n", ValueError, r"box columns must be all of x0, y0, x1, y1"),
        (
            "file,class\nok.png,a\n",
            ValueError,
            r"must name the columns 'path' and 'label'.*\['file', 'class'\]",
        ),
        ("path,label\nok.png,a\nok.png,\n", ValueError, r"line 3: empty label"),
        ("path,label\nok.png,a,extra\n", ValueError, r"line 2: more fields than header"),
        ("path,label,split\nok.png,a,train\nok.png,a,\n", ValueError, r"line 3: empty 'split'"),
        ("path,label\n", ValueError, r"no rows"),
    ],
)
def test_csv_manifest_errors_name_the_row(
    tmp_path: Path, body: str, error: type[Exception], pattern: str
) -> None:
    _png(tmp_path / "ok.png")
    man = tmp_path / "m.csv"
    man.write_text(body)
    with pytest.raises(error, match=pattern):
        from_manifest(man)


def test_class_names_mismatch_names_the_row(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png")
    man = tmp_path / "m.csv"
    man.write_text("path,label\nok.png,cat\nok.png,wolf\n")
    with pytest.raises(ValueError, match=r"line 3: label 'wolf' is neither a class name"):
        from_manifest(man, class_names=["cat", "dog"])


def test_jsonl_manifest(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    man = tmp_path / "m.jsonl"
    lines = [
        {"path": "a.png", "label": "shoe", "box": [1, 2, 3, 4], "split": "train"},
        {"path": "b.png", "label": "hat", "split": "test"},
    ]
    man.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    splits = from_manifest(man)
    assert isinstance(splits, dict)
    assert splits["train"].class_names == splits["test"].class_names == ["hat", "shoe"]
    assert splits["train"].boxes == [(1.0, 2.0, 3.0, 4.0)]
    assert splits["test"].boxes == [None]
    assert splits["test"].paths == [str(tmp_path / "b.png")]


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("{not json", r"line 2: not valid JSON"),
        ('{"path": "a.png"}', r"line 2: missing field 'label'"),
        ('{"path": "a.png", "label": "x", "box": [1, 2, 3]}', r"line 2: a box needs 4 numbers"),
        ('{"path": "a.png", "label": 1}', r"line 2: integer label 1 among class-name labels"),
        ('["a.png", "x"]', r"line 2: expected a JSON object"),
        (
            '{"path": "a.png", "label": "x", "split": "test"}',
            r"line 2: give 'split' on every line or on none",
        ),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: str, pattern: str) -> None:
    _png(tmp_path / "a.png")
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"path": "a.png", "label": "x"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=pattern):
        from_manifest(man)


# ----------------------------------------------------------------------------- CoOp split files


def _coop_fixture(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    for name in ("abyssinian_1.jpg", "abyssinian_2.jpg", "beagle_1.jpg", "beagle_2.jpg", "chihuahua_1.jpg"):
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (5, 5), (10, 20, 30)).save(path)
    split = {
        "train": [["abyssinian_1.jpg", 0, "abyssinian"], ["beagle_1.jpg", 1, "beagle"]],
        "val": [["chihuahua_1.jpg", 2, "chihuahua"]],
        "test": [["abyssinian_2.jpg", 0, "abyssinian"], ["beagle_2.jpg", 1, "beagle"]],
    }
    json_path = tmp_path / "split_zhou_Toy.json"
    json_path.write_text(json.dumps(split))
    return json_path, images


def test_from_coop_split(tmp_path: Path) -> None:
    json_path, images = _coop_fixture(tmp_path)
    splits = from_coop_split(json_path, images)
    assert list(splits) == ["train", "val", "test"]
    for name, part in splits.items():
        assert part.split == name
        assert part.class_names == ["abyssinian", "beagle", "chihuahua"]
    assert splits["train"].labels == [0, 1]
    assert splits["val"].labels == [2]
    assert splits["test"].paths == [str(images / "abyssinian_2.jpg"), str(images / "beagle_2.jpg")]


def test_coop_split_mismatched_label_and_classname(tmp_path: Path) -> None:
    json_path, images = _coop_fixture(tmp_path)
    content = json.loads(json_path.read_text())
    content["test"][1] = ["beagle_2.jpg", 0, "beagle"]
    json_path.write_text(json.dumps(content))
    with pytest.raises(
        ValueError, match=r"split 'test', entry 1: label 0 is class 'beagle' here but 'abyssinian'"
    ):
        from_coop_split(json_path, images)


def test_coop_split_missing_image_and_bad_entry(tmp_path: Path) -> None:
    json_path, images = _coop_fixture(tmp_path)
    content = json.loads(json_path.read_text())
    content["val"].append(["gone.jpg", 2, "chihuahua"])
    json_path.write_text(json.dumps(content))
    with pytest.raises(FileNotFoundError, match=r"split 'val', entry 1: image file not found: .*gone\.jpg"):
        from_coop_split(json_path, images)
    assert len(from_coop_split(json_path, images, check_files=False)["val"]) == 2
    content["val"][1] = ["gone.jpg", 2]
    json_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"entry 1: expected \[impath, label, classname\]"):
        from_coop_split(json_path, images, check_files=False)


def test_coop_split_label_gap(tmp_path: Path) -> None:
    json_path, images = _coop_fixture(tmp_path)
    content = json.loads(json_path.read_text())
    content["val"] = [["chihuahua_1.jpg", 5, "chihuahua"]]
    json_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"ids \[2, 3, 4\] never appear"):
        from_coop_split(json_path, images)


# ----------------------------------------------------------------------------- dispatch


def test_open_source_dispatch(tmp_path: Path) -> None:
    _class_tree(tmp_path / "folder", {"a": 1, "b": 1})
    assert isinstance(open_source(tmp_path / "folder"), LabelledImages)

    _png(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("path,label\nx.png,a\n")
    (tmp_path / "m.jsonl").write_text('{"path": "x.png", "label": "a"}\n')
    assert open_source(str(tmp_path / "m.csv")) == open_source(tmp_path / "m.jsonl")

    json_path, images = _coop_fixture(tmp_path / "coop")
    assert set(open_source(json_path, image_root=images)) == {"train", "val", "test"}  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"entry 0: image file not found"):
        open_source(json_path)  # images are not next to the JSON

    (tmp_path / "data.txt").write_text("")
    with pytest.raises(ValueError, match=r"folder of class folders, a \.csv or \.jsonl manifest"):
        open_source(tmp_path / "data.txt")
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        open_source(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- real photos


@pytest.mark.skipif(not CLOTHING.is_dir(), reason=f"real photos not available at {CLOTHING}")
def test_clothing_small_folder_has_ten_shared_classes() -> None:
    splits = from_folder(CLOTHING)
    assert isinstance(splits, dict)
    assert set(splits) == {"train", "val", "test"}
    names = splits["train"].class_names
    assert len(names) == 10 and names == sorted(names)
    for part in splits.values():
        assert part.class_names == names
        assert set(part.labels) == set(range(10))
        assert all(p.lower().endswith(".jpg") for p in part.paths[:20])
