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
    assert table["a"]["ece"] == pytest.approx(whole, abs=1e-3)
    assert table["b"]["ece"] == pytest.approx(whole, abs=1e-6)  # sums stored to 6 decimals
    assert table["a"]["predictions"] == table["b"]["predictions"] == 120
    assert table["b"]["accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).double().mean()))
    path = save_reliability_figure(pooled, tmp_path / "rel.png", ["b", "a"])
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 0
        assert np.asarray(im).min() < 255  # something was drawn
    with pytest.raises(ValueError, match="no method"):
        save_reliability_figure(pooled, tmp_path / "x.png", ["zzz"])
