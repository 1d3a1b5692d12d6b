"""Where labelled images come from: class folders, CSV/JSONL manifests and CoOp split files.

Every reader returns :class:`LabelledImages` (or a ``dict`` of them keyed by split name) holding
plain paths, integer labels and one class list. Nothing here opens an image or knows of a model;
decoding and transforms live elsewhere in :mod:`focusshot.data`.

Split names are canonical across readers: ``"train"``, ``"val"`` and ``"test"``. A folder or
manifest split called ``"validation"`` (or ``"valid"``) is returned under ``"val"``, the name
CoOp split files use.

A FocusWorld suite (``world:<suite>``, see :func:`open_source`) is one unsplit set unless its spec
has the ``split`` option, which cuts every class of the materialised suite into train, val and
test (:func:`split_per_class`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from focusshot.data.labelled import Box, LabelledImages, check_box

__all__ = [
    "IMAGE_EXTENSIONS",
    "WORLD_SPLIT_FRACTIONS",
    "Box",
    "LabelledImages",
    "from_coop_split",
    "from_folder",
    "from_manifest",
    "open_source",
    "split_per_class",
]

#: File name endings (lower case) that the folder reader treats as images.
#: (The same set as :data:`focusshot.data.images.IMAGE_EXTENSIONS`, kept here so that reading a
#: source never depends on the image-decoding module.)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"}
)

_SPLIT_ALIASES: dict[str, str] = {"validation": "val", "valid": "val"}
_FOLDER_SPLITS: frozenset[str] = frozenset({"train", "val", "validation", "valid", "test"})
_BOX_COLUMNS: tuple[str, str, str, str] = ("x0", "y0", "x1", "y1")


def _canonical_split(name: str) -> str:
    name = name.strip()
    return _SPLIT_ALIASES.get(name.lower(), name)


# --------------------------------------------------------------------------------------------
# helpers


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by relative path."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
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


# --------------------------------------------------------------------------------------------
# class folders


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
        key = _canonical_split(sub.lower())
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


# --------------------------------------------------------------------------------------------
# manifests


@dataclass
class _Row:
    where: str
    path: str
    label: str | int
    box: Box | None
    split: str | None


def _resolve(path: str, base: Path, where: str, check_files: bool) -> str:
    if not path:
        raise ValueError(f"{where}: empty path")
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        p = base / p
    full = os.path.normpath(str(p))
    if check_files and not os.path.isfile(full):
        raise FileNotFoundError(f"{where}: image file not found: {full}")
    return full


def _read_csv_rows(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        if "path" not in columns or "label" not in columns:
            raise ValueError(
                f"{path}: the header must name the columns 'path' and 'label' "
                f"(optional: x0, y0, x1, y1, split); found {columns}"
            )
        box_cols = [c for c in _BOX_COLUMNS if c in columns]
        if box_cols and len(box_cols) != 4:
            raise ValueError(f"{path}: box columns must be all of x0, y0, x1, y1; found only {box_cols}")
        has_split = "split" in columns
        for record in reader:
            where = f"{path}, line {reader.line_num}"
            if None in record:
                raise ValueError(f"{where}: more fields than header columns")
            values = {k: (v or "").strip() for k, v in record.items()}
            if not any(values.values()):
                continue
            box: Box | None = None
            if box_cols:
                raw = [values[c] for c in _BOX_COLUMNS]
                if any(raw):
                    if not all(raw):
                        raise ValueError(f"{where}: fill all of x0, y0, x1, y1 or none of them, got {raw}")
                    box = check_box(raw, where)
            split = values["split"] if has_split else None
            if has_split and not split:
                raise ValueError(f"{where}: empty 'split'")
            rows.append(_Row(where, values["path"], values["label"], box, split))
    return rows


def _read_jsonl_rows(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    split_seen: bool | None = None
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for key in ("path", "label"):
                if key not in record:
                    raise ValueError(f"{where}: missing field {key!r}")
            if not isinstance(record["path"], str):
                raise ValueError(f"{where}: 'path' must be a string, got {record['path']!r}")
            label = record["label"]
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise ValueError(f"{where}: 'label' must be a class name or an integer, got {label!r}")
            raw_box = record.get("box")
            box = None if raw_box is None else check_box(raw_box, where)
            split = record.get("split")
            if split_seen is None:
                split_seen = split is not None
            if (split is not None) != split_seen:
                raise ValueError(f"{where}: give 'split' on every line or on none")
            if split is not None and (not isinstance(split, str) or not split.strip()):
                raise ValueError(f"{where}: 'split' must be a non-empty string, got {split!r}")
            rows.append(_Row(where, record["path"], label, box, split))
    return rows


def _as_int_label(label: str | int) -> int | None:
    if isinstance(label, int):
        return label
    text = label.strip()
    if text.isdigit():
        return int(text)
    return None


def _assign_labels(
    rows: list[_Row], class_names: Sequence[str] | None, source: Path
) -> tuple[list[int], list[str]]:
    """Map manifest labels to class ids; see :func:`from_manifest` for the rules."""
    ints = [_as_int_label(r.label) for r in rows]
    if class_names is not None:
        names = [str(c) for c in class_names]
        index = {n: i for i, n in enumerate(names)}
        out: list[int] = []
        for row, as_int in zip(rows, ints, strict=True):
            if isinstance(row.label, str) and row.label in index:
                out.append(index[row.label])
            elif as_int is not None and 0 <= as_int < len(names):
                out.append(as_int)
            else:
                raise ValueError(
                    f"{row.where}: label {row.label!r} is neither a class name "
                    f"nor an id in 0..{len(names) - 1}"
                )
        return out, names
    if rows and all(v is not None for v in ints):
        ids = [int(v) for v in ints if v is not None]
        negative = [r for r, v in zip(rows, ids, strict=True) if v < 0]
        if negative:
            raise ValueError(f"{negative[0].where}: negative label {negative[0].label!r}")
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        if missing:
            raise ValueError(
                f"{source}: integer labels must cover 0..{max(ids)} without gaps; ids {missing[:10]} never "
                "appear (pass class_names=... to name the classes)"
            )
        return ids, [str(i) for i in range(max(ids) + 1)]
    mixed = [r for r, v in zip(rows, ints, strict=True) if isinstance(r.label, int)]
    if mixed:
        raise ValueError(f"{mixed[0].where}: integer label {mixed[0].label!r} among class-name labels")
    names = sorted({str(r.label).strip() for r in rows})
    if "" in names:
        bad = next(r for r in rows if not str(r.label).strip())
        raise ValueError(f"{bad.where}: empty label")
    index = {n: i for i, n in enumerate(names)}
    return [index[str(r.label).strip()] for r in rows], names


def from_manifest(
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    check_files: bool = True,
) -> LabelledImages | dict[str, LabelledImages]:
    """Read a CSV or JSONL manifest of labelled images.

    CSV (``.csv``) has a header row naming the columns ``path,label`` and optionally
    ``x0,y0,x1,y1`` (a box; all four or none per row) and ``split``; other columns are ignored.
    JSONL (``.jsonl``) has one object per line: ``{"path": ..., "label": ..., "box": [x0, y0, x1,
    y1], "split": ...}`` with ``box`` and ``split`` optional. Blank lines are skipped.

    Relative paths are resolved against the manifest's folder. Labels are class names; the class
    list is their sorted set, unless every label is an integer (``3`` or ``"3"``), in which case the
    ids are kept as they are (they must cover ``0..C-1``) and the classes are named ``"0"``, ``"1"``,
    .... Pass ``class_names`` to fix the class list: each label must then be one of those names or
    an id into it.

    Returns:
        one :class:`LabelledImages` when there is no ``split`` column/field, else a dict of them
        keyed by split (``validation`` becomes ``val``), all sharing one class list.

    Raises:
        FileNotFoundError: the manifest, or (with ``check_files``) an image, does not exist.
        ValueError: a malformed row or a label that does not match the classes; the message names
            the file and line.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv_rows(path)
    elif suffix == ".jsonl":
        rows = _read_jsonl_rows(path)
    else:
        raise ValueError(f"{path}: a manifest must end in .csv or .jsonl")
    if not rows:
        raise ValueError(f"{path}: manifest has no rows")
    base = path.parent
    paths = [_resolve(r.path, base, r.where, check_files) for r in rows]
    labels, names = _assign_labels(rows, class_names, path)
    boxes = [r.box for r in rows]
    has_boxes = any(b is not None for b in boxes)

    if rows[0].split is None:
        return LabelledImages(paths, labels, names, boxes if has_boxes else None, None)
    out: dict[str, LabelledImages] = {}
    order: list[str] = []
    grouped: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        key = _canonical_split(str(row.split))
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        grouped[key].append(i)
    for key in order:
        idx = grouped[key]
        out[key] = LabelledImages(
            paths=[paths[i] for i in idx],
            labels=[labels[i] for i in idx],
            class_names=list(names),
            boxes=[boxes[i] for i in idx] if has_boxes else None,
            split=key,
        )
    return out


