"""Manifests: a CSV or JSONL file naming each image's path, label, and optionally box and split."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from focusshot.data.labelled import Box, LabelledImages, check_box
from focusshot.data.splitting import canonical_split

__all__ = ["from_manifest", "resolve_path"]

_BOX_COLUMNS: tuple[str, str, str, str] = ("x0", "y0", "x1", "y1")


@dataclass
class _Row:
    where: str
    path: str
    label: str | int
    box: Box | None
    split: str | None


def resolve_path(path: str, base: Path, where: str, check_files: bool) -> str:
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

    Args:
        path: the ``.csv`` or ``.jsonl`` manifest.
        class_names: the class list to use, in label order; ``None`` (the default) derives it from
            the labels as described above.
        check_files: check that every image file exists (default ``True``); ``False`` reads the
            manifest alone, for images that will appear later or live elsewhere.

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
    paths = [resolve_path(r.path, base, r.where, check_files) for r in rows]
    labels, names = _assign_labels(rows, class_names, path)
    boxes = [r.box for r in rows]
    has_boxes = any(b is not None for b in boxes)

    if rows[0].split is None:
        return LabelledImages(paths, labels, names, boxes if has_boxes else None, None)
    out: dict[str, LabelledImages] = {}
    order: list[str] = []
    grouped: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        key = canonical_split(str(row.split))
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
