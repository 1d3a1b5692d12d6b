"""Multi-process runs through torchrun (gloo on CPU): sharded extraction and episodes, merged
results equal to a one-process run, and a job that loses a rank resumes to the same results.

What is guaranteed (:mod:`focusshot.evaluation.compare`): bit-identical results when every process
computes with the same number of threads, equal within float tolerance otherwise. The ranks here
compute with :data:`RANK_THREADS`; the one-process reference with
``$FOCUSSHOT_TEST_REFERENCE_THREADS`` (default: the ranks' count, where the rows must be equal
bytes). Run with ``FOCUSSHOT_TEST_REFERENCE_THREADS=2`` to check the tolerance guarantee.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from focusshot.cli import _strip_workers, main
from focusshot.distributed import Context, resolve_device
from focusshot.evaluation.compare import FIGURE_KEYS, run_differences
from focusshot.evaluation.results import ResultLog, comparable_rows

DATA = "world:clutter?per_class=6"
EPISODIC = [
    "evaluate", "--backbone", "tiny-vit", "--random-weights", "--data", DATA, "--method", "protonet,lora",
    "--set", "lora.steps=3", "--episodes", "6", "--ways", "3", "--queries", "2", "--no-report", "--quiet",
]  # fmt: skip


#: CPU threads of every rank
RANK_THREADS = 1
#: CPU threads of the one-process reference run
REFERENCE_THREADS = int(os.environ.get("FOCUSSHOT_TEST_REFERENCE_THREADS", RANK_THREADS))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(
        os.environ, FOCUSSHOT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS=str(RANK_THREADS), **extra
    )
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return subprocess.Popen([*cmd, "-m", "focusshot", *args], env=env, **kw)


def _one_process(tmp_path: Path, args: list[str], name: str, monkeypatch) -> Path:
    """The reference: ``args`` in this process, computing with :data:`REFERENCE_THREADS` threads."""
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / name
    before = torch.get_num_threads()
    torch.set_num_threads(REFERENCE_THREADS)
    try:
        assert main([*args, "--output", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def _assert_same_results(ranks: Path, one: Path) -> None:
    """Equal within float tolerance always; equal bytes (but timings) at equal thread counts."""
    assert run_differences(one, ranks) == []
    if REFERENCE_THREADS == RANK_THREADS:
        assert comparable_rows(ranks) == comparable_rows(one)
        for name in ("summary.csv", "paired.csv"):
            if (one / name).is_file():
                assert (ranks / name).read_text() == (one / name).read_text(), name
        if (one / "attention.json").is_file():  # the measurements; a resumed run draws fewer figures
            att = [json.loads((d / "attention.json").read_text()) for d in (ranks, one)]
            for record in att:
                for key in FIGURE_KEYS:
                    record.pop(key, None)
            assert att[0] == att[1]


def test_torchrun_episodes_and_extraction_equal_one_process(tmp_path, monkeypatch) -> None:
    out = tmp_path / "two"
    proc = _torchrun([*EPISODIC, "--output", str(out)], _env(tmp_path))
    assert proc.wait(timeout=240) == 0
    assert not (out / "shards").exists()  # merged and removed
    one = _one_process(tmp_path, EPISODIC, "one", monkeypatch)
    # same rows in the same order; the frozen model's [CLS] attention, measured batch by batch
    # across the ranks, sums the same
    assert json.loads((out / "attention.json").read_text())["available"]
    _assert_same_results(out, one)


def test_workers_flag_runs_the_split_protocol_across_two_processes(tmp_path, monkeypatch) -> None:
    args = [
        "evaluate", "--backbone", "tiny-clip-vit", "--random-weights",
        "--data", "world:single?per_class=6&split=1", "--protocol", "split", "--shots", "1,2",
        "--seeds", "1,2", "--method", "protonet,tip_adapter,zeroshot", "--no-report", "--quiet",
    ]  # fmt: skip
    out = tmp_path / "two"
    env = _env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "focusshot", *args, "--output", str(out), "--workers", "2"],
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0
    one = _one_process(tmp_path, args, "one", monkeypatch)
    _assert_same_results(out, one)


def test_workers_flag_shares_out_open_set_episodes_and_split_runs(tmp_path, monkeypatch) -> None:
    """``--open-ways`` / ``--open-classes`` runs share their episodes (split runs) over the workers
    and merge to the one-process results, ``fit --reject auto``'s thresholds included."""
    runs = {
        "episodic": [
            *EPISODIC[:5], "world:clutter?per_class=4", "--method", "protonet,logistic,lora",
            "--set", "lora.steps=2", "--episodes", "4", "--ways", "2", "--shots", "2", "--queries", "2",
            "--open-ways", "2", "--no-report", "--quiet",
        ],
        "split": [
            "evaluate", "--backbone", "tiny-clip-vit", "--random-weights",
            "--data", "world:single?per_class=6&split=1", "--protocol", "split", "--shots", "1,2",
            "--seeds", "1", "--method", "protonet,zeroshot", "--open-classes", "red plain circle",
            "--no-report", "--quiet",
        ],
    }  # fmt: skip
    for name, args in runs.items():
        out = tmp_path / f"two-{name}"
        proc = subprocess.run(
            [sys.executable, "-m", "focusshot", *args, "--output", str(out), "--workers", "2"],
            env=_env(tmp_path),
            timeout=240,
        )
        assert proc.returncode == 0, name
        assert not (out / "shards").exists()
        one = _one_process(tmp_path, args, f"one-{name}", monkeypatch)
        _assert_same_results(out, one)
        rows = comparable_rows(out)
        assert rows and all("open" in r for r in rows), name


