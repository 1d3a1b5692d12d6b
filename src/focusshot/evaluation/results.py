"""Resumable result logs and summaries.

One JSONL line per episode (or split run) is appended and flushed as soon as it is done; a
restarted run reads the log, skips what is there, and ends with the same summary as an
uninterrupted one. ``run.json`` beside the log holds the run's configuration, seed, versions and
backbone identity; a restart with a different configuration is refused rather than mixed in.

In a multi-process run (:mod:`focusshot.distributed`) each rank appends to its own shard,
``shards/rank<r>.jsonl``; every rank's view of what is done is ``results.jsonl`` plus every
shard, so a rerun with any number of ranks resumes, and :meth:`ResultLog.merge` (rank 0, at the
end) folds the shards into ``results.jsonl`` in a one-process run's order.

A finished run folder may store its log gzip-compressed, as ``results.jsonl.gz`` (the benchmark
folders do): :func:`read_results` reads either form, and a :class:`ResultLog` opened on such a
folder (a resumed run) decompresses it into ``results.jsonl`` first. Where both exist, the plain
file is the current one.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from focusshot.evaluation.metrics import mean_ci95, paired_difference

RESULTS = "results.jsonl"
COMPRESSED = RESULTS + ".gz"


def results_file(directory: str | os.PathLike[str]) -> Path | None:
    """The run folder's result log: ``results.jsonl``, else ``results.jsonl.gz``; ``None`` when
    the folder holds neither."""
    for name in (RESULTS, COMPRESSED):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def results_lines(directory: str | os.PathLike[str]) -> list[str]:
    """The non-empty lines of a run folder's ``results.jsonl`` or ``results.jsonl.gz``.

    Args:
        directory: a folder written by ``focusshot evaluate``.

    Raises:
        FileNotFoundError: the folder holds neither file.
    """
    path = results_file(directory)
    if path is None:
        raise FileNotFoundError(f"{directory}: no {RESULTS} or {COMPRESSED}")
    data = gzip.decompress(path.read_bytes()) if path.name == COMPRESSED else path.read_bytes()
    return [line for line in data.decode("utf-8").splitlines() if line.strip()]


def read_results(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a run folder's ``results.jsonl`` or ``results.jsonl.gz``, in file order.

    Args:
        directory: a folder written by ``focusshot evaluate``.

    Raises:
        FileNotFoundError: the folder holds neither file.
    """
    return [json.loads(line) for line in results_lines(directory)]


def _inflate(directory: Path) -> None:
    """Decompress ``results.jsonl.gz`` into ``results.jsonl`` (then remove it) so a resumed run
    appends to a plain log; nothing to do when the plain file exists or neither does. The ranks of
    a multi-process run may all call it at once: each writes its own temporary copy (equal bytes)."""
    plain, packed = directory / RESULTS, directory / COMPRESSED
    if plain.exists() or not packed.is_file():
        return
    try:
        data, mode = gzip.decompress(packed.read_bytes()), packed.stat().st_mode & 0o777
    except FileNotFoundError:  # another rank inflated it just now
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".results.", suffix=".jsonl.tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)  # the log's permissions, not mkstemp's 0600
    os.replace(tmp, plain)
    packed.unlink(missing_ok=True)


