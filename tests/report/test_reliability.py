"""Reliability diagrams pool every query exactly, from episodic and split result lines alike."""

import numpy as np
import pytest
import torch
from PIL import Image

from focusshot.evaluation.metrics import ece
from focusshot.evaluation.protocols import _query_record, _split_record
from focusshot.report.reliability import pooled_bins, reliability_table, save_reliability_figure


def _batch(seed: int, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g) * 2, torch.randint(0, 4, (n,), generator=g)


def test_pooled_bins_equal_the_whole_set_for_both_row_kinds(tmp_path) -> None:
    batches = [_batch(s) for s in range(3)]
    logits = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    whole = ece(logits.double().softmax(-1), labels)
    episodic = [{"method": "a", **_query_record(z, y)} for z, y in batches]
    split = [{"method": "b", **_split_record(z, y, None)} for z, y in batches]
    pooled = pooled_bins(episodic + split)
    table = {r["method"]: r for r in reliability_table(pooled)}
    # the episodic rows round confidences to 4 decimals; the split rows keep exact per-bin sums
    assert table["a"]["ece_pooled"] == pytest.approx(whole, abs=1e-3)
    assert table["b"]["ece_pooled"] == pytest.approx(whole, abs=1e-12)  # exact per-bin sums
    assert table["a"]["predictions"] == table["b"]["predictions"] == 120
    assert table["b"]["accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).double().mean()))
    path = save_reliability_figure(pooled, tmp_path / "rel.png", ["b", "a"])
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 0
        assert np.asarray(im).min() < 255  # something was drawn
    with pytest.raises(ValueError, match="no method"):
        save_reliability_figure(pooled, tmp_path / "x.png", ["zzz"])


def test_confidences_below_one_half_bin_as_themselves() -> None:
    """The bug this guards: pooling confidences as two-class probabilities ``[c, 1 - c]`` binned a
    top-label confidence of 0.3 (5 ways) as 0.7 and counted its correctness the wrong way round."""
    rows = [{"method": "m", "confidence": [0.3, 0.3, 0.9, 0.45], "correct": "1001"}]
    b = pooled_bins(rows)["m"]
    assert b.counts[4] == 2 and b.counts[6] == 1 and b.counts[13] == 1  # (4/15, 5/15], (6/15, 7/15], ...
    # |1 - 0.6| + |0 - 0.9| + |1 - 0.45| over 4 predictions
    assert b.ece == pytest.approx((0.4 + 0.9 + 0.55) / 4)
    probs = torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1]] * 2 + [[0.9, 0.1, 0, 0, 0], [0.45, 0.2, 0.15, 0.1, 0.1]])
    assert b.ece == pytest.approx(ece(probs.double(), [0, 1, 1, 0]))


def _csv(path) -> dict[str, dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return {(r["method"], r.get("shots", "")): r for r in csv.DictReader(f)}  # type: ignore[misc]


def test_one_ece_in_summary_table_and_figure_for_both_protocols(tmp_path, monkeypatch) -> None:
    """The summary's pooled ECE, ``reliability.csv`` and the figure's panel titles are one number;
    a split run with one seed has the same per-run ``ece`` in its summary."""
    from PIL import ImageDraw

    from focusshot.api import evaluate

    titles: list[str] = []
    real_text = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *a, **kw):
        titles.append(str(text))
        return real_text(self, xy, text, *a, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    methods = ["protonet", "sav", "logistic"]  # sav's votes give confidences below 1/2
    out = evaluate(
        "tiny-vit", "world:clutter?per_class=6", methods, output=tmp_path / "ep", ways=5, queries=3,
        episodes=4, pretrained=False, report=False,
    )  # fmt: skip
    summary = _csv(out.directory / "summary.csv")
    table = _csv(out.directory / "reliability.csv")
    low = [c for r in out.rows for c in r["confidence"] if c < 0.5]
    assert low  # the case the old pooling got wrong is present
    for m in methods:
        value = float(summary[(m, "")]["ece_pooled"])
        assert float(table[(m, "")]["ece_pooled"]) == value
        assert any(t.startswith(f"{m}  ECE {value:.3f}") for t in titles), (m, titles)
    titles.clear()
    out = evaluate(
        "tiny-clip-vit", "world:single?per_class=6&split=1", ["protonet", "zeroshot"], protocol="split",
        output=tmp_path / "split", shots=[1, 2], seeds=[1], pretrained=False, report=False,
    )  # fmt: skip
    summary = _csv(out.directory / "summary.csv")
    table = _csv(out.directory / "reliability.csv")
    for (m, k), row in summary.items():
        assert float(table[(m, k)]["ece_pooled"]) == float(row["ece"]), (m, k)
    for m in ("protonet", "zeroshot"):  # the figure shows the largest K
        assert any(t.startswith(f"{m}  ECE {float(summary[(m, '2')]['ece']):.3f}") for t in titles)
