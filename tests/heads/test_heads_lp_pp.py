"""LP++ (Huang et al., CVPR 2024): its initialisation, data-driven step sizes, training and selection."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from focusshot.heads import HeadInputError, create_head, fitted_from_state
from focusshot.heads.lp_pp import lp_pp_step_sizes


def _task(n=3, seed=0, C=4, D=16):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(C, D, generator=g), dim=-1)
    means = text + 0.9 * torch.randn(C, D, generator=g)
    y = torch.arange(C).repeat(n)
    return means[y] + torch.randn(len(y), D, generator=g), y, text, means


def test_zero_epochs_is_centroids_plus_the_initial_text_blend() -> None:
    f, y, text, _ = _task()
    fitted = create_head("lp_pp", text_embeddings=text, epochs=0).fit(f, y)
    fn = F.normalize(f.double(), dim=-1)
    centroids = torch.stack([fn[y == c].mean(0) for c in range(4)])
    alpha0 = 250.0 * torch.stack([(fn[y == c] @ text.double().T).mean(0) for c in range(4)]).mean()
    assert fitted.info["alpha_init"] == pytest.approx(float(alpha0))
    q = torch.randn(5, 16)
    expected = F.normalize(q.double(), dim=-1) @ (centroids + alpha0 * text.double()).T
    assert torch.allclose(fitted.logits(q).double(), expected, atol=1e-5)


def test_step_sizes_follow_the_largest_eigenvalue_and_text_energy() -> None:
    f, _, text, _ = _task()
    fn = F.normalize(f.double(), dim=-1)
    lr_w, lr_a = lp_pp_step_sizes(fn, text.double())
    lam = np.linalg.eigvalsh((fn.T @ fn).numpy()).max()
    assert lr_w == pytest.approx(4 * len(fn) / lam)
    assert lr_a == pytest.approx(len(fn) / (4 * float(((fn @ text.double().T) ** 2).sum(0).max())))


def test_training_lowers_the_loss_and_round_trips() -> None:
    f, y, text, _ = _task()
    init = create_head("lp_pp", text_embeddings=text, epochs=0).fit(f, y)
    fitted = create_head("lp_pp", text_embeddings=text, epochs=50).fit(f, y)
    loss0 = F.cross_entropy(init.logits(f), y)
    assert F.cross_entropy(fitted.logits(f), y) < loss0
    again = fitted_from_state(fitted.state_dict(), fitted.config())
    assert torch.equal(again.logits(f), fitted.logits(f))
    twice = create_head("lp_pp", text_embeddings=text, epochs=50).fit(f, y)
    assert torch.equal(twice.logits(f), fitted.logits(f))


def test_accumulated_alpha_gradient_differs_and_validation_selects() -> None:
    f, y, text, _ = _task()
    cur = create_head("lp_pp", text_embeddings=text, epochs=40).fit(f, y)
    acc = create_head("lp_pp", text_embeddings=text, epochs=40, alpha_grad="accumulate").fit(f, y)
    assert cur.info["alpha_mean"] != acc.info["alpha_mean"]
    v, vy, _, _ = _task(2, seed=3)
    sel = create_head("lp_pp", text_embeddings=text, epochs=30).fit(f, y, val_features=v, val_labels=vy)
    assert sel.info["selected_on"] == "val" and 0 <= sel.info["best_epoch"] < 30
    assert sel.info["val_accuracy"] == pytest.approx(float((sel.logits(v).argmax(1) == vy).double().mean()))


def test_bad_input_is_refused() -> None:
    f, y, text, _ = _task()
    with pytest.raises(HeadInputError):
        create_head("lp_pp", text_embeddings=text).fit(f[:, :8], y)
    with pytest.raises(ValueError, match="alpha_grad"):
        create_head("lp_pp", text_embeddings=text, alpha_grad="sum")
