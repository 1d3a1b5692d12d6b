"""Class folders: ``root/<class>/<image>``, or ``root/<split>/<class>/<image>``."""

from __future__ import annotations

import os
from pathlib import Path

from focusshot.data.extensions import IMAGE_EXTENSIONS, is_image_name
from focusshot.data.labelled import LabelledImages
from focusshot.data.splitting import canonical_split

__all__ = ["from_folder"]

_FOLDER_SPLITS: frozenset[str] = frozenset({"train", "val", "validation", "valid", "test"})


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by relative path."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_name(f))
    return sorted(found, key=lambda p: Path(os.path.relpath(p, folder)).parts)


def _subfolders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _read_class_folders(root: Path, class_names: list[str] | None, split: str | None) -> LabelledImages:
    """Read one ``root/<class>/*`` tree. With ``class_names`` given, the folder set must equal it."""
    found = _subfolders(root)
    if not found:
        raise ValueError(f"{root}: no class sub-folders found (expected one sub-folder per class)")
    if class_names is None:
        class_names = found
    elif set(found) != set(class_names):
        missing = sorted(set(class_names) - set(found))
        extra = sorted(set(found) - set(class_names))
        raise ValueError(
            f"{root}: class folders differ from the train split's; missing {missing}, unexpected {extra}"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = _image_files(root / name)
        if not files:
            raise ValueError(
                f"{root / name}: class folder has no images (extensions {sorted(IMAGE_EXTENSIONS)})"
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    return LabelledImages(paths=paths, labels=labels, class_names=list(class_names), split=split)


def from_folder(root: str | os.PathLike[str]) -> LabelledImages | dict[str, LabelledImages]:
    """Read images laid out as one sub-folder per class.

    Two layouts are understood:

    * ``root/<class>/<image>``: returns one :class:`LabelledImages` with ``split=None``;
    * ``root/<split>/<class>/<image>`` where every sub-folder of ``root`` is a split name
      (``train``, ``val`` or ``validation``, ``test``) and ``train`` is among them: returns a
      ``dict`` of splits keyed ``"train"``, ``"val"``, ``"test"``. The class list comes from
      ``train`` and is shared; every other split must have exactly the same class folders.

    Classes are sorted by folder name and files by path, so the order (and every label) is the
    same on every machine. Images are found recursively inside a class folder by file extension
    (:data:`IMAGE_EXTENSIONS`, case-insensitive); hidden files and folders are skipped.

    Args:
        root: the folder holding the class folders (or the split folders); the paths returned are
            absolute.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders; a class folder without images; a split whose class folders
            differ from train's; both ``val`` and ``validation`` present. The message names the
            folder.
    """
    root = Path(os.path.abspath(os.fspath(root)))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    subs = _subfolders(root)
    is_split_layout = any(s.lower() == "train" for s in subs) and all(
        s.lower() in _FOLDER_SPLITS for s in subs
    )
    if not is_split_layout:
        return _read_class_folders(root, None, None)

    by_split: dict[str, str] = {}
    for sub in subs:
        key = canonical_split(sub.lower())
        if key in by_split:
            raise ValueError(
                f"{root}: both {by_split[key]!r} and {sub!r} are present; keep one validation folder"
            )
        by_split[key] = sub
    train = _read_class_folders(root / by_split["train"], None, "train")
    out: dict[str, LabelledImages] = {"train": train}
    for key in ("val", "test"):
        if key in by_split:
            out[key] = _read_class_folders(root / by_split[key], train.class_names, key)
    return out
