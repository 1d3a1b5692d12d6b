"""Run folders stored compressed (``results.jsonl.gz``, as under benchmarks/results): read like plain
ones, resumed by a rerun, and kept compressed in the repository."""

import gzip
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

import focusshot
from focusshot.data.sources import from_folder
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.protocols import EpisodicConfig, run_episodic
from focusshot.evaluation.results import comparable_rows, read_results, results_file
from focusshot.report.html import write_report

ROOT = Path(__file__).resolve().parents[2]


def _compress_runs():
    spec = importlib.util.spec_from_file_location("compress_runs", ROOT / "benchmarks" / "compress_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    g = torch.Generator().manual_seed(0)
    for c in range(4):
        (root / f"class_{c}").mkdir()
        for i in range(6):
            arr = (torch.rand(16, 16, 3, generator=g) * 60 + c * 60).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / f"class_{c}" / f"{i}.png")
    return from_folder(root)


def test_a_compressed_run_reads_and_resumes_like_a_plain_one(tmp_path, pool) -> None:
    backbone, cache = focusshot.create_backbone("tiny-vit"), FeatureCache(tmp_path / "cache")
    cfg = EpisodicConfig(ways=3, shots=1, queries=2, episodes=4, seed=0)
    full = run_episodic(backbone, pool, ["protonet"], cfg, tmp_path / "full", cache)
    run_episodic(backbone, pool, ["protonet"], cfg, tmp_path / "run", cache, stop_after=2)
    plain = read_results(tmp_path / "run")
    compress = _compress_runs()
    _, after = compress.compress(tmp_path / "run" / "results.jsonl")
    assert after > 0 and not (tmp_path / "run" / "results.jsonl").exists()
    packed = tmp_path / "run" / "results.jsonl.gz"
    assert results_file(tmp_path / "run") == packed and read_results(tmp_path / "run") == plain
    assert compress.gzip_bytes(gzip.decompress(packed.read_bytes())) == packed.read_bytes()  # reproducible
    assert compress.plain_logs([tmp_path]) == [tmp_path / "full" / "results.jsonl"]
    write_report(tmp_path / "run")  # focusshot report reads the compressed log
    # a rerun resumes from the compressed log: only the two missing episodes are computed
    resumed = run_episodic(backbone, pool, ["protonet"], cfg, tmp_path / "run", cache)
    assert not packed.exists() and (tmp_path / "run" / "results.jsonl").is_file()
    assert len(resumed.rows) == 4 and resumed.summary == full.summary
    assert comparable_rows(tmp_path / "run") == comparable_rows(tmp_path / "full")


def test_the_plain_log_wins_where_both_exist(tmp_path) -> None:
    rows = [{"method": "a", "episode": 0}, {"method": "a", "episode": 1}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "results.jsonl.gz").write_bytes(gzip.compress(json.dumps(rows[0]).encode() + b"\n"))
    assert read_results(tmp_path) == rows
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        read_results(tmp_path / "missing")


def test_benchmark_run_folders_are_stored_compressed() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to check")
    tracked = subprocess.run(
        ["git", "ls-files", "--", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    plain = [p for p in tracked if Path(p).name == "results.jsonl"]
    assert not plain, (
        f"{len(plain)} run logs are stored uncompressed (run `python benchmarks/compress_runs.py` "
        f"before committing): {plain[:5]}"
    )


def test_only_published_figures_are_stored_with_the_runs() -> None:
    """Run folders' figures are regenerated, not committed (issue 32): every PNG tracked under
    benchmarks/results is one a docs page or the README shows."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to check")
    git = ["git", "ls-files", "--", "benchmarks/results/*.png"]
    tracked = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    shown = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]*benchmarks/results/[^)\s]*\.png)\)", page.read_text()):
            shown.add((page.parent / target).resolve().relative_to(ROOT).as_posix())
    unshown = sorted(set(tracked) - shown)
    assert not unshown, (
        f"{len(unshown)} figures are committed under benchmarks/results that no page shows (the run "
        f"scripts draw them; see benchmarks/results/README.md): {unshown[:5]}"
    )