# --------------------------------------------------------------------------------------------
# CoOp split files


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
            paths.append(_resolve(impath, image_root, where, check_files))
            labels.append(label)
        parsed[_canonical_split(str(split))] = (paths, labels)

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


# --------------------------------------------------------------------------------------------
# splitting an unsplit set per class (FocusWorld suites)

#: The train/val/test fractions of each class that ``world:<suite>?split=1`` uses.
WORLD_SPLIT_FRACTIONS: tuple[float, float, float] = (0.5, 0.2, 0.3)

_SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
_SPLIT_ON: frozenset[str] = frozenset({"1", "true", "yes", "on"})
_SPLIT_OFF: frozenset[str] = frozenset({"0", "false", "no", "off"})


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """``n`` images shared out by ``fractions`` with the largest-remainder rule (ties: earlier split)."""
    quotas = [f * n for f in fractions]
    counts = [math.floor(q + 1e-9) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-round(quotas[i] - counts[i], 9), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _min_class_size(fractions: Sequence[float]) -> int:
    """The smallest class size from which on every split gets at least one image."""
    n = max(len(fractions), math.ceil(1.0 / min(fractions) - 1e-9))  # every quota >= 1 from here on
    while n > 1 and min(_split_counts(n - 1, fractions)) >= 1:
        n -= 1
    return n


def _check_fractions(fractions: Sequence[float], where: str) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"{where}: give three split fractions (train, val, test), got {list(fractions)}")
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: split fractions must be numbers, got {list(fractions)}") from None
    if not all(math.isfinite(f) and f > 0 for f in values):
        raise ValueError(
            f"{where}: split fractions must be positive (every class needs images in train, val and "
            f"test), got {list(values)}"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"{where}: split fractions must sum to 1, got {list(values)} (sum {sum(values):g})")
    return values[0], values[1], values[2]