class ResultLog:
    """Append-only JSONL log of finished units of work, keyed by ``key_fields``.

    Args:
        directory: the run's output folder (created).
        run_info: the run's configuration; stored in ``run.json``. When ``run.json`` exists, its
            ``config`` must equal ``run_info["config"]`` or :class:`ValueError` names the fields
            that differ.
        key_fields: the fields that identify one unit (e.g. ``("method", "episode")``).
        key_defaults: values of key fields that rows written before the field existed lack.
        shard: this process's rank in a multi-process run: rows are appended to
            ``shards/rank<shard>.jsonl`` (``None``: to ``results.jsonl``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        run_info: dict[str, Any],
        key_fields: tuple[str, ...],
        key_defaults: dict[str, Any] | None = None,
        shard: int | None = None,
    ):
        self.key_defaults = dict(key_defaults or {})
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "results.jsonl"
        self.shard_dir = self.directory / "shards"
        self.target = self.path if shard is None else self.shard_dir / f"rank{shard}.jsonl"
        if shard is not None:
            self.shard_dir.mkdir(exist_ok=True)
        self.key_fields = key_fields
        info_path = self.directory / "run.json"
        if info_path.is_file():
            old = json.loads(info_path.read_text())
            if old.get("config") != run_info.get("config"):
                diff = sorted(
                    k
                    for k in set(old.get("config", {})) | set(run_info.get("config", {}))
                    if old.get("config", {}).get(k) != run_info.get("config", {}).get(k)
                )
                raise ValueError(
                    f"{self.directory} holds results of a different run (config differs in {diff}); "
                    "use another --output folder"
                )
        else:
            # ranks (maybe on other hosts, with equal pids) may write it at once: own temporary files
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".run.", suffix=".json.tmp")
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(run_info, indent=2, default=str) + "\n")
            os.replace(tmp, info_path)
        _inflate(self.directory)
        self.rows: list[dict[str, Any]] = []
        self.done: set[tuple] = set()
        self._counted: dict[Path, tuple[int, int]] = {}  # count_all: file -> (bytes read, lines)
        self._load()

    def _load(self) -> None:
        """Read ``results.jsonl`` and every shard into ``rows`` and ``done`` (first copy of a key wins)."""
        self.rows, self.done = [], set()
        for path in self._files():
            for row in self._read(path, repair=path == self.target):
                if self.key(row) not in self.done:  # a shard merged just before a kill repeats rows
                    self.rows.append(row)
                    self.done.add(self.key(row))

    def key(self, row: dict[str, Any]) -> tuple:
        return tuple(row[f] if f in row else self.key_defaults[f] for f in self.key_fields)

    def _files(self) -> list[Path]:
        """``results.jsonl`` then every rank's shard, in rank order."""
        shards = sorted(self.shard_dir.glob("rank*.jsonl"), key=lambda p: int(p.stem[4:] or 0))
        return [self.path, *shards]

    @staticmethod
    def _read(path: Path, repair: bool = True) -> list[dict[str, Any]]:
        """The whole lines of ``path``; with ``repair`` a line cut short by a killed run is removed
        from the file (only the file this process appends to: another rank may be writing its own)."""
        if not path.is_file():
            return []
        rows, good_bytes = [], 0
        with open(path, "rb") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                    good_bytes += len(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a killed run: drop it and everything after
        if repair and good_bytes != path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
        return rows

    def count_all(self) -> int:
        """Rows finished by every rank so far (for progress bars): whole lines in every file, each
        file read only past the point the last call reached."""
        counted = self._counted
        total = 0
        for path in self._files():
            offset, lines = counted.get(path, (0, 0))
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    new = f.read()
            except OSError:
                new = b""
            whole = new.rfind(b"\n") + 1  # a line still being written is counted next time
            counted[path] = (offset + whole, lines + new.count(b"\n", 0, whole))
            total += counted[path][1]
        return total

    def merge(self, order: list[tuple]) -> list[dict[str, Any]]:
        """Fold every shard into ``results.jsonl``, rows in ``order`` (the keys in the order a
        one-process run appends them; unknown keys last), then delete the shards; returns the rows.

        Call on one process after every rank finished. ``results.jsonl`` is replaced atomically
        before any shard is removed, so a kill at any point loses no row.
        """
        self._load()
        rank = {k: i for i, k in enumerate(order)}
        rows = sorted(self.rows, key=lambda r: rank.get(self.key(r), len(rank)))
        shards = self._files()[1:]
        if shards or rows != self.rows:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(_line(r) for r in rows)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            for p in shards:
                p.unlink()
            with contextlib.suppress(OSError):
                self.shard_dir.rmdir()
        self.rows = rows
        return rows

    def has(self, **key: Any) -> bool:
        return self.key(key) in self.done

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` as one line, flushed and synced before returning."""
        k = self.key(row)
        if k in self.done:
            raise ValueError(f"{k} is already in {self.path}")
        line = _line(row)
        with open(self.target, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        self.done.add(k)


def comparable_rows(directory: str | os.PathLike[str]) -> list[str]:
    """The lines of ``directory``'s ``results.jsonl`` without their ``seconds`` (the only field two
    runs of one config may write differently): equal lists mean equal results, in the same order
    (a one-process run against a merged multi-process run, a resumed run against an uninterrupted one)."""
    out = []
    for line in results_lines(directory):
        row = json.loads(line)
        row.pop("seconds", None)
        out.append(_line(row))
    return out


def _line(row: dict[str, Any]) -> str:
    """One result line: sorted keys, so equal rows are equal bytes."""
    return json.dumps(row, sort_keys=True, default=float) + "\n"


def summarise(rows: Iterable[dict[str, Any]], group: tuple[str, ...], metrics: tuple[str, ...], ci: bool):
    """Mean (and 95% CI half width, or std when ``ci`` is false) of ``metrics`` per ``group``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[g] for g in group), []).append(r)
    out = []
    for key in groups:  # first-appearance order: methods as the user listed them
        items = groups[key]
        row: dict[str, Any] = dict(zip(group, key, strict=True))
        row["n"] = len(items)
        for m in metrics:
            vals = np.array([it[m] for it in items if it.get(m) is not None], dtype=float)
            if not len(vals):
                continue
            if ci:
                mean, half = mean_ci95(vals)
                row[m], row[f"{m}_ci95"] = mean, half
            else:
                row[m] = float(vals.mean())
                row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def paired(rows: list[dict[str, Any]], methods: list[str], unit: str) -> list[dict[str, Any]]:
    """Paired accuracy differences of every method against the first, over shared ``unit`` values."""
    if len(methods) < 2:
        return []
    acc = {m: {r[unit]: r["accuracy"] for r in rows if r["method"] == m} for m in methods}
    base = methods[0]
    out = []
    for m in methods[1:]:
        shared = sorted(set(acc[m]) & set(acc[base]))
        if len(shared) < 2:
            continue
        res = paired_difference([acc[m][u] for u in shared], [acc[base][u] for u in shared])
        out.append(
            {
                "method": m,
                "baseline": base,
                "mean_difference": res.mean,
                "ci95": res.half_width,
                "method_better": res.a_better,
                "baseline_better": res.b_better,
                "ties": res.ties,
                "episodes": res.episodes,
                "significant": res.significant,
            }
        )
    return out


def paired_split(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Split protocol: every method against the first, per shot count (and test set: the own test
    split, then each distribution-shift test set), paired over test images.

    Each row carries ``correct``, one ``0``/``1`` per test image in test order; the differences
    of the shared split seeds are pooled, so the interval is over test images x seeds (it holds
    the test sample's variation; the spread over training seeds is the summary's ``_std``).
    """
    if len(methods) < 2:
        return []
    base, out = methods[0], []
    groups = sorted({(r["shots"], r.get("test", "test")) for r in rows}, key=lambda g: (g[1] != "test", g))
    for k, test in groups:
        sub = [r for r in rows if r["shots"] == k and r.get("test", "test") == test and "correct" in r]
        by = {m: {r["split_seed"]: r["correct"] for r in sub if r["method"] == m} for m in methods}
        for m in methods[1:]:
            seeds = sorted(set(by[m]) & set(by[base]))
            if not seeds:
                continue
            a = [int(c) for s in seeds for c in by[m][s]]
            b = [int(c) for s in seeds for c in by[base][s]]
            res = paired_difference(a, b)
            out.append(
                {
                    "method": m,
                    "baseline": base,
                    "shots": k,
                    **({"test": test} if any("test" in r for r in rows) else {}),
                    "mean_difference": res.mean,
                    "ci95": res.half_width,
                    "method_only": res.a_better,
                    "baseline_only": res.b_better,
                    "seeds": len(seeds),
                    "images": res.episodes,
                    "significant": res.significant,
                }
            )
    return out


def write_tables(directory: Path, summary: list[dict[str, Any]], name: str = "summary") -> tuple[Path, Path]:
    """Write ``summary`` rows as ``<name>.csv`` and ``<name>.md`` in ``directory``."""
    cols: list[str] = []
    for r in summary:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in summary:
        writer.writerow(r)
    csv_path = directory / f"{name}.csv"
    csv_path.write_text(buf.getvalue())
    md_path = directory / f"{name}.md"
    md_path.write_text(markdown_table(summary, cols))
    return csv_path, md_path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A GitHub markdown table of ``rows`` over ``cols``."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"
