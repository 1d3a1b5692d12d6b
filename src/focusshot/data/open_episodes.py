"""Open-set episodes as plain data: an N-way K-shot episode plus images of U classes it does not know.

:class:`OpenEpisodeSampler` episode ``i`` is the closed-set episode ``i`` of an
:class:`~focusshot.data.episodes.EpisodeSampler` with the same settings and seed (same classes,
support and known queries), plus U further classes drawn from the remaining classes and their
unknown query images, drawn from a generator seeded by ``(episode seed, 1)`` alone. So every
method sees the same open-set episodes, and the closed-set accuracy on the known queries is the
one a closed-set run of the same seed measures.

By default the unknown queries number as many as the known ones (N * Q), spread over the U
unknown classes as evenly as they divide (the first classes take one more).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from focusshot.data.episodes import Episode, EpisodeSampler

__all__ = ["OpenEpisode", "OpenEpisodeSampler", "unknown_counts"]


def unknown_counts(total: int, ways: int) -> list[int]:
    """``total`` unknown queries over ``ways`` classes, as even as they divide (first ones larger)."""
    return [total // ways + (1 if j < total % ways else 0) for j in range(ways)]


@dataclass(frozen=True)
class OpenEpisode:
    """A closed-set :class:`~focusshot.data.episodes.Episode` and its unknown queries.

    Attributes:
        known: the N-way K-shot episode (support and known queries).
        unknown_classes: the U class ids none of the support shows.
        unknown: the unknown query indices, grouped by class in the order of ``unknown_classes``.
    """

    known: Episode
    unknown_classes: tuple[int, ...]
    unknown: tuple[int, ...]

    @property
    def index(self) -> int:
        return self.known.index

    @property
    def seed(self) -> int:
        return self.known.seed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            **self.known.to_dict(),
            "unknown_classes": list(self.unknown_classes),
            "unknown": list(self.unknown),
        }


class OpenEpisodeSampler(Sequence[OpenEpisode]):
    """Reproducible open-set episodes: N known ways with K shots and Q queries each, U unknown ways.

    Args:
        labels: class id of each sample of the set the episodes index into.
        ways, shots, queries, episodes, seed: as :class:`~focusshot.data.episodes.EpisodeSampler`.
        open_ways: U, the unknown classes per episode.
        open_queries: unknown queries per episode (``None``: N * Q, as many as the known ones).
        class_names: names for error messages.

    Raises:
        ValueError: a non-positive size, or fewer than N + U classes with enough images; the
            message gives the counts.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        ways: int,
        shots: int,
        queries: int,
        episodes: int,
        seed: int,
        open_ways: int,
        open_queries: int | None = None,
        *,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.closed = EpisodeSampler(labels, ways, shots, queries, episodes, seed, class_names=class_names)
        if isinstance(open_ways, bool) or int(open_ways) != open_ways or open_ways < 1:
            raise ValueError(f"open_ways must be a positive integer, got {open_ways!r}")
        total = ways * queries if open_queries is None else open_queries
        if isinstance(total, bool) or int(total) != total or total < open_ways:
            raise ValueError(
                f"open_queries must be an integer of at least open_ways={open_ways}, got {total!r}"
            )
        self.open_ways, self.open_queries = int(open_ways), int(total)
        self.counts = unknown_counts(self.open_queries, self.open_ways)
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        classes, n = np.unique(y, return_counts=True)
        need_unknown = self.counts[0]
        #: class id -> its samples, for every class that can play an unknown one
        self._unknown_pool = {
            int(c): np.flatnonzero(y == c) for c, k in zip(classes, n, strict=True) if k >= need_unknown
        }
        known_ok = set(self.closed.eligible_classes)
        # every choice of N known classes must leave U unknown ones: at worst the N known could all
        # have been unknown ones
        spare = len(self._unknown_pool) - min(ways, len(known_ok & set(self._unknown_pool)))
        if spare < open_ways:
            raise ValueError(
                f"{ways}-way episodes with {open_ways} unknown ways need {ways + open_ways} classes: {ways} "
                f"with at least {shots + queries} images ({shots} shots + {queries} queries) and "
                f"{open_ways} more with at least {need_unknown} ({self.open_queries} unknown queries over "
                f"{open_ways} classes); the data have {len(classes)} classes, {len(known_ok)} with "
                f"{shots + queries} images or more and {len(self._unknown_pool)} with {need_unknown} or "
                f"more: at most {max(0, spare)} unknown ways fit"
            )

    def __len__(self) -> int:
        return len(self.closed)

    def __getitem__(self, index: int) -> OpenEpisode:  # type: ignore[override]  # no slices
        known = self.closed[index]
        rng = np.random.default_rng([known.seed, 1])
        rest = np.array(sorted(set(self._unknown_pool) - set(known.classes)), dtype=np.int64)
        chosen = rng.choice(rest, size=self.open_ways, replace=False)
        unknown: list[int] = []
        for c, k in zip(chosen, self.counts, strict=True):
            unknown.extend(int(i) for i in rng.choice(self._unknown_pool[int(c)], size=k, replace=False))
        return OpenEpisode(known, tuple(int(c) for c in chosen), tuple(unknown))

    def __iter__(self) -> Iterator[OpenEpisode]:
        for i in range(len(self)):
            yield self[i]

    def config(self) -> dict[str, Any]:
        """The closed sampler's settings with the unknown ways and queries."""
        return {**self.closed.config(), "open_ways": self.open_ways, "open_queries": self.open_queries}

    def fingerprint(self) -> str:
        """A short hash of :meth:`config`: equal fingerprints mean the same episodes."""
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:16]