def test_torchrun_embed_equals_one_process(tmp_path, monkeypatch) -> None:
    from focusshot.data.world import build_world
    from focusshot.embedding import load_embeddings

    images = build_world("world:single", tmp_path / "w", per_class=1).paths[:7]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(images) + "\n")
    args = ["embed", "--backbone", "tiny-vit", "--random-weights", "--images", str(listing), "--quiet"]
    assert _torchrun([*args, "--output", str(tmp_path / "two.safetensors")], _env(tmp_path)).wait(240) == 0
    _one_process(tmp_path, args, "one.safetensors", monkeypatch)
    two, two_paths, _ = load_embeddings(tmp_path / "two.safetensors")
    one, one_paths, _ = load_embeddings(tmp_path / "one.safetensors")
    assert two_paths == one_paths == images  # input order although each rank embedded every other image
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)
    if REFERENCE_THREADS == RANK_THREADS:
        assert torch.equal(two, one)


def _pid_of_rank(marker: str, rank: int) -> int | None:
    """The process whose environment holds ``marker`` and ``RANK=rank`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FOCUSSHOT_TEST_MARK={marker}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the rank's process through /proc")
def test_a_killed_rank_leaves_its_rows_and_the_rerun_resumes(tmp_path, monkeypatch) -> None:
    args = [*EPISODIC, "--episodes", "8"]
    args[args.index("lora.steps=3")] = "lora.steps=40"  # slow enough to be killed mid-run
    out = tmp_path / "two"
    marker = uuid.uuid4().hex
    proc = _torchrun([*args, "--output", str(out)], _env(tmp_path, FOCUSSHOT_TEST_MARK=marker))
    shard = out / "shards" / "rank1.jsonl"
    deadline = time.time() + 200
    while time.time() < deadline and not (shard.is_file() and shard.read_text().count("\n") >= 1):
        time.sleep(0.02)
    pid = _pid_of_rank(marker, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0  # torchrun stops the job when a rank dies
    left = shard.read_text().count("\n")
    assert 1 <= left < 8  # rank 1 owns 4 episodes x 2 methods: it died mid-run and kept what it finished
    assert not (out / "summary.csv").exists()
    rerun = _torchrun([*args, "--output", str(out)], _env(tmp_path))
    assert rerun.wait(timeout=240) == 0
    one = _one_process(tmp_path, args, "one", monkeypatch)
    _assert_same_results(out, one)


def test_result_log_shards_merge_in_order_and_survive_a_kill_between_merge_steps(tmp_path) -> None:
    info = {"config": {"a": 1}}
    logs = [ResultLog(tmp_path, info, ("method", "episode"), shard=r) for r in (0, 1)]
    for ep in range(5):
        for m in ("b", "a"):
            logs[ep % 2].append({"method": m, "episode": ep})
    assert not (tmp_path / "results.jsonl").exists()
    again = ResultLog(tmp_path, info, ("method", "episode"), shard=0)  # a rerun sees both ranks' rows
    assert again.has(method="a", episode=3) and len(again.rows) == 10
    assert again.count_all() == 10
    with open(tmp_path / "shards" / "rank1.jsonl", "a") as f:  # a line another rank is still writing
        f.write('{"method": "a", "epis')
    assert again.count_all() == 10
    with open(tmp_path / "shards" / "rank1.jsonl", "a") as f:
        f.write('ode": 7}\n')
    assert again.count_all() == 11
    # a kill after results.jsonl was written but before the shards were removed: no duplicates
    order = [(m, ep) for ep in range(5) for m in ("b", "a")]
    merged = ResultLog(tmp_path, info, ("method", "episode")).merge(order)
    assert [(r["method"], r["episode"]) for r in merged] == [*order, ("a", 7)]  # unknown keys last
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "rank1.jsonl").write_text(json.dumps({"method": "a", "episode": 1}) + "\n")
    log = ResultLog(tmp_path, info, ("method", "episode"))
    assert len(log.rows) == 11
    assert len(log.merge(order)) == 11 and not (tmp_path / "shards").exists()


def test_context_deals_units_round_robin() -> None:
    ranks = [Context(rank=r, world=3) for r in range(3)]
    owners = [[c.owns(i) for c in ranks].index(True) for i in range(7)]
    assert owners == [0, 1, 2, 0, 1, 2, 0]
    assert all(sum(c.owns(i) for c in ranks) == 1 for i in range(20))
    assert Context().owns(5) and not Context().active


def test_device_auto_and_errors() -> None:
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", 0).type == expect
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_strip_workers_and_bad_worker_counts(capsys) -> None:
    assert _strip_workers(["evaluate", "--workers", "2", "--quiet", "--workers=3"]) == ["evaluate", "--quiet"]
    with pytest.raises(SystemExit):
        main(["evaluate", "--backbone", "tiny-vit", "--data", "x", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err


def test_a_failing_worker_fails_the_command(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-folder"
    args = [
        "evaluate",
        "--backbone",
        "tiny-vit",
        "--random-weights",
        "--data",
        str(missing),
        "--workers",
        "2",
    ]
    env = _env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "focusshot", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "a worker failed" in proc.stderr and str(missing) in proc.stderr  # the rank's own error, then ours


def test_rank_zero_bar_counts_every_ranks_finished_episodes(tmp_path) -> None:
    from focusshot.evaluation.protocols import _tick

    class Bar:
        total, n, refreshed = 10, 0, 0

        def refresh(self) -> None:
            self.refreshed += 1

        def update(self, k: int) -> None:
            self.n += k

    info = {"config": {}}
    other = ResultLog(tmp_path, info, ("method", "episode"), shard=1)  # rank 1's rows, 2 methods per episode
    for ep in (1, 3, 5):
        for m in ("a", "b"):
            other.append({"method": m, "episode": ep})
    mine = ResultLog(tmp_path, info, ("method", "episode"), shard=0)
    mine.append({"method": "a", "episode": 0})
    mine.append({"method": "b", "episode": 0})
    bar = Bar()
    _tick(bar, mine, Context(rank=0, world=2), per_unit=2)
    assert bar.n == 4 and bar.refreshed == 1  # 3 episodes of rank 1 + 1 of rank 0
    single = Bar()
    _tick(single, mine, Context(), per_unit=2)
    assert single.n == 1  # one process: one step per own episode
