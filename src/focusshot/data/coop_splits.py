"""CoOp split files (``split_zhou_<Dataset>.json``): ``{split: [[impath, label, classname], ...]}``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from focusshot.data.labelled import LabelledImages
from focusshot.data.manifests import resolve_path
from focusshot.data.splitting import canonical_split

__all__ = ["from_coop_split"]


def from_coop_split(
    json_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    check_files: bool = True,
) -> dict[str, LabelledImages]:
    """Read a CoOp-style split file (e.g. ``split_zhou_OxfordPets.json``) as it is.

    The file maps split names to lists of ``[impath, label, classname]``:
    ``{"train": [...], "val": [...], "test": [...]}``. ``impath`` is relative to ``image_root``
    (absolute paths are kept). Labels are kept as they are: across all splits each label id must
    always come with the same class name and vice versa, and the ids must cover ``0..C-1``, so that
    ``class_names[label]`` is the file's class name.

    Args:
        json_path: the split file.
        image_root: the folder the file's relative ``impath`` entries are relative to.
        check_files: check that ``image_root`` is a folder and every image file exists (default
            ``True``); ``False`` reads the split file alone.

    Returns:
        a dict of :class:`LabelledImages` with the file's split keys (in file order), sharing one
        class list.

    Raises:
        FileNotFoundError: the JSON, ``image_root`` or (with ``check_files``) an image is missing.
        ValueError: the file is not a CoOp split, an entry is malformed, or labels and class names
            do not match; the message names the file, split and entry.
    """
    json_path = Path(os.path.abspath(os.fspath(json_path)))
    image_root = Path(os.path.abspath(os.fspath(image_root)))
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: split file not found")
    if check_files and not image_root.is_dir():
        raise FileNotFoundError(f"{image_root}: image root is not a folder")
    try:
        content = json.loads(json_path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(content, Mapping) or not content:
        raise ValueError(f"{json_path}: expected an object of splits like {{'train': [...], 'val': [...]}}")

    label_to_name: dict[int, tuple[str, str]] = {}
    name_to_label: dict[str, tuple[int, str]] = {}
    parsed: dict[str, tuple[list[str], list[int]]] = {}
    for split, items in content.items():
        if not isinstance(items, list):
            raise ValueError(f"{json_path}: split {split!r} must be a list of [impath, label, classname]")
        paths: list[str] = []
        labels: list[int] = []
        for i, item in enumerate(items):
            where = f"{json_path}, split {split!r}, entry {i}"
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise ValueError(f"{where}: expected [impath, label, classname], got {item!r}")
            impath, label, classname = item
            if not isinstance(impath, str) or not isinstance(classname, str):
                raise ValueError(f"{where}: impath and classname must be strings, got {item!r}")
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise ValueError(f"{where}: label must be a non-negative integer, got {label!r}")
            if label in label_to_name and label_to_name[label][0] != classname:
                name, first = label_to_name[label]
                raise ValueError(
                    f"{where}: label {label} is class {classname!r} here but {name!r} at {first}"
                )
            if classname in name_to_label and name_to_label[classname][0] != label:
                other, first = name_to_label[classname]
                raise ValueError(
                    f"{where}: class {classname!r} has label {label} here but {other} at {first}"
                )
            label_to_name.setdefault(label, (classname, where))
            name_to_label.setdefault(classname, (label, where))
            paths.append(resolve_path(impath, image_root, where, check_files))
            labels.append(label)
        parsed[canonical_split(str(split))] = (paths, labels)

    if not label_to_name:
        raise ValueError(f"{json_path}: the split file lists no images")
    missing = sorted(set(range(max(label_to_name) + 1)) - set(label_to_name))
    if missing:
        raise ValueError(
            f"{json_path}: labels must cover 0..{max(label_to_name)} without gaps; "
            f"ids {missing[:10]} never appear"
        )
    class_names = [label_to_name[i][0] for i in range(len(label_to_name))]
    return {
        split: LabelledImages(paths=p, labels=lab, class_names=list(class_names), split=split)
        for split, (p, lab) in parsed.items()
    }
