"""Where labelled images come from: one entry point, :func:`open_source`, over the readers.

Every reader returns :class:`LabelledImages` (or a ``dict`` of them keyed by split name) holding
plain paths, integer labels and one class list. Nothing here opens an image or knows of a model;
decoding and transforms live elsewhere in :mod:`focusshot.data`. The readers, one job a file:
class folders (:mod:`focusshot.data.folders`), CSV/JSONL manifests
(:mod:`focusshot.data.manifests`), CoOp split files (:mod:`focusshot.data.coop_splits`), and
FocusWorld ``world:`` specs (:mod:`focusshot.data.world.spec`); split names and the per-class
train/val/test cut are in :mod:`focusshot.data.splitting`.
"""

from __future__ import annotations

import os
from pathlib import Path

from focusshot.data.coop_splits import from_coop_split
from focusshot.data.extensions import IMAGE_EXTENSIONS
from focusshot.data.folders import from_folder
from focusshot.data.labelled import Box, LabelledImages
from focusshot.data.manifests import from_manifest
from focusshot.data.splitting import WORLD_SPLIT_FRACTIONS, _split_counts, split_per_class

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

_split_counts = _split_counts  # re-exported for the split tests


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

    Args:
        spec: a folder, a manifest or CoOp split file, or a ``world:`` spec (string), as above.
        image_root: for a CoOp split file: the folder its image paths are relative to (default:
            the JSON's folder). Given with a folder or a manifest it is an error; a ``world:``
            spec ignores it.
        check_files: for manifests and CoOp split files: check that every image file exists
            (default ``True``). Class folders and ``world:`` specs list only files that exist.

    Raises:
        FileNotFoundError: ``spec`` does not exist.
        ValueError: ``spec`` is a file of another kind; the message lists the kinds understood. A
            ``world:`` spec with an unknown option or a bad value; the message names the spec.
    """
    if isinstance(spec, str) and spec.startswith("world:"):
        from focusshot.data.world.spec import open_world_source

        return open_world_source(spec)
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
