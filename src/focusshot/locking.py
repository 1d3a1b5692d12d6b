"""One writer per output: an advisory lock (``fcntl.flock``) held for the whole of a run.

``focusshot evaluate --output DIR`` holds ``DIR/.focusshot.lock``; ``focusshot fit --output
FILE`` holds ``FILE.lock``. A second process that asks for a held lock is refused at once with
:class:`OutputBusy`, which names the holder (pid, host, start time, command). The kernel releases
a ``flock`` when its process dies, however it dies, so a lock left by a killed run is simply
taken over by the next one (which logs whose it was). The holder removes the lock file when it
finishes.

A ``flock`` binds processes on one host and, on Linux, across hosts on NFS (where the kernel
maps it to a POSIX lock); on file systems without lock support, two runs on two hosts are not
kept apart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "OutputBusy", "hold", "holder_of"]

log = logging.getLogger("focusshot")

#: the lock file inside a run folder
LOCK_NAME = ".focusshot.lock"


class OutputBusy(RuntimeError):
    """Another process holds the output's lock. ``holder`` is what it wrote there (may be empty)."""

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


def _read(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def holder_of(lock_path: str | os.PathLike[str]) -> dict[str, Any]:
    """What the last holder of ``lock_path`` wrote (pid, host, started, command); ``{}`` if none."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it has not yet written who it is)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (
        f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"
        f" ({' '.join(holder.get('command', []))})"
    )


@contextmanager
def hold(lock_path: str | os.PathLike[str], what: str) -> Iterator[dict[str, Any]]:
    """Hold the exclusive lock ``lock_path`` for the body; yields what the previous holder left
    (non-empty when it died holding it, as after a kill).

    Raises :class:`OutputBusy` at once, naming the holder, when another process holds it. ``what``
    names the guarded output in that message (``"run folder runs/x"``).
    """
    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise OutputBusy(
                f"{what} is in use by {_describe(holder)}: wait for it to finish, or write to another "
                f"output. If that process no longer exists (a run on another host that lost its "
                f"connection), remove {path} and rerun: the run resumes from what is already there.",
                holder,
            ) from None
        # a finishing holder removes the file: if ours is no longer the one at ``path``, retry
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _read(fd)
        if previous:
            log.warning("%s: took over the lock left by %s, which has ended", what, _describe(previous))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        yield previous
    finally:
        try:
            os.unlink(path)  # while still holding it: a waiting process then sees a new file
        except FileNotFoundError:
            pass
        os.close(fd)
