"""The relevance maths: Chefer et al.'s rule, attention rollout, the [CLS] row and Grad-CAM, each
against a closed form on one layer or a plain loop written another way."""

import pytest
import torch

from focusshot.attention.relevance import cls_attention, grad_cam, gradient_rollout, plain_rollout


def _probs(b: int, h: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, n, generator=g).softmax(-1)


def test_gradient_rollout_on_one_layer_is_the_cls_row_of_the_positive_product() -> None:
    a = _probs(2, 3, 1 + 4, 0)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    expected = (g * a).clamp_min(0).mean(1)[:, 0, 1:]  # R = I + A_bar: row 0 at the patches
    torch.testing.assert_close(gradient_rollout([a], [g], 1, 4), expected)


def test_gradient_rollout_matches_a_per_image_loop_over_layers_and_heads() -> None:
    layers = [_probs(2, 2, 2 + 9 + 1, s) for s in range(3)]  # 2 prefix tokens, 9 patches, 1 trailing
    grads = [
        torch.randn(a.shape, generator=torch.Generator().manual_seed(10 + i)) for i, a in enumerate(layers)
    ]
    out = gradient_rollout(layers, grads, 2, 9)
    for i in range(2):
        r = torch.eye(12, dtype=torch.float64)
        for a, g in zip(layers, grads, strict=True):
            heads = [(g[i, k].double() * a[i, k].double()).clamp(min=0) for k in range(a.shape[1])]
            r = r + (sum(heads) / len(heads)) @ r
        torch.testing.assert_close(out[i], r[0, 2:11].float())
    assert (out >= 0).all()


def test_zero_gradient_leaves_nothing_relevant() -> None:
    a = _probs(1, 2, 5, 3)
    assert gradient_rollout([a, a], [torch.zeros_like(a)] * 2, 1, 4).abs().sum() == 0


def test_plain_rollout_on_one_layer_halves_the_cls_row() -> None:
    a = _probs(2, 4, 1 + 6, 4)
    torch.testing.assert_close(plain_rollout([a], 1, 6), a.mean(1)[:, 0, 1:] / 2)
    torch.testing.assert_close(cls_attention(a, 1, 6), a.mean(1)[:, 0, 1:])


def test_grad_cam_weights_channels_by_their_mean_gradient() -> None:
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])  # one prefix token
    grads = torch.tensor([[[5.0, 5.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]]])  # spatial mean (1, -1)
    torch.testing.assert_close(grad_cam(tokens, grads, 1), torch.tensor([[1.0, 0.0, 0.0]]))


def test_shapes_are_checked() -> None:
    a = _probs(1, 2, 5, 0)
    with pytest.raises(ValueError, match="patches"):
        gradient_rollout([a], [a], 1, 5)
    with pytest.raises(ValueError, match="match"):
        gradient_rollout([a, a], [a], 1, 4)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        grad_cam(torch.zeros(2, 3), torch.zeros(2, 3))
