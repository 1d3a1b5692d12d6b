"""Deadlines that long loops check: a time a caller sets, and the pace at which a loop would meet it.

A caller that must end by some time (``fit --method auto`` within its budget) wraps the work in
``with deadline(t):`` (``t`` on the :func:`now` clock, seconds of ``time.monotonic``). Every loop
that may run long calls :func:`check_deadline` once per step: the training loop
(:func:`focusshot.training.loop.train`) every optimiser step, and the iterative heads (the
logistic probe's C grid and Newton steps, the SVM and MetaOptNet dual solvers, LP++'s and
Tip-Adapter-F's epochs) in their own loops. It raises :class:`DeadlineExceeded` once ``t`` has
passed, or, when the loop says how far it is (``done`` of ``total`` steps since ``since``), as
soon as that pace says it would not end by ``t``. The caller, not the loop, decides what a stopped
run means.

Outside a ``with deadline(...)`` block :func:`check_deadline` returns at once without reading
the clock, so code that checks changes no result: no option, random draw or result field is
involved. The deadline is a context variable (per thread and per asyncio task).

A leaf module: it imports nothing from focusshot, so the heads (floor 2) and the training loop
(floor 3) read the same deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["PACE_STEPS", "DeadlineExceeded", "check_deadline", "deadline", "now"]


class DeadlineExceeded(RuntimeError):
    """A run was stopped by the deadline of an enclosing :func:`deadline`.

    Attributes:
        projected: ``False``: the deadline had passed; ``True``: it had not yet, but at the pace of
            the steps so far the run (and the ``repeats`` that must follow it) would end after it.
        where: the step it stopped at, as the loop named it (``"training at step 7 of 50"``,
            ``"the logistic probe at C 9 of 25"``); the message opens with it.
    """

    def __init__(self, message: str, *, projected: bool = False, where: str = "") -> None:
        super().__init__(message)
        self.projected = projected
        self.where = where


@dataclass(frozen=True)
class _Deadline:
    at: float
    repeats: int


#: the deadline of the enclosing ``with deadline(...)`` block, or None
_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "focusshot_deadline", default=None
)
#: steps timed (after the first, which pays for warm-up) before a run's pace is trusted
PACE_STEPS = 5


def now() -> float:
    """The clock deadlines are read on: ``time.monotonic()`` seconds."""
    return time.monotonic()


@contextlib.contextmanager
def deadline(at: float | None, *, repeats: int = 0) -> Iterator[None]:
    """Within the block, any loop calling :func:`check_deadline` (training, the iterative heads)
    raises :class:`DeadlineExceeded` once :func:`now` reaches ``at``, or earlier (``projected``)
    once its pace says it would not end by then: the seconds per step of the steps timed so far
    (:data:`PACE_STEPS` of them at least) times the steps left, plus ``repeats`` more runs of all
    its steps (a caller's folds still to come, which must end by ``at`` too).

    ``None`` adds no deadline; a nested deadline can only come earlier (the enclosing one still
    holds), and its ``repeats`` replace the enclosing one's. Per thread and per asyncio task (a
    context variable).
    """
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0, got {repeats!r}")
    outer = _DEADLINE.get()
    inner: _Deadline | None = outer
    if at is not None:
        inner = _Deadline(at if outer is None else min(at, outer.at), repeats)
    token = _DEADLINE.set(inner)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline(
    what: str = "training", *, done: int = 0, total: int = 0, since: float | None = None
) -> float | None:
    """Raise :class:`DeadlineExceeded` when the enclosing :func:`deadline` has passed, or when a run
    that has taken ``done`` steps of ``total`` since the time ``since`` would not end by it at that
    pace (with the deadline's ``repeats``). ``what`` opens the message (``"training at step 3 of
    50"``). Returns the time read, or ``None`` (no deadline: no clock read, nothing else done)."""
    d = _DEADLINE.get()
    if d is None:
        return None
    t = now()
    if t >= d.at:
        raise DeadlineExceeded(f"{what} stopped: its deadline passed {t - d.at:.2f} s ago", where=what)
    if since is not None and PACE_STEPS <= done < total:
        pace = (t - since) / done
        end = t + pace * (total - done) + d.repeats * pace * total
        if end > d.at:
            more = f" and {d.repeats} more run(s) of it" if d.repeats else ""
            raise DeadlineExceeded(
                f"{what} stopped: at {pace:.3g} s a step, its steps{more} would end "
                f"{end - d.at:.1f} s past its deadline",
                projected=True,
                where=what,
            )
    return t
