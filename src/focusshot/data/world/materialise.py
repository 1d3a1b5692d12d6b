"""Materialised FocusWorld suites: folders of PNG images, a ``<image>.mask.npy`` target mask beside
each image and a ``manifest.jsonl`` (:func:`build_world`), opened by spec through a cache
(:func:`open_world`, ``world:<suite>?size=..&per_class=..&seed=..``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from focusshot.data.labelled import LabelledImages
from focusshot.data.world.draw import render_scene_full
from focusshot.data.world.suites import SuiteConfig, resolve_suite, sample_scene, scene_seed, suite_classes

#: Bumped whenever a change to this package changes generated pixels, captions or splits; part of
#: the settings a materialised suite is checked against, so stale caches are rebuilt.
GENERATOR_VERSION = 1

_MANIFEST = "manifest.jsonl"
_SETTINGS = "world.json"
_MASK_SUFFIX = ".mask.npy"
_MARKER = ".focusshot-world"  # marks a folder whose images/ a build may replace


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def mask_for(path: str | os.PathLike[str]) -> np.ndarray:
    """The target mask ``(H, W)`` bool of a generated image (stored beside it as ``<stem>.mask.npy``)."""
    p = Path(os.fspath(path))
    mpath = p.with_name(p.stem + _MASK_SUFFIX)
    if not mpath.is_file():
        raise FileNotFoundError(f"{p}: no target mask {mpath.name} beside it (not a FocusWorld image?)")
    return np.load(mpath, allow_pickle=False).astype(bool, copy=False)


def _settings(suite: SuiteConfig, image_size: int, per_class: int, seed: int) -> dict[str, Any]:
    return {
        "suite": f"world:{suite.name}",
        "image_size": int(image_size),
        "per_class": int(per_class),
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
        "suite_config": asdict(suite),
    }


def _read_built(root: Path, settings: Mapping[str, Any]) -> LabelledImages | None:
    """The materialised suite in ``root`` when it is complete and built with ``settings``."""
    spath, mpath = root / _SETTINGS, root / _MANIFEST
    if not (spath.is_file() and mpath.is_file()):
        return None
    try:
        stored = json.loads(spath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("settings") != json.loads(json.dumps(settings)):
        return None
    pool = suite_classes(str(settings["suite"]))
    names = [c.name for c in pool]
    index = {n: i for i, n in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    boxes: list[tuple[float, float, float, float] | None] = []
    with open(mpath, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            full = root / row["path"]
            if row["label"] not in index or not full.is_file():
                return None
            paths.append(str(full))
            labels.append(index[row["label"]])
            boxes.append(tuple(float(v) for v in row["box"]))  # type: ignore[arg-type]  # a box is 4 floats
    if len(paths) != stored.get("count"):
        return None
    return LabelledImages(paths=paths, labels=labels, class_names=names, boxes=boxes, split=None)


def build_world(
    suite: str,
    root: str | os.PathLike[str],
    image_size: int = 64,
    per_class: int = 30,
    seed: int = 0,
) -> LabelledImages:
    """Materialise ``suite`` into the folder ``root`` and return it as :class:`LabelledImages`.

    Writes ``root/images/<class_name>/<index>.png``, the target mask beside each image as
    ``<index>.mask.npy`` (``(S, S)`` bool; read it with :func:`mask_for`), ``root/manifest.jsonl``
    (one JSON object per image: ``path`` relative to ``root``, ``label`` (the class name),
    ``class_id``, ``box`` of the target, ``caption``, ``distractors`` (class id, name and box of
    each), ``mask``, ``scene`` (the :class:`SceneSpec` as a dict)) and ``root/world.json`` (the
    settings, written last) and a marker file ``.focusshot-world``. A folder already holding a
    complete build with the same settings is reused as it is; a build with other settings (or an
    interrupted one) is replaced.

    The returned set's ``class_names`` are the suite's class names in id order
    (:func:`suite_classes`), ``labels`` index them, and ``boxes`` are the target boxes.

    Args:
        suite: the suite's name, ``"world:clutter"`` or ``"clutter"`` (:data:`SUITES`).
        root: the folder to build in (created if needed); concurrent builds of one folder wait for
            each other on a lock file in it.
        image_size: the side of the square images in pixels, at least 16 (default 64).
        per_class: images per class, at least 1 (default 30).
        seed: the data seed, at least 0 (default 0). Scene ``i`` of a class is drawn from the
            seed, the suite, the class and ``i`` alone, so with the same seed and size a smaller
            ``per_class`` gives the first images of a larger one.

    Raises:
        FileExistsError: ``root`` has an ``images`` folder that this function did not make.
        ValueError: an unknown suite, or a ``per_class``, ``seed`` or ``image_size`` out of range.
    """
    cfg = resolve_suite(suite)
    if isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be an integer of at least 16, got {image_size!r}")
    root = Path(os.path.abspath(os.fspath(root)))
    settings = _settings(cfg, int(image_size), int(per_class), int(seed))
    found = _read_built(root, settings)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):  # processes (ranks of one job) asking for one suite: one builds it
        found = _read_built(root, settings)
        if found is not None:
            return found
        return _build(cfg, root, settings, int(image_size), int(per_class), int(seed))


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``root/.lock`` (POSIX; held until the block ends)."""
    import fcntl

    with open(root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    cfg: SuiteConfig, root: Path, settings: dict[str, Any], image_size: int, per_class: int, seed: int
) -> LabelledImages:
    """Write the suite into ``root`` (the caller holds the build lock)."""
    images_dir = root / "images"
    marker = root / _MARKER
    if images_dir.exists() and not marker.is_file():
        raise FileExistsError(
            f"{root}: holds an 'images' folder that no FocusWorld build made; "
            "choose an empty or FocusWorld-only folder"
        )
    marker.touch()
    (root / _SETTINGS).unlink(missing_ok=True)  # incomplete until the settings are written again
    (root / _MANIFEST).unlink(missing_ok=True)
    if images_dir.is_dir():
        shutil.rmtree(images_dir)
    pool = suite_classes(cfg)
    width = max(3, len(str(per_class - 1)))
    rows: list[str] = []
    for cls in pool:
        folder = images_dir / _slug(cls.name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(int(per_class)):
            spec = sample_scene(scene_seed(seed, cfg, cls.id, i), pool, int(image_size), cfg, target=cls)
            out = render_scene_full(spec)
            stem = f"{i:0{width}d}"
            Image.fromarray(out.image, "RGB").save(folder / f"{stem}.png", compress_level=1)
            np.save(folder / f"{stem}{_MASK_SUFFIX}", out.target_mask, allow_pickle=False)
            rel = f"images/{_slug(cls.name)}/{stem}"
            distractors = [
                {"class_id": o.class_id, "name": o.world_class.name, "box": list(out.boxes[j])}
                for j, o in enumerate(spec.objects)
                if j != spec.target_index
            ]
            row = {
                "path": f"{rel}.png",
                "label": cls.name,
                "class_id": cls.id,
                "box": list(out.boxes[spec.target_index]),
                "caption": spec.caption,
                "distractors": distractors,
                "mask": f"{rel}{_MASK_SUFFIX}",
                "scene": spec.to_dict(),
            }
            rows.append(json.dumps(row, separators=(",", ":")))
    tmp = root / (_MANIFEST + ".tmp")
    tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    os.replace(tmp, root / _MANIFEST)
    stmp = root / (_SETTINGS + ".tmp")
    stmp.write_text(json.dumps({"settings": settings, "count": len(rows)}, indent=2) + "\n", encoding="utf-8")
    os.replace(stmp, root / _SETTINGS)
    found = _read_built(root, settings)
    if found is None:  # pragma: no cover - would mean a bug in the writer above
        raise RuntimeError(f"{root}: the suite just built could not be read back")
    return found


# --------------------------------------------------------------------------------------------
# specs and the cache


_OPTION_ALIASES: dict[str, str] = {"size": "image_size", "image_size": "image_size"}
#: The options of a ``world:<suite>?...`` spec that :func:`parse_world_spec` understands.
SPEC_OPTIONS: tuple[str, ...] = ("size", "image_size", "per_class", "seed")


def parse_world_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``"world:clutter?size=64&per_class=30&seed=0"`` -> ``("world:clutter", {"image_size": 64,
    "per_class": 30, "seed": 0})`` (defaults filled in). Unknown suites or options raise
    ``ValueError`` naming the valid ones."""
    if not isinstance(spec, str) or not spec.startswith("world:"):
        raise ValueError(f"a FocusWorld spec starts with 'world:', got {spec!r}")
    name, _, query = spec.partition("?")
    cfg = resolve_suite(name)
    options = {"image_size": 64, "per_class": 30, "seed": 0}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in SPEC_OPTIONS:
            raise ValueError(f"{spec}: unknown option {key!r}; valid options: {', '.join(SPEC_OPTIONS)}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{spec}: option {key!r} needs an integer, got {value!r}") from None
        options[_OPTION_ALIASES.get(key, key)] = number
    return f"world:{cfg.name}", options


def world_cache_root() -> Path:
    """``$FOCUSSHOT_CACHE/world`` when the variable is set, else ``~/.cache/focusshot/world``."""
    env = os.environ.get("FOCUSSHOT_CACHE")
    base = Path(env).expanduser() if env else Path("~/.cache/focusshot").expanduser()
    return base / "world"


def open_world(spec: str, cache_root: str | os.PathLike[str] | None = None) -> LabelledImages:
    """Open a FocusWorld suite by spec, building it into the cache on first use.

    ``spec`` is ``world:<suite>`` with optional options ``?size=64&per_class=30&seed=0``. The suite
    lives in ``<cache_root>/<suite>-s<size>-n<per_class>-seed<seed>`` (default cache root:
    :func:`world_cache_root`).

    Args:
        spec: ``world:<suite>``, optionally followed by ``?size=..&per_class=..&seed=..``
            (:func:`build_world`'s ``image_size``, ``per_class`` and ``seed``; defaults 64, 30 and
            0). The ``split`` and ``box`` options belong to
            :func:`~focusshot.data.sources.open_source`, not here.
        cache_root: the folder that holds the built suites; ``None`` (the default) means
            :func:`world_cache_root`.

    Raises:
        ValueError: an unknown suite or option, or an option value that is not an integer or is
            out of :func:`build_world`'s range.
    """
    suite, opts = parse_world_spec(spec)
    root = Path(os.fspath(cache_root)).expanduser() if cache_root is not None else world_cache_root()
    folder = root / f"{suite[len('world:') :]}-s{opts['image_size']}-n{opts['per_class']}-seed{opts['seed']}"
    return build_world(
        suite, folder, image_size=opts["image_size"], per_class=opts["per_class"], seed=opts["seed"]
    )


def with_distractor_boxes(data: LabelledImages) -> LabelledImages:
    """The same images of a materialised suite with each one's first distractor's box instead of the
    target's (``None`` where a scene has no distractor); the target masks stay the target's. For
    controls such as FALIP with the wrong region."""
    if not data.paths:
        return data
    root = Path(data.paths[0]).parents[2]
    by_path: dict[str, tuple[float, float, float, float] | None] = {}
    for line in (root / _MANIFEST).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            first = (row.get("distractors") or [None])[0]
            box = None
            if first is not None:
                x0, y0, x1, y1 = (float(v) for v in first["box"])
                box = (x0, y0, x1, y1)
            by_path[str(root / row["path"])] = box
    return dataclasses.replace(data, boxes=[by_path[p] for p in data.paths])
