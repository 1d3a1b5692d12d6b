"""FALIP's foveal bias (official maths), rollout boxes, and boxes through resize + centre crop."""

import math

import numpy as np
import pytest
import torch

from focusshot.attention.foveal import box_patch_range, foveal_bias, gaussian_region, rollout_box
from focusshot.backbones.base import Preprocess
from focusshot.data.transforms import box_to_crop
from focusshot.evaluation.attention_metrics import resize_crop_mask

NAN = float("nan")


def test_gaussian_region_is_min_max_normalised_times_alpha() -> None:
    # a single patch, or a flat region, is alpha everywhere (the official epsilon keeps it defined)
    assert torch.allclose(gaussian_region(1, 1, 100.0, 0.2), torch.full((1, 1), 0.2, dtype=torch.float64))
    assert torch.allclose(gaussian_region(2, 2, 100.0, 0.2), torch.full((2, 2), 0.2, dtype=torch.float64))
    g = gaussian_region(5, 7, 100.0, 0.2)
    assert g.shape == (5, 7)
    assert math.isclose(float(g[2, 3]), 0.2, rel_tol=1e-9)  # peak at the centre patch
    assert float(g.min()) < 1e-3 and float(g[0, 0]) == float(g.min())  # ~0 at the far corners
    # sigma is in patches: 100 patches is nearly flat before normalisation, so after it the dome is
    # the paraboloid 1 - d^2 / d_max^2 (independent of sigma); a sigma of 1 patch is much narrower
    ys, xs = torch.meshgrid(torch.arange(5.0) - 2, torch.arange(7.0) - 3, indexing="ij")
    d2 = (ys**2 + xs**2).double()
    assert torch.allclose(g / 0.2, 1 - d2 / d2.max(), atol=5e-3)  # (the epsilon lifts the corners)
    narrow = gaussian_region(5, 7, 1.0, 0.2)
    assert float(narrow[2, 1]) < float(g[2, 1]) - 0.05
    with pytest.raises(ValueError, match="sigma must be positive"):
        gaussian_region(2, 2, 0.0, 0.2)


def test_box_patch_range_takes_the_patches_the_box_overlaps() -> None:
    assert box_patch_range((0.25, 0.25, 0.5, 0.5), (4, 4)) == (1, 1, 1, 1)  # edges on boundaries
    assert box_patch_range((0.2, 0.3, 0.55, 0.9), (4, 4)) == (1, 0, 3, 2)
    assert box_patch_range((0.0, 0.0, 1.0, 1.0), (3, 5)) == (0, 0, 2, 4)
    assert box_patch_range((0.51, 0.51, 0.52, 0.52), (4, 4)) == (2, 2, 2, 2)  # thinner than a patch


def test_foveal_bias_touches_only_the_cls_row_at_the_box_patches() -> None:
    boxes = torch.tensor([[0.25, 0.0, 0.75, 0.5], [NAN, NAN, NAN, NAN], [0.0, 0.0, 1.0, 1.0]])
    prefix, grid = 3, (4, 4)  # [CLS] + 2 registers
    bias = foveal_bias(boxes, grid, prefix, num_tokens=prefix + 16 + 2, alpha=0.5, sigma=100.0)
    assert bias.shape == (3, 1, 21, 21) and bias.dtype == torch.float32
    nz = bias.nonzero().tolist()
    assert {(r, c) for _, _, r, c in nz} <= {(0, c) for c in range(prefix, prefix + 16)}
    # image 0: rows 0-1, cols 1-2 of the grid, a flat 2x2 region -> alpha at exactly those patches
    expect = torch.zeros(4, 4)
    expect[0:2, 1:3] = 0.5
    assert torch.allclose(bias[0, 0, 0, prefix : prefix + 16], expect.flatten())
    assert not bias[0, 0, 0, :prefix].any() and not bias[0, 0, 0, prefix + 16 :].any()
    assert not bias[1].any()  # a NaN box: no region, no bias
    # the whole-image box gives the official dome over every patch (this is not plain CLIP)
    whole = bias[2, 0, 0, prefix : prefix + 16].reshape(4, 4)
    assert torch.allclose(whole, gaussian_region(4, 4, 100.0, 0.5).float())
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        foveal_bias(boxes, grid, 0)


def test_rollout_box_finds_where_cls_looks() -> None:
    n, grid = 1 + 16, (4, 4)
    probs = torch.full((2, 2, n, n), 1.0 / n)
    probs[:, :, 0] = 0.0
    probs[0, :, 0, 1 + 2 * 4 + 3] = 1.0  # image 0: [CLS] looks at patch (row 2, col 3)
    probs[1, :, 0, 1 + 0 * 4 + 1] = 0.6  # image 1: mostly at (0, 1), some at (3, 2)
    probs[1, :, 0, 1 + 3 * 4 + 2] = 0.4
    box = rollout_box([probs], grid, 1, keep=0.5)  # one layer: patch shares 0.6 / 0.4
    assert box.shape == (2, 4)
    assert torch.allclose(box[0], torch.tensor([0.75, 0.5, 1.0, 0.75]))
    assert torch.allclose(box[1], torch.tensor([0.25, 0.0, 0.5, 0.25]))
    assert torch.allclose(rollout_box([probs, probs], grid, 1, keep=0.5)[0], box[0])  # two layers
    wide = rollout_box([probs], grid, 1, keep=0.8)  # both patches: their bounding box
    assert torch.allclose(wide[1], torch.tensor([0.25, 0.0, 0.75, 1.0]))
    assert torch.allclose(rollout_box([probs], grid, 1, keep=1.0)[1], wide[1])  # zero-mass patches left out
    uniform = rollout_box([torch.full((1, 2, n, n), 1.0 / n)], grid, 1, keep=1.0)
    assert torch.allclose(uniform[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="keep"):
        rollout_box([probs], grid, 1, keep=0.0)


@pytest.mark.parametrize(
    "size,box,pre",
    [
        ((64, 48), (10, 5, 40, 30), Preprocess(resize=32, crop=32)),  # landscape: side crop
        ((40, 90), (3, 20, 35, 80), Preprocess(resize=32, crop=28)),  # portrait, crop < resize
        ((200, 100), (0, 0, 200, 100), Preprocess(resize=224, crop=224)),  # whole image
        ((20, 20), (2, 4, 18, 12), Preprocess(resize=16, crop=24)),  # padded: crop > resize
    ],
)
def test_box_to_crop_follows_resize_and_centre_crop(size, box, pre) -> None:
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    cropped = resize_crop_mask(mask, pre.resize, pre.crop)
    ys, xs = np.nonzero(cropped)
    x0, y0, x1, y1 = box_to_crop(box, size, pre)
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    c = pre.crop
    got = np.array([x0 * c, y0 * c, x1 * c, y1 * c])
    want = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    assert np.abs(got - want).max() <= 1.0  # within a pixel of the nearest-neighbour mask


def test_box_to_crop_rejects_empty_and_outside_boxes() -> None:
    pre = Preprocess(resize=32, crop=32)
    with pytest.raises(ValueError, match="empty or reversed"):
        box_to_crop((5, 5, 5, 9), (32, 32), pre)
    with pytest.raises(ValueError, match="outside the 32x32 centre crop"):
        box_to_crop((0, 0, 8, 32), (64, 32), pre)  # the left quarter is cropped away
