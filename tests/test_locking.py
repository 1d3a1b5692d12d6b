"""One writer per output: a second run is refused at once, naming the holder; a killed holder's
lock is taken over and the run resumes; ``fit --output`` is guarded the same way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from focusshot.cli import main
from focusshot.locking import LOCK_NAME, hold, holder_of

# slow enough (lora steps) for a second process to arrive while the first runs
ARGS = [
    "evaluate", "--backbone", "tiny-vit", "--random-weights", "--data", "world:clutter?per_class=6",
    "--method", "protonet,lora", "--set", "lora.steps=25", "--episodes", "6", "--ways", "3",
    "--queries", "2", "--no-report", "--quiet",
]  # fmt: skip


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, FOCUSSHOT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "focusshot", *args], env=env, stderr=subprocess.PIPE, text=True
    )


def _wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, f"the first run ended before {what}: {proc.stderr.read()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _lines(out: Path) -> list[tuple[str, int]]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [(r["method"], r["episode"]) for r in rows]


def test_hold_refuses_a_second_holder_and_removes_its_file(tmp_path) -> None:
    path = tmp_path / "x.lock"
    with hold(path, "thing x") as previous:
        assert previous == {}
        assert holder_of(path)["pid"] == os.getpid()
        code = f"from focusshot.locking import hold\nwith hold({str(path)!r}, 'thing x'): pass"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0
        assert (
            "OutputBusy" in proc.stderr and f"pid {os.getpid()}" in proc.stderr and "thing x" in proc.stderr
        )
    assert not path.exists()
    with hold(path, "thing x"):  # free again
        pass


def test_second_evaluate_into_one_folder_refuses_and_the_first_writes_each_line_once(
    tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "run"
    first = _start([*ARGS, "--output", str(out)], tmp_path)
    _wait_for(lambda: bool(holder_of(out / LOCK_NAME)), first, "the first run took the lock")
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    started = time.time()
    assert main([*ARGS, "--output", str(out)]) == 2
    assert time.time() - started < 30  # refused at once, not after running the episodes
    err = capsys.readouterr().err
    assert f"run folder {out} is in use by pid {first.pid}" in err and "another output" in err
    assert first.wait(timeout=240) == 0, first.stderr.read()
    lines = _lines(out)
    assert len(lines) == len(set(lines)) == 12  # 6 episodes x 2 methods, each once
    assert not (out / LOCK_NAME).exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_holders_lock_is_taken_over_and_the_run_resumes(tmp_path, monkeypatch, caplog) -> None:
    out = tmp_path / "run"
    first = _start([*ARGS, "--output", str(out)], tmp_path)
    done = out / "results.jsonl"
    _wait_for(lambda: done.is_file() and done.read_text().count("\n") >= 3, first, "three result lines")
    first.kill()
    first.wait(timeout=60)
    assert 3 <= done.read_text().count("\n") < 12 and (out / LOCK_NAME).exists()  # left behind
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="focusshot"):
        assert main([*ARGS, "--output", str(out)]) == 0
    assert f"took over the lock left by pid {first.pid}" in caplog.text
    lines = _lines(out)
    assert len(lines) == len(set(lines)) == 12
    assert not (out / LOCK_NAME).exists()


def test_fit_output_is_locked(tmp_path, monkeypatch, capsys) -> None:
    target = tmp_path / "clf.safetensors"
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    args = ["fit", "world:single?per_class=2", "--backbone", "tiny-vit", "--random-weights", "--quiet"]
    with hold(f"{target}.lock", "someone else"):
        assert main([*args, "--output", str(target)]) == 2
        assert f"classifier {target} is in use by pid {os.getpid()}" in capsys.readouterr().err
        assert not target.exists()
    assert main([*args, "--output", str(target)]) == 0
    assert target.is_file() and not Path(f"{target}.lock").exists()
