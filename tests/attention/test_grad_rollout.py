"""Grad-Rollout (FORT): both variants against hand-computed cases, the PC sign rule, the prompts."""

import itertools

import pytest
import torch

from focusshot.attention.grad_rollout import (
    RolloutSettings,
    first_component,
    fused_rollout,
    position_prompts,
    prompt_count,
)


def _hand_rollout(layers, grad, prefix, fusion, keep_largest):
    """Plain-Python Grad-Rollout of one image: layers are [H][N][N] nested lists."""
    p = len(grad)
    result = [[float(i == j) for j in range(p)] for i in range(p)]
    for att in layers:
        heads = len(att)
        step = []
        for i in range(p):
            row = []
            for j in range(p):
                vals = [att[h][prefix + i][prefix + j] for h in range(heads)]
                a = min(vals) if fusion == "min" else sum(vals) / heads
                row.append(a + grad[j])
            if keep_largest is not None:  # zero all but the keep_largest largest entries
                ranked = sorted(range(p), key=lambda j: row[j], reverse=True)
                row = [row[j] if j in ranked[:keep_largest] else 0.0 for j in range(p)]
            row = [(row[j] + (1.0 if i == j else 0.0)) / 2 for j in range(p)]
            total = sum(row)
            step.append([v / total for v in row])
        result = [[sum(step[i][k] * result[k][j] for k in range(p)) for j in range(p)] for i in range(p)]
    return [sum(result[i][j] for i in range(p)) / p for j in range(p)]


@pytest.mark.parametrize(("variant", "fusion", "keep"), [("code", "min", 1), ("paper", "mean", None)])
def test_both_rollout_variants_match_a_hand_computed_case(variant, fusion, keep) -> None:
    g = torch.Generator().manual_seed(3)
    b, heads, prefix, p = 2, 3, 1, 5  # 5 patches: the code keeps 5 - int(4.5) = 1 entry per row
    probs = [torch.rand(b, heads, prefix + p, prefix + p, generator=g).softmax(-1) for _ in range(2)]
    grad = torch.randn(b, p, generator=g) * 0.1
    s = RolloutSettings(variant=variant)
    assert (s.head_fusion, s.row_keep) == (fusion, 0.1 if variant == "code" else 1.0)
    got = fused_rollout(probs, grad, prefix, s.head_fusion, s.row_keep)
    for i in range(b):
        layers = [layer[i].tolist() for layer in probs]
        want = _hand_rollout(layers, grad[i].tolist(), prefix, fusion, keep)
        assert torch.allclose(got[i].double(), torch.tensor(want, dtype=torch.float64), atol=1e-6)
    # the two variants do differ on this input
    other = fused_rollout(probs, grad, prefix, "mean" if fusion == "min" else "min", 1.1 - s.row_keep)
    assert not torch.allclose(got, other, atol=1e-4)


def test_rollout_without_gradient_and_attention_on_one_patch_picks_that_patch() -> None:
    prefix, p = 1, 9
    att = torch.full((1, 2, prefix + p, prefix + p), 0.01)
    att[..., prefix + 4] = 1.0  # every token attends to patch 4
    att = att / att.sum(-1, keepdim=True)
    imp = fused_rollout([att, att], torch.zeros(1, p), prefix, "mean", 1.0)
    assert int(imp.argmax()) == 4
    assert torch.allclose(imp.sum(), torch.tensor(1.0))  # rows of a row-stochastic product sum to 1


def test_first_component_projects_on_the_dominant_direction_and_the_sign_rule_aligns() -> None:
    torch.manual_seed(0)
    p, c = 16, 8
    direction = torch.randn(c)
    weights = torch.zeros(p)
    weights[[2, 3, 10]] = torch.tensor([3.0, 2.0, 4.0])  # the class signal sits in these patches
    grad = weights[:, None] * direction[None, :] + 0.01 * torch.randn(p, c)
    tokens = direction[None, :].expand(p, c)  # grad x input is large and positive on 2, 3, 10
    ref = (grad * tokens).sum(-1)
    aligned = first_component(grad[None], "aligned", ref[None])
    assert set(aligned[0].topk(3).indices.tolist()) == {2, 3, 10}
    assert torch.corrcoef(torch.stack([aligned[0], ref]))[0, 1] > 0.9
    # the rule does not depend on the sign the SVD happens to return: -grad gives the same prompt
    # term with the same reference, while the raw SVD projection flips with it
    assert torch.allclose(first_component(-grad[None], "aligned", ref[None]), aligned, atol=1e-5)
    svd, svd_neg = first_component(grad[None], "svd"), first_component(-grad[None], "svd")
    assert torch.allclose(svd.abs(), aligned.abs(), atol=1e-5)
    assert torch.allclose(svd_neg, -svd, atol=1e-5) or torch.allclose(svd_neg, svd, atol=1e-5)
    with pytest.raises(ValueError, match="reference"):
        first_component(grad[None], "aligned")


def test_position_prompts_are_a_distribution_over_the_top_patches() -> None:
    imp = torch.tensor([[0.1, 0.5, 0.2, 0.05, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0]])
    q = position_prompts(imp, 2)
    assert torch.allclose(q.sum(1), torch.tensor([2.0, 2.0]))
    assert (q >= 0).all() and ((q > 0).sum(1) == 2).all()
    assert torch.allclose(q[0], torch.tensor([0.0, 0.5, 0.0, 0.0, 0.3]) * 2 / 0.8)
    assert q[1].nonzero().flatten().tolist() == [0, 1]  # ties: patch order
    neg = position_prompts(torch.tensor([[-1.0, -2.0, -3.0]]), 2)  # all kept weights clip to 0
    assert torch.allclose(neg, torch.tensor([[1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="top"):
        position_prompts(imp, 6)


def test_prompt_count_is_the_grid_side_unless_given() -> None:
    assert prompt_count((14, 14)) == 14 and prompt_count((7, 7)) == 7 and prompt_count((8, 8)) == 8
    assert prompt_count((14, 14), 20) == 20 and prompt_count((2, 2), 9) == 4
    for bad in itertools.product(["nope"], ["svd"]):
        with pytest.raises(ValueError, match="variant"):
            RolloutSettings(*bad)
    with pytest.raises(ValueError, match="sign"):
        RolloutSettings(sign="up")


def test_importance_is_the_same_in_any_chunking_and_training_only_recordings_skip_no_grad() -> None:
    import focusshot
    from focusshot.attention.grad_rollout import grad_rollout_importance, tail_layers
    from focusshot.attention.record import record

    clip = focusshot.create_backbone("tiny-clip-vit", seed=0).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, clip.preprocess.crop, clip.preprocess.crop, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    head = torch.nn.Linear(clip.num_features, 3)
    grid = clip.grid_size(clip.preprocess.crop)
    args = (clip, clip.forward_features, head, x, y, tail_layers(clip, None), 1, grid[0] * grid[1])
    whole, term = grad_rollout_importance(*args, chunk=16)
    parts, term2 = grad_rollout_importance(*args, chunk=2)
    assert torch.allclose(whole, parts, atol=1e-6) and torch.allclose(term, term2, atol=1e-6)
    with record(clip, "logits", layers=[-1], grad=True, training_only=True) as rec:
        with torch.no_grad():
            clip.forward_features(x)  # a validation pass: nothing kept
        assert rec.calls("logits") == []
        clip.forward_features(x)
        assert rec.take("logits").shape[0] == 5