def _too_few_message(where: str, class_name: str, n: int, fractions: Sequence[float]) -> str:
    shares = "/".join(f"{f:g}" for f in fractions)
    counts = "/".join(map(str, _split_counts(n, fractions)))
    return (
        f"{where}: class {class_name!r} has {n} images, too few for the train/val/test fractions {shares} "
        f"(they give {counts}); every class needs at least one image in each split, which takes "
        f"{_min_class_size(fractions)} or more per class"
    )


def split_per_class(
    data: LabelledImages,
    fractions: Sequence[float] = WORLD_SPLIT_FRACTIONS,
    *,
    where: str = "split",
) -> dict[str, LabelledImages]:
    """Cut an unsplit set into ``{"train", "val", "test"}``, class by class, in sample order.

    Each class's samples, in the order they appear in ``data`` (for a FocusWorld suite: scene
    index ``000, 001, ...``), are shared out by ``fractions`` (train, val, test; positive, summing
    to 1): the first go to train, the next to val, the rest to test. The counts follow the
    largest-remainder rule, so with 10 images and the default 0.5/0.2/0.3 a class gives 5/2/3. The
    cut is deterministic and draws no random numbers: FocusWorld scenes are independent random
    draws, so their index order is already a random order. Each split keeps the class list and the
    boxes, has ``split`` set to its name, and lists its samples class by class.

    Raises:
        ValueError: bad fractions, ``data`` is already a split, or a class has too few samples to
            give each split one; the message (prefixed with ``where``) names the class.
    """
    fr = _check_fractions(fractions, where)
    if data.split is not None:
        raise ValueError(f"{where}: the data is already the {data.split!r} split; split an unsplit set")
    parts: dict[str, list[int]] = {name: [] for name in _SPLIT_NAMES}
    for name, idx in zip(data.class_names, data.indices_by_class(), strict=True):
        counts = _split_counts(len(idx), fr)
        if min(counts) < 1:
            raise ValueError(_too_few_message(where, name, len(idx), fr))
        start = 0
        for split, count in zip(_SPLIT_NAMES, counts, strict=True):
            parts[split].extend(idx[start : start + count])
            start += count
    out: dict[str, LabelledImages] = {}
    for split, idx in parts.items():
        subset = data.subset(idx)
        subset.split = split
        out[split] = subset
    return out


def _parse_split_option(value: str, spec: str) -> tuple[float, float, float] | None:
    """The ``split`` option of a world spec: ``None`` (no split) or the train/val/test fractions."""
    text = value.strip().lower()
    if text in _SPLIT_ON:
        return WORLD_SPLIT_FRACTIONS
    if text in _SPLIT_OFF:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(parts) != 3 or not numbers:
        raise ValueError(
            f"{spec}: option 'split' takes 1 (train/val/test fractions "
            f"{'/'.join(f'{f:g}' for f in WORLD_SPLIT_FRACTIONS)} of each class), 0 (no split) or three "
            f"fractions train,val,test summing to 1 such as split=0.6,0.2,0.2; got {value!r}"
        )
    return _check_fractions(numbers, f"{spec}: option 'split'")


