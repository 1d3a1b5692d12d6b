"""Nearest neighbour and ProtoNet against hand-computed results."""

from __future__ import annotations

import pytest
import torch

from focusshot.heads import create_head

# three 2-d support points, two classes
X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1])
Q = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)


def test_nearest_neighbour_cosine_by_hand() -> None:
    fitted = create_head("nearest_neighbour").fit(X, Y)
    # cosines of q0=(1,0): [1, 0, 0.6]; of q1=(1,1)/sqrt2: [0.7071, 0.7071, 0.98995]
    s = 2**-0.5
    expected = torch.tensor([[1.0, 0.6], [s, 7 * s / 5]], dtype=torch.float64)
    torch.testing.assert_close(fitted.logits(Q), expected)
    assert fitted.predict(Q).tolist() == [0, 1]


def test_nearest_neighbour_euclidean_by_hand() -> None:
    fitted = create_head("nearest_neighbour", metric="euclidean").fit(X, Y)
    # squared distances of q0=(2,0): [1, 8, 17]; of q1=(1,1): [1, 2, 13]
    expected = -torch.tensor([[1.0, 8.0], [1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(fitted.logits(Q), expected)


def test_protonet_euclidean_by_hand() -> None:
    fitted = create_head("protonet", temperature=2.0).fit(X, Y)
    # prototypes: c0 = (1, 0), c1 = (1.5, 3)
    torch.testing.assert_close(fitted.prototypes, torch.tensor([[1.0, 0.0], [1.5, 3.0]], dtype=torch.float64))
    # q0=(2,0): d = [1, 0.25+9]; q1=(1,1): d = [1, 0.25+4]
    expected = -torch.tensor([[1.0, 9.25], [1.0, 4.25]], dtype=torch.float64) / 2.0
    torch.testing.assert_close(fitted.logits(Q), expected)


def test_protonet_cosine_by_hand() -> None:
    fitted = create_head("protonet", distance="cosine", temperature=0.5).fit(X, Y)
    # class 1: normalised (0,1) and (0.6,0.8) -> mean (0.3, 0.9) -> normalised (1, 3)/sqrt(10)
    p1 = torch.tensor([1.0, 3.0], dtype=torch.float64) / 10**0.5
    torch.testing.assert_close(fitted.prototypes[1], p1)
    q = torch.nn.functional.normalize(Q, dim=-1)
    expected = torch.stack([q @ torch.tensor([1.0, 0.0], dtype=torch.float64), q @ p1], 1) / 0.5
    torch.testing.assert_close(fitted.logits(Q), expected)


def test_protonet_prototypes_are_class_means(clustered) -> None:
    xs, ys, _, _ = clustered(5, 4, 7, seed=3)
    fitted = create_head("protonet").fit(xs, ys)
    for c in range(5):
        torch.testing.assert_close(fitted.prototypes[c], xs[ys == c].mean(0))


@pytest.mark.parametrize("name", ["nearest_neighbour", "protonet"])
def test_num_classes_beyond_labels_needs_examples(name: str) -> None:
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no support example"):
        create_head(name).fit(X, Y, num_classes=3)
