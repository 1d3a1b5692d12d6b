"""Episodes are data: reproducible per-episode seeds, disjoint support/query, JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from focusshot.data.episodes import Episode, EpisodeSampler, episode_seed, sample_episode

LABELS = np.repeat(np.arange(8), 12)  # 8 classes x 12 images


def _sampler(seed: int = 0, **kw: int) -> EpisodeSampler:
    args = {"ways": 5, "shots": 2, "queries": 3, "episodes": 20} | kw
    return EpisodeSampler(LABELS, seed=seed, **args)


def test_same_seed_same_episodes() -> None:
    assert list(_sampler(1)) == list(_sampler(1))


def test_indexing_matches_iteration() -> None:
    sampler = _sampler(5)
    episodes = list(sampler)
    assert len(episodes) == len(sampler) == 20
    for i in (0, 7, 19):
        assert sampler[i] == episodes[i]
    assert sampler[-1] == episodes[19]
    with pytest.raises(IndexError):
        sampler[20]


def test_episode_does_not_depend_on_episode_count() -> None:
    assert list(_sampler(2, episodes=5)) == list(_sampler(2, episodes=50))[:5]


def test_different_seeds_differ() -> None:
    a, b = list(_sampler(0)), list(_sampler(1))
    assert all(x.seed != y.seed for x, y in zip(a, b, strict=True))
    assert [e.support for e in a] != [e.support for e in b]
    assert len({e.seed for e in a}) == len(a)  # every episode has its own seed


def test_episode_structure() -> None:
    for ep in _sampler(3):
        assert ep.ways == 5 and ep.shots == 2 and ep.queries == 3
        assert len(set(ep.classes)) == 5
        assert len(ep.support) == 10 and len(ep.query) == 15
        assert not set(ep.support) & set(ep.query)
        assert len(set(ep.support)) == 10 and len(set(ep.query)) == 15
        assert ep.support_labels == tuple(j for j in range(5) for _ in range(2))
        assert ep.query_labels == tuple(j for j in range(5) for _ in range(3))
        for idx, lab in zip(ep.support + ep.query, ep.support_labels + ep.query_labels, strict=True):
            assert LABELS[idx] == ep.classes[lab]


def test_episode_redrawn_from_its_own_seed() -> None:
    sampler = _sampler(9)
    ep = sampler[4]
    assert ep.seed == episode_seed(9, 4)
    by_class = {c: np.flatnonzero(LABELS == c) for c in range(8)}
    assert sample_episode(by_class, 5, 2, 3, ep.seed, index=4) == ep


def test_json_round_trip() -> None:
    sampler = _sampler(4, episodes=3)
    blob = json.loads(json.dumps(sampler.to_dict()))
    assert [Episode.from_dict(d) for d in blob["episodes_list"]] == list(sampler)
    assert blob["ways"] == 5 and blob["seed"] == 4
    assert sampler.fingerprint() == _sampler(4, episodes=3).fingerprint()
    assert sampler.fingerprint() != _sampler(5, episodes=3).fingerprint()


def test_short_classes_are_ineligible() -> None:
    labels = np.concatenate([np.repeat(np.arange(5), 6), np.full(3, 5), np.full(4, 6)])
    sampler = EpisodeSampler(labels, ways=5, shots=2, queries=3, episodes=30, seed=0)
    assert sampler.ineligible == {5: 3, 6: 4}
    assert sampler.eligible_classes == [0, 1, 2, 3, 4]
    assert all(set(ep.classes) == {0, 1, 2, 3, 4} for ep in sampler)


def test_too_few_eligible_classes_names_them() -> None:
    labels = np.concatenate([np.repeat(np.arange(3), 6), np.full(2, 3), np.full(4, 4)])
    with pytest.raises(ValueError, match=r"only 3 of 5 classes.*'shirt': 2, 'shoes': 4"):
        EpisodeSampler(
            labels,
            ways=4,
            shots=2,
            queries=3,
            episodes=2,
            seed=0,
            class_names=["a", "b", "c", "shirt", "shoes"],
        )


@pytest.mark.parametrize("bad", [{"ways": 0}, {"shots": -1}, {"queries": 0}, {"episodes": 0}])
def test_bad_sizes(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        _sampler(**bad)


def test_accepts_lists_and_float_integer_labels() -> None:
    from_list = EpisodeSampler(LABELS.tolist(), 3, 1, 1, episodes=4, seed=0)
    from_float = EpisodeSampler(LABELS.astype(np.float32), 3, 1, 1, episodes=4, seed=0)
    assert list(from_list) == list(from_float)
