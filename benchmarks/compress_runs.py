"""Store the run folders under benchmarks/results compressed: every ``results.jsonl`` becomes
``results.jsonl.gz``, which the table scripts, ``benchmarks/pair_runs.py`` and ``focusshot
report`` read (:func:`focusshot.evaluation.results.read_results`). A rerun into such a folder
resumes as before: ``focusshot evaluate`` decompresses the log into ``results.jsonl`` and appends
to it; run this script again before committing.

    python benchmarks/compress_runs.py                    # every run folder under benchmarks/results
    python benchmarks/compress_runs.py benchmarks/results/dino/world-dino_clutter_5w5s
    python benchmarks/compress_runs.py --check            # list plain logs; exit 1 if there are any
    gunzip -k RUN/results.jsonl.gz                        # a plain copy (the plain file wins if both exist)

The gzip stream is deterministic (no file name, mtime 0, level 9), so compressing equal rows gives
equal bytes and an unchanged log shows no change in git. A folder that a run holds (its
``.focusshot.lock`` is taken) or that has unmerged ``shards/`` is left alone.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

from focusshot.evaluation.results import COMPRESSED, RESULTS
from focusshot.locking import LOCK_NAME, OutputBusy, hold

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def gzip_bytes(data: bytes) -> bytes:
    """``data`` as a reproducible gzip stream (no name, mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def plain_logs(roots: list[Path]) -> list[Path]:
    """Every plain ``results.jsonl`` under ``roots`` (a root may be a run folder itself)."""
    found: set[Path] = set()
    for root in roots:
        found.update(p for p in root.rglob(RESULTS) if p.is_file())
    return sorted(found)


def compress(plain: Path) -> tuple[int, int] | str:
    """Replace ``plain`` by its gzip beside it; (bytes before, bytes after), or why it was skipped."""
    folder = plain.parent
    if (folder / "shards").is_dir() and any((folder / "shards").glob("rank*.jsonl")):
        return "unmerged shards/: the run has not finished"
    try:
        with hold(folder / LOCK_NAME, f"run folder {folder}"):
            data = plain.read_bytes()
            packed = gzip_bytes(data)
            if gzip.decompress(packed) != data:  # pragma: no cover - gzip is lossless
                return "the compressed copy does not read back equal"
            target = folder / COMPRESSED
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(packed)
            tmp.replace(target)
            plain.unlink()
    except OutputBusy as exc:
        return str(exc)
    return len(data), len(packed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, help="run folders or folders above them")
    ap.add_argument("--check", action="store_true", help="only list plain logs; exit 1 if any")
    args = ap.parse_args(argv)
    logs = plain_logs(args.folders or [RESULTS_DIR])
    if args.check:
        for p in logs:
            print(f"{p}: not compressed (python benchmarks/compress_runs.py {p.parent})")
        return 1 if logs else 0
    before = after = 0
    for p in logs:
        res = compress(p)
        if isinstance(res, str):
            print(f"skipped {p}: {res}", file=sys.stderr)
            continue
        before, after = before + res[0], after + res[1]
        print(f"{p.parent}/{COMPRESSED}: {res[0]:,} -> {res[1]:,} bytes")
    print(f"{len(logs)} logs: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