def _open_world_source(spec: str) -> LabelledImages | dict[str, LabelledImages]:
    """Open a ``world:`` spec: the suite itself, or with ``split`` its train/val/test splits."""
    from focusshot.data.world import (
        SPEC_OPTIONS,
        open_world,
        parse_world_spec,
        suite_classes,
        with_distractor_boxes,
    )

    name, _, query = spec.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(
            f"{spec}: malformed options {query!r}; write world:<suite>?key=value&key=value"
        ) from None
    valid = (*SPEC_OPTIONS, "split", "box")
    unknown = [key for key, _ in pairs if key not in valid]
    if unknown:
        raise ValueError(f"{spec}: unknown option {unknown[0]!r}; valid options: {', '.join(valid)}")
    split_values = [value for key, value in pairs if key == "split"]
    if len(split_values) > 1:
        raise ValueError(f"{spec}: option 'split' is given {len(split_values)} times; give it once")
    fractions = _parse_split_option(split_values[0], spec) if split_values else None
    box_values = [value for key, value in pairs if key == "box"]
    if len(box_values) > 1 or (box_values and box_values[0] not in ("target", "distractor")):
        raise ValueError(f"{spec}: option 'box' is target (default) or distractor, given once")
    rest = [(key, value) for key, value in pairs if key not in ("split", "box")]
    base = f"{name}?{urlencode(rest)}" if rest else name
    if fractions is not None:  # fail before generating a suite that cannot be split
        suite, options = parse_world_spec(base)
        per_class = options["per_class"]
        if per_class >= 1 and min(_split_counts(per_class, fractions)) < 1:
            raise ValueError(_too_few_message(spec, suite_classes(suite)[0].name, per_class, fractions))
    data = open_world(base)
    if box_values and box_values[0] == "distractor":
        data = with_distractor_boxes(data)
    if fractions is None:
        return data
    return split_per_class(data, fractions, where=spec)


# --------------------------------------------------------------------------------------------
# dispatch


def open_source(
    spec: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> LabelledImages | dict[str, LabelledImages]:
    """Open a data source by what ``spec`` points at.

    * a folder: :func:`from_folder`;
    * ``*.csv`` or ``*.jsonl``: :func:`from_manifest`;
    * ``*.json``: :func:`from_coop_split`, with images under ``image_root`` (default: the JSON's
      folder);
    * ``world:<suite>[?size=..&per_class=..&seed=..&split=..]``: a FocusWorld suite, generated
      into the cache on first use (:func:`focusshot.data.world.open_world`). Without ``split``
      (or with ``split=0``, ``no``, ``false``) it is one :class:`LabelledImages` with
      ``split=None``. With ``split=1`` (or ``yes``, ``true``) it is a dict ``{"train", "val",
      "test"}`` holding 0.5/0.2/0.3 of each class's images (:data:`WORLD_SPLIT_FRACTIONS`);
      ``split=0.6,0.2,0.2`` gives the fractions train, val, test (positive, summing to 1);
      ``box=distractor`` gives every image its first distractor's box instead of the target's. The
      splits are cut from the same suite files (the cache folder does not depend on ``split``),
      class by class in scene-index order, with no shuffling: scenes are independent random
      draws, so the cut is deterministic and needs no seed (:func:`split_per_class`). Every
      class must get at least one image in every split, otherwise a ``ValueError`` names the
      class and the ``per_class`` needed. For example ``world:clutter?per_class=30&split=1``
      gives 15/6/9 images per class.

    Raises:
        FileNotFoundError: ``spec`` does not exist.
        ValueError: ``spec`` is a file of another kind; the message lists the kinds understood. A
            ``world:`` spec with an unknown option or a bad value; the message names the spec.
    """
    if isinstance(spec, str) and spec.startswith("world:"):
        return _open_world_source(spec)
    path = Path(os.fspath(spec)).expanduser()
    if path.is_dir():
        if image_root is not None:
            raise ValueError(f"{path}: image_root applies only to CoOp split files (.json)")
        return from_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        if image_root is not None:
            raise ValueError(f"{path}: image_root applies only to CoOp split files (.json)")
        return from_manifest(path, check_files=check_files)
    if suffix == ".json":
        root = path.parent if image_root is None else Path(os.fspath(image_root))
        return from_coop_split(path, root, check_files=check_files)
    raise ValueError(
        f"{path}: cannot tell what kind of source this is; expected a folder of class folders, "
        "a .csv or .jsonl manifest, or a CoOp split .json"
    )
