"""The open-set protocols: episodes as data, the result lines, summaries and paired differences."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import focusshot
from focusshot.cli import main
from focusshot.data.episodes import EpisodeSampler
from focusshot.data.open_episodes import OpenEpisodeSampler, unknown_counts
from focusshot.evaluation.results import read_results
from tests.methods.helpers import class_folders

LABELS = [c for c in range(8) for _ in range(6)]


def test_known_part_is_the_closed_episode_and_unknowns_are_other_classes() -> None:
    closed = EpisodeSampler(LABELS, 3, 2, 2, 5, seed=7)
    sampler = OpenEpisodeSampler(LABELS, 3, 2, 2, 5, seed=7, open_ways=2)
    again = OpenEpisodeSampler(LABELS, 3, 2, 2, 5, seed=7, open_ways=2)
    for i, ep in enumerate(sampler):
        assert ep.known == closed[i] and ep.to_dict() == again[i].to_dict()
        assert not set(ep.unknown_classes) & set(ep.known.classes) and len(ep.unknown_classes) == 2
        assert len(ep.unknown) == len(ep.known.query)  # as many unknown queries as known ones
        assert {LABELS[j] for j in ep.unknown} == set(ep.unknown_classes)
        assert not set(ep.unknown) & set(ep.known.support + ep.known.query)
    assert sampler.fingerprint() != OpenEpisodeSampler(LABELS, 3, 2, 2, 5, 7, open_ways=3).fingerprint()
    assert unknown_counts(7, 3) == [3, 2, 2]


def test_too_many_unknown_ways_says_the_counts() -> None:
    with pytest.raises(ValueError, match=r"need 9 classes.*8 classes.*at most 4 unknown ways"):
        OpenEpisodeSampler(LABELS, 4, 1, 2, 3, seed=0, open_ways=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openproto")
    class_folders(root / "pool", classes=6, per_class=4)
    class_folders(root / "splits" / "train", classes=4, per_class=3)
    class_folders(root / "splits" / "test", classes=4, per_class=2)
    return root


def test_open_episodic_run(data: Path, tmp_path: Path) -> None:
    out = focusshot.evaluate(
        "tiny-clip-vit",
        data / "pool",
        ["protonet", "zeroshot", "sav"],
        output=tmp_path / "run",
        ways=3,
        shots=2,
        queries=2,
        episodes=3,
        open_ways=2,
        cache_dir=tmp_path / "cache",
        pretrained=False,
        figures=False,
    )
    rows = read_results(out.directory)
    assert (
        len(rows) == 9
        and {r["known_queries"] for r in rows} == {6}
        and {r["unknown_queries"] for r in rows} == {6}
    )
    proto = next(r for r in rows if r["method"] == "protonet")
    assert set(proto["open"]) == {"msp", "max_logit", "energy", "distance"}
    assert "mcm" in proto["open_refused"] and "auto_refused" not in proto
    for rec in proto["open"].values():
        assert 0 <= rec["auroc"] <= 1 and 0 <= rec["fpr95"] <= 1 and len(rec["scores"]) == 12
        assert rec["open_accuracy_auto"] <= rec["open_accuracy_oracle"] + 1e-12
    sav = next(r for r in rows if r["method"] == "sav")
    assert "energy" in sav["open_refused"] and "distance" in sav["open"]
    summary = {(r["method"], r["score"]): r for r in out.summary}
    assert summary["zeroshot", "mcm"]["n"] == 3 and math.isfinite(summary["zeroshot", "mcm"]["auroc_ci95"])
    pairs = {(p["method"], p["score"], p["metric"]): p for p in out.paired}
    assert pairs["zeroshot", "mcm", "auroc"]["baseline_score"] == "distance"  # protonet's default
    assert pairs["sav", "msp", "auroc"]["baseline_score"] == "msp"
    assert pairs["sav", "-", "accuracy"]["baseline"] == "protonet"
    assert (out.directory / "paired.md").is_file() and (out.directory / "summary.md").is_file()
    again = focusshot.evaluate(  # resumes: nothing new, the same summary
        "tiny-clip-vit", data / "pool", ["protonet", "zeroshot", "sav"], output=tmp_path / "run",
        ways=3, shots=2, queries=2, episodes=3, open_ways=2, cache_dir=tmp_path / "cache",
        pretrained=False, figures=False,
    )  # fmt: skip
    assert again.summary == out.summary
    assert "Known against unknown" in (out.directory / "report.html").read_text()


def test_one_shot_episodes_measure_the_auto_threshold_fit_would_pick(data: Path, tmp_path: Path) -> None:
    from focusshot.data.open_episodes import OpenEpisodeSampler
    from focusshot.data.sources import open_source

    run = dict(ways=3, shots=1, queries=2, episodes=2, open_ways=3, cache_dir=tmp_path / "cache", seed=4)
    out = focusshot.evaluate(
        "tiny-clip-vit", data / "pool", ["protonet"], output=tmp_path / "r1", pretrained=False,
        figures=False, report=False, **run,
    )  # fmt: skip
    proto = out.rows
    assert all("auto_refused" not in r and "open_accuracy_auto" in r["open"]["distance"] for r in proto)
    # the episode's threshold is the one fit --reject auto picks from the episode's support (its
    # views seeded by the run's seed, as a training method's views)
    pool = open_source(data / "pool")
    ep = OpenEpisodeSampler(pool.labels, 3, 1, 2, 2, 4, 3, class_names=pool.class_names)[0]
    names = [pool.class_names[c] for c in ep.known.classes]
    sup = tmp_path / "sup"
    for c, i in zip(names, ep.known.support, strict=True):
        (sup / c).mkdir(parents=True)
        (sup / c / Path(pool.paths[i]).name).write_bytes(Path(pool.paths[i]).read_bytes())
    clf = focusshot.fit(
        sup, backbone="tiny-clip-vit", method="protonet", pretrained=False, seed=4,
        cache_dir=tmp_path / "cache", reject="auto",
    )  # fmt: skip
    assert proto[0]["open"]["distance"]["threshold_auto"] == clf.info["reject"]["threshold"]


def test_one_shot_episodes_of_a_region_method_map_the_boxes_into_the_views(
    data: Path, tmp_path: Path
) -> None:
    import dataclasses

    from focusshot.data.open_episodes import OpenEpisodeSampler
    from focusshot.data.sources import open_source

    plain = open_source(data / "pool")
    boxes = [(2.0 + i % 3, 3.0, 30.0, 33.0 - i % 4) for i in range(len(plain.paths))]
    pool = dataclasses.replace(plain, boxes=boxes)
    run = dict(ways=3, shots=1, queries=2, episodes=2, open_ways=3, cache_dir=tmp_path / "cache", seed=4)
    out = focusshot.evaluate(
        "tiny-clip-vit", pool, ["red_circle"], output=tmp_path / "r1", pretrained=False,
        figures=False, report=False, **run,
    )  # fmt: skip
    rows = out.rows
    assert all("auto_refused" not in r and "open_accuracy_auto" in r["open"]["max_logit"] for r in rows)
    # the threshold is the one fit --reject auto picks from the episode's support and its boxes
    ep = OpenEpisodeSampler(pool.labels, 3, 1, 2, 2, 4, 3, class_names=pool.class_names)[0]
    sup = dataclasses.replace(
        pool,
        paths=[pool.paths[i] for i in ep.known.support],
        labels=list(range(3)),
        class_names=[pool.class_names[c] for c in ep.known.classes],
        boxes=[boxes[i] for i in ep.known.support],
    )
    assert [pool.labels[i] for i in ep.known.support] == list(ep.known.classes)
    clf = focusshot.fit(
        sup, backbone="tiny-clip-vit", method="red_circle", pretrained=False, seed=4,
        cache_dir=tmp_path / "cache", reject="auto",
    )  # fmt: skip
    assert rows[0]["open"]["max_logit"]["threshold_auto"] == pytest.approx(clf.info["reject"]["threshold"])


def test_open_split_run(data: Path, tmp_path: Path) -> None:
    out = focusshot.evaluate(
        "tiny-clip-vit", data / "splits", ["protonet", "ridge"], "split", tmp_path / "s", shots=[2],
        seeds=[1], open_classes=["class_3"], cache_dir=tmp_path / "cache", pretrained=False, figures=False,
        report=False,
    )  # fmt: skip
    assert len(out.rows) == 2
    row = out.rows[0]
    assert (
        row["known_queries"] == 6
        and row["unknown_queries"] == 2
        and "open_accuracy_auto" in row["open"]["msp"]
    )
    assert {r["shots"] for r in out.summary} == {2}


def test_bad_open_input(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate", "--backbone", "tiny-clip-vit", "--random-weights", "--quiet", "--no-report"]
    base += ["--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "bad")]
    assert (
        main([*base, "--data", str(data / "pool"), "--ways", "3", "--queries", "2", "--open-ways", "4"]) == 2
    )
    err = capsys.readouterr().err
    assert "need 7 classes" in err and "the data have 6 classes" in err and "at most 3 unknown ways" in err
    assert (
        main([*base, "--data", str(data / "pool"), "--ways", "3", "--open-ways", "2", "--open-score", "odin"])
        == 2
    )
    assert "valid scores: msp, max_logit, energy, distance, mcm" in capsys.readouterr().err
    split = [*base, "--data", str(data / "splits"), "--protocol", "split", "--shots", "1", "--seeds", "1"]
    assert main([*split, "--open-classes", "class_9"]) == 2
    assert "not classes of the data; classes: class_0, class_1, class_2, class_3" in capsys.readouterr().err
    assert main([*split, "--open-ways", "2"]) == 2
    assert "split protocol takes open_classes" in capsys.readouterr().err
