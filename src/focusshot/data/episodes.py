"""Episodic N-way K-shot tasks as plain data.

An :class:`Episode` is a handful of index lists into one labelled set; an :class:`EpisodeSampler`
makes them. Episode ``i`` is drawn from its own seed, derived from ``(seed, i)`` alone, so it is the
same whether the sampler is iterated, indexed (``sampler[i]``), or rebuilt in another process — and
every method evaluated on the sampler is scored on exactly the same tasks (design principle 9:
compare methods by paired differences over shared episodes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Episode", "EpisodeSampler", "episode_seed", "sample_episode"]


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task with Q queries per class.

    All indices point into the labelled set the sampler was built on. Support and query lists are
    grouped by class in the order of :attr:`classes`: the ``j``-th block of K support (and Q query)
    indices belongs to class ``classes[j]`` and has episode label ``j``.

    Attributes:
        index: position of the episode in its sampler.
        seed: the episode's own seed; :func:`sample_episode` with it redraws the episode.
        classes: the N class ids chosen, in episode-label order.
        support: N*K sample indices.
        support_labels: N*K episode labels in ``0..N-1``.
        query: N*Q sample indices, disjoint from :attr:`support`.
        query_labels: N*Q episode labels in ``0..N-1``.
    """

    index: int
    seed: int
    classes: tuple[int, ...]
    support: tuple[int, ...]
    support_labels: tuple[int, ...]
    query: tuple[int, ...]
    query_labels: tuple[int, ...]

    @property
    def ways(self) -> int:
        """N, the number of classes."""
        return len(self.classes)

    @property
    def shots(self) -> int:
        """K, support samples per class."""
        return len(self.support) // max(len(self.classes), 1)

    @property
    def queries(self) -> int:
        """Q, query samples per class."""
        return len(self.query) // max(len(self.classes), 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (plain ints and lists)."""
        return {
            "index": self.index,
            "seed": self.seed,
            "classes": list(self.classes),
            "support": list(self.support),
            "support_labels": list(self.support_labels),
            "query": list(self.query),
            "query_labels": list(self.query_labels),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Episode:
        """Inverse of :meth:`to_dict`."""
        return cls(
            index=int(d["index"]),
            seed=int(d["seed"]),
            classes=tuple(int(v) for v in d["classes"]),
            support=tuple(int(v) for v in d["support"]),
            support_labels=tuple(int(v) for v in d["support_labels"]),
            query=tuple(int(v) for v in d["query"]),
            query_labels=tuple(int(v) for v in d["query_labels"]),
        )


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode ``index`` of a sampler seeded with ``seed``.

    Derived with :class:`numpy.random.SeedSequence` (entropy ``seed``, spawn key ``(index,)``, i.e.
    the ``index``-th child of ``SeedSequence(seed).spawn``), truncated to 53 bits so that it
    survives a round trip through any JSON reader.
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(index) != index or index < 0:
        raise ValueError(f"episode index must be a non-negative integer, got {index!r}")
    state = np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(1, np.uint64)
    return int(state[0]) >> 11


def sample_episode(
    by_class: Mapping[int, np.ndarray],
    ways: int,
    shots: int,
    queries: int,
    seed: int,
    index: int = 0,
) -> Episode:
    """Draw one episode from ``by_class`` (eligible class id -> its sample indices) with ``seed``.

    N classes are chosen without replacement among the keys (in sorted order), then K + Q distinct
    samples of each chosen class: the first K are support, the next Q query.
    """
    rng = np.random.default_rng(seed)
    eligible = np.array(sorted(by_class), dtype=np.int64)
    chosen = rng.choice(eligible, size=ways, replace=False)
    support: list[int] = []
    query: list[int] = []
    for c in chosen:
        picked = rng.choice(by_class[int(c)], size=shots + queries, replace=False)
        support.extend(int(i) for i in picked[:shots])
        query.extend(int(i) for i in picked[shots:])
    return Episode(
        index=int(index),
        seed=int(seed),
        classes=tuple(int(c) for c in chosen),
        support=tuple(support),
        support_labels=tuple(j for j in range(ways) for _ in range(shots)),
        query=tuple(query),
        query_labels=tuple(j for j in range(ways) for _ in range(queries)),
    )


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class EpisodeSampler(Sequence[Episode]):
    """A fixed, reproducible sequence of N-way K-shot episodes over one labelled set.

    ``sampler[i]`` draws episode ``i`` from :func:`episode_seed` ``(seed, i)``; iterating yields the
    same episodes in order. A class with fewer than K + Q samples is never chosen (see
    :attr:`ineligible`).

    Args:
        labels: integer class id of each sample of the set the episodes index into.
        ways: N, classes per episode.
        shots: K, support samples per class.
        queries: Q, query samples per class.
        episodes: number of episodes.
        seed: the sampler's seed (non-negative integer).
        class_names: optional names for error messages.

    Raises:
        ValueError: a non-positive size, or fewer than N classes with K + Q samples; the message
            names the short classes and their counts.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        ways: int,
        shots: int,
        queries: int,
        episodes: int,
        seed: int,
        *,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.ways = _positive_int("ways", ways)
        self.shots = _positive_int("shots", shots)
        self.queries = _positive_int("queries", queries)
        self.episodes = _positive_int("episodes", episodes)
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        y = np.asarray(labels).reshape(-1)
        if y.size == 0:
            raise ValueError("labels is empty")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.equal(np.mod(y, 1), 0)):
                raise ValueError("labels must be integers")
            y = y.astype(np.int64)
        if y.min() < 0:
            raise ValueError(f"labels must be non-negative, found {int(y.min())}")
        self._labels = y.astype(np.int64)
        self._class_names = list(class_names) if class_names is not None else None

        need = self.shots + self.queries
        classes, counts = np.unique(self._labels, return_counts=True)
        self._by_class: dict[int, np.ndarray] = {}
        #: class id -> sample count, for each class too small to be chosen (fewer than K + Q).
        self.ineligible: dict[int, int] = {}
        for c, n in zip(classes.tolist(), counts.tolist(), strict=True):
            if n >= need:
                self._by_class[c] = np.flatnonzero(self._labels == c)
            else:
                self.ineligible[c] = n
        if len(self._by_class) < self.ways:
            short = ", ".join(f"{self._name(c)}: {n}" for c, n in sorted(self.ineligible.items()))
            raise ValueError(
                f"{self.ways}-way {self.shots}-shot episodes with {self.queries} queries need {need} "
                f"images in each of {self.ways} classes, but only {len(self._by_class)} of "
                f"{len(classes)} classes have that many; short classes (images): {short or 'none'}"
            )

    def _name(self, c: int) -> str:
        if self._class_names is not None and 0 <= c < len(self._class_names):
            return repr(self._class_names[c])
        return f"class {c}"

    @property
    def eligible_classes(self) -> list[int]:
        """Class ids that episodes may use (at least K + Q samples), ascending."""
        return sorted(self._by_class)

    def __len__(self) -> int:
        return self.episodes

    def __getitem__(self, index: int) -> Episode:  # type: ignore[override]  # no slices (Sequence takes them)
        if isinstance(index, slice):
            raise TypeError("EpisodeSampler takes an integer index; iterate or use a range of indices")
        i = int(index)
        if i < 0:
            i += self.episodes
        if not 0 <= i < self.episodes:
            raise IndexError(f"episode {index} out of range for {self.episodes} episodes")
        return sample_episode(
            self._by_class, self.ways, self.shots, self.queries, episode_seed(self.seed, i), i
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.episodes):
            yield self[i]

    def config(self) -> dict[str, Any]:
        """The sampler's settings and a fingerprint of the labels it was built on."""
        return {
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "episodes": self.episodes,
            "seed": self.seed,
            "labels_sha256": hashlib.sha256(self._labels.astype("<i8").tobytes()).hexdigest(),
        }

    def fingerprint(self) -> str:
        """A short hash of :meth:`config`: equal fingerprints mean the same episodes."""
        text = json.dumps(self.config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: :meth:`config` plus every episode's :meth:`Episode.to_dict`."""
        return {**self.config(), "episodes_list": [ep.to_dict() for ep in self]}

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler(ways={self.ways}, shots={self.shots}, queries={self.queries}, "
            f"episodes={self.episodes}, seed={self.seed})"
        )
