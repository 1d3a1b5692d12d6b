"""Zero-shot CLIP, Tip-Adapter and Tip-Adapter-F against their direct formulas."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from focusshot.heads import create_head
from focusshot.heads.tip_adapter import search_alpha_beta


def text_embeddings(classes: int, templates: int, dim: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, templates, dim, generator=g, dtype=torch.float64)


def unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_zeroshot_formula(clustered) -> None:
    text = text_embeddings(4, 3, 16)
    xs, ys, xq, _ = clustered(4, 2, 16, seed=1, n_query=3)
    fitted = create_head("zeroshot", text_embeddings=text, scale=50.0).fit(xs, ys)
    weights = unit(unit(text).mean(1))
    torch.testing.assert_close(fitted.logits(xq), 50.0 * unit(xq) @ weights.T)
    # a (C, D) tensor is one template per class
    single = create_head("zeroshot", text_embeddings=text[:, 0]).classifier()
    torch.testing.assert_close(single.weight, unit(text[:, 0]))


def test_zeroshot_ignores_support_but_checks_it() -> None:
    text = text_embeddings(3, 2, 8)
    head = create_head("zeroshot", text_embeddings=text)
    q = torch.randn(5, 8, dtype=torch.float64)
    # classes without support are fine; an empty support set is fine
    a = head.fit(torch.randn(1, 8, dtype=torch.float64), torch.tensor([2]))
    b = head.fit(torch.zeros(0, 8, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    torch.testing.assert_close(a.logits(q), b.logits(q))
    with pytest.raises(ValueError, match="out of range"):
        head.fit(torch.randn(2, 8, dtype=torch.float64), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_classes=4"):
        head.fit(torch.randn(2, 8, dtype=torch.float64), torch.tensor([0, 1]), num_classes=4)
    with pytest.raises(ValueError, match="dimension 7"):
        head.fit(torch.randn(2, 7, dtype=torch.float64), torch.tensor([0, 1]))


def test_tip_adapter_formula(clustered) -> None:
    text = text_embeddings(4, 2, 12)
    xs, ys, xq, _ = clustered(4, 3, 12, seed=2, n_query=4)
    fitted = create_head("tip_adapter", text_embeddings=text, alpha=1.7, beta=4.0).fit(xs, ys)
    f, keys = unit(xq), unit(xs)
    values = torch.nn.functional.one_hot(ys, 4).double()
    affinity = torch.exp(-4.0 * (1 - f @ keys.T))
    expected = 100.0 * f @ unit(unit(text).mean(1)).T + 1.7 * affinity @ values
    torch.testing.assert_close(fitted.logits(xq), expected)
    assert (fitted.alpha, fitted.beta) == (1.7, 4.0)
    defaults = create_head("tip_adapter", text_embeddings=text)
    assert (defaults.alpha, defaults.beta) == (1.0, 5.5)


def test_tip_adapter_search_is_the_best_grid_pair(clustered) -> None:
    text = text_embeddings(3, 1, 10, seed=5)
    xs, ys, xv, yv = clustered(3, 2, 10, seed=3, spread=1.5, n_query=12)
    alphas, betas = (0.1, 1.0, 5.0, 50.0), (0.5, 3.0, 8.0)
    head = create_head("tip_adapter", text_embeddings=text, alpha_grid=alphas, beta_grid=betas)
    fitted = head.fit(xs, ys, val_features=xv, val_labels=yv)

    def accuracy(alpha: float, beta: float) -> float:
        fixed = create_head("tip_adapter", text_embeddings=text, alpha=alpha, beta=beta).fit(xs, ys)
        return float((fixed.predict(xv) == yv).double().mean())

    table = {(a, b): accuracy(a, b) for b in betas for a in alphas}
    assert fitted.info["val_accuracy"] == max(table.values())
    assert table[(fitted.alpha, fitted.beta)] == max(table.values())
    # ties are broken by grid order: beta outer, alpha inner, first best wins
    first_best = next(k for k, v in table.items() if v == max(table.values()))
    assert (fitted.alpha, fitted.beta) == first_best


def test_search_alpha_beta_chunks_consistently() -> None:
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(30, 4, generator=g, dtype=torch.float64)
    aff = torch.rand(30, 8, generator=g, dtype=torch.float64)
    values = torch.nn.functional.one_hot(torch.arange(8) % 4, 4).double()
    labels = torch.randint(0, 4, (30,), generator=g)
    grid = tuple(0.5 * k for k in range(1, 12))
    a, b, acc = search_alpha_beta(zs, aff, values, labels, grid, (1.0, 2.0))
    assert grid.count(a) == 1 and b in (1.0, 2.0) and 0.0 <= acc <= 1.0


def test_tip_adapter_f_trains_deterministically(clustered) -> None:
    text = text_embeddings(4, 2, 12, seed=1)
    xs, ys, xq, _ = clustered(4, 4, 12, seed=4, spread=1.2, n_query=3, dtype=torch.float32)
    text = text.float()
    head = create_head("tip_adapter_f", text_embeddings=text, epochs=5, batch_size=5, lr=1e-2, seed=3)
    state = torch.random.get_rng_state()
    a = head.fit(xs, ys)
    assert torch.equal(state, torch.random.get_rng_state())  # no global random state used
    b = head.fit(xs, ys)
    assert torch.equal(a.keys, b.keys)
    assert not torch.allclose(a.keys, unit(xs))  # the keys moved
    losses = a.info["train_loss"]
    assert len(losses) == 5 and losses[-1] < losses[0]
    other_seed = create_head("tip_adapter_f", text_embeddings=text, epochs=5, batch_size=5, lr=1e-2, seed=4)
    assert not torch.equal(other_seed.fit(xs, ys).keys, a.keys)
    # zero epochs is plain Tip-Adapter
    untrained = create_head("tip_adapter_f", text_embeddings=text, epochs=0).fit(xs, ys)
    plain = create_head("tip_adapter", text_embeddings=text).fit(xs, ys)
    torch.testing.assert_close(untrained.logits(xq), plain.logits(xq))


def test_tip_adapter_f_fits_under_inference_mode(clustered) -> None:
    text = text_embeddings(3, 1, 6, seed=2)
    xs, ys, xq, _ = clustered(3, 2, 6, seed=5, n_query=2)
    head = create_head("tip_adapter_f", text_embeddings=text, epochs=2)
    plain = head.fit(xs, ys)
    with torch.inference_mode():
        inside = head.fit(xs.clone(), ys.clone())
    torch.testing.assert_close(inside.logits(xq), plain.logits(xq))


def test_tip_adapter_with_alpha_zero_is_zero_shot(clustered) -> None:
    text = text_embeddings(4, 2, 12, seed=3)
    xs, ys, xq, _ = clustered(4, 2, 12, seed=4, n_query=5)
    tip = create_head("tip_adapter", text_embeddings=text, alpha=0.0, beta=3.0).fit(xs, ys)
    zero = create_head("zeroshot", text_embeddings=text, scale=100.0).fit(xs, ys)
    torch.testing.assert_close(tip.logits(xq), zero.logits(xq))
    # a non-zero alpha does move the logits (the check above could not pass by accident)
    other = create_head("tip_adapter", text_embeddings=text, alpha=1.0, beta=3.0).fit(xs, ys)
    assert not torch.allclose(other.logits(xq), zero.logits(xq))
