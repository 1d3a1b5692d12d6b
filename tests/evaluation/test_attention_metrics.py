"""[CLS]-attention metrics against target masks: hand-built maps, mask geometry, real tiny backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import focusshot
from focusshot.attention import record
from focusshot.data import world as w
from focusshot.data.transforms import make_transform
from focusshot.evaluation.attention_metrics import (
    NoGlobalClsError,
    cls_attention_metrics,
    measure_attention,
    patch_target_weights,
    resize_crop_mask,
    transform_masks,
)


def _probs_from_cls_rows(cls_rows: torch.Tensor, n: int) -> torch.Tensor:
    """(B, heads, N) [CLS] rows -> (B, heads, N, N) probabilities with uniform other rows."""
    b, h, _ = cls_rows.shape
    probs = torch.full((b, h, n, n), 1.0 / n)
    probs[:, :, 0, :] = cls_rows
    return probs


def _top_left_mask(b: int = 1) -> torch.Tensor:
    """(b, 8, 8) masks covering exactly the top-left patch of a 2x2 grid of 4x4 patches."""
    m = torch.zeros(b, 8, 8, dtype=torch.bool)
    m[:, :4, :4] = True
    return m


def test_all_mass_on_target_and_uniform() -> None:
    # 1 prefix token + 2x2 patches; the target is patch 0
    focused = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    uniform = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])  # 0.2 on [CLS] itself: dropped, renormalised
    rows = torch.stack([focused, uniform]).unsqueeze(1).repeat(1, 3, 1)  # (2, 3 heads, 5)
    out = cls_attention_metrics(_probs_from_cls_rows(rows, 5), _top_left_mask(2), 1, (2, 2))
    assert set(out) == {"cls_target_mass", "patches_95", "target_area", "prefix_mass"}
    assert out["cls_target_mass"].tolist() == pytest.approx([1.0, 0.25])
    assert out["target_area"].tolist() == pytest.approx([0.25, 0.25])
    assert out["patches_95"].tolist() == [1, 4]
    assert out["prefix_mass"].tolist() == pytest.approx([0.0, 0.2])
    assert out["patches_95"].dtype == torch.int64


def test_a_row_with_no_patch_attention_is_marked_not_raised() -> None:
    # image 0: every head's [CLS] row on [CLS] itself (softmax underflow after a wild fit); image 1
    # normal. The first has no patch distribution: NaN mass, 0 patches, all mass on the prefix.
    collapsed = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    focused = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])
    rows = torch.stack([collapsed, focused]).unsqueeze(1).repeat(1, 2, 1)
    out = cls_attention_metrics(_probs_from_cls_rows(rows, 5), _top_left_mask(2), 1, (2, 2))
    assert torch.isnan(out["cls_target_mass"][0]) and out["cls_target_mass"][1].item() == pytest.approx(1.0)
    assert out["patches_95"].tolist() == [0, 1]
    assert out["prefix_mass"].tolist() == pytest.approx([1.0, 0.5])
    assert out["target_area"].tolist() == pytest.approx([0.25, 0.25])


def test_heads_are_averaged_and_partial_patches_weighted() -> None:
    # head 0 looks only at patch 0, head 1 only at patch 3 -> half the mass on patch 0
    rows = torch.tensor([[[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]])
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :2, :4] = True  # half of patch 0
    out = cls_attention_metrics(_probs_from_cls_rows(rows, 5), mask, 1, (2, 2))
    assert out["cls_target_mass"].item() == pytest.approx(0.25)
    assert out["target_area"].item() == pytest.approx(0.5 / 4)
    assert out["patches_95"].item() == 2


def test_patches_95_on_a_known_map_and_registers() -> None:
    # 3 prefix tokens ([CLS] + 2 registers), 2x2 patches, patch mass 0.5 / 0.3 / 0.15 / 0.05
    patch = torch.tensor([0.05, 0.5, 0.15, 0.3])
    row = torch.cat([torch.tensor([0.1, 0.2, 0.2]), 0.5 * patch])
    probs = _probs_from_cls_rows(row.view(1, 1, -1), 7)
    out = cls_attention_metrics(probs, _top_left_mask(), 3, (2, 2))
    assert out["patches_95"].item() == 3  # 0.5 + 0.3 + 0.15 = 0.95
    assert out["cls_target_mass"].item() == pytest.approx(0.05)
    assert out["prefix_mass"].item() == pytest.approx(0.5)
    assert cls_attention_metrics(probs, _top_left_mask(), 3, (2, 2), coverage=0.5)["patches_95"].item() == 1
    assert cls_attention_metrics(probs, _top_left_mask(), 3, (2, 2), coverage=1.0)["patches_95"].item() == 4


def test_shape_errors() -> None:
    probs = torch.full((1, 1, 5, 5), 0.2)
    with pytest.raises(ValueError, match="prefix tokens"):
        cls_attention_metrics(probs, _top_left_mask(), 1, (3, 3))
    with pytest.raises(NoGlobalClsError):
        cls_attention_metrics(torch.full((1, 1, 4, 4), 0.25), _top_left_mask(), 0, (2, 2))
    with pytest.raises(ValueError, match="masks must be"):
        cls_attention_metrics(probs, _top_left_mask(2), 1, (2, 2))


def test_patch_weights_drop_the_remainder() -> None:
    # a 9x9 input on a 2x2 grid: patches are 4x4, the last row/column is ignored (conv stride)
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 8, :] = True
    m[0, :, 8] = True
    m[0, 4:8, 4:6] = True
    assert patch_target_weights(m, (2, 2)).tolist() == [[0.0, 0.0, 0.0, 0.5]]


def test_resize_crop_mask_geometry() -> None:
    # a 10x20 (H x W) mask, left 10 columns set; resize shorter side to 5 -> 5x10, centre crop 5:
    # the crop starts at column round(2.5) = 2, so columns 2..4 of the resized mask are kept
    mask = np.zeros((10, 20), dtype=bool)
    mask[:, :10] = True
    out = resize_crop_mask(mask, resize=5, crop=5)
    assert out.shape == (5, 5) and out.dtype == bool
    assert out[:, :3].all() and not out[:, 3:].any()
    # floor rounding places the window at column 2 as well here, and a taller crop pads with False
    padded = resize_crop_mask(np.ones((4, 4), dtype=bool), resize=4, crop=6)
    assert padded.sum() == 16 and not padded[0].any() and not padded[:, 0].any()
    # the mask follows the image through the evaluation transform: a white square on black
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    sq = np.zeros((40, 60), dtype=bool)
    sq[8:24, 30:50] = True
    img[sq] = 255
    from PIL import Image

    class Pre:
        resize, crop, mean, std, interpolation = 20, 20, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"

    x = make_transform(Pre())(Image.fromarray(img))[0].numpy()
    m = transform_masks([sq], Pre())[0].numpy()
    assert m.shape == x.shape == (20, 20)
    assert x[m].mean() > 0.8 and x[~m].mean() < 0.1


def _world_batch(n: int, size: int, seed: int = 0) -> tuple[list, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    pool = w.suite_classes("world:clutter")
    images, masks = [], []
    for _ in range(n):
        img, mask = w.render_scene(w.sample_scene(rng, pool, size, "world:clutter"))
        images.append(img)
        masks.append(mask)
    return images, masks


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-dinov2"])
def test_measure_attention_on_tiny_vits(name: str) -> None:
    torch.manual_seed(0)
    model = focusshot.create_backbone(name)
    images, masks = _world_batch(4, 48)
    tf = make_transform(model.preprocess)
    x = torch.stack([tf(im) for im in images])
    m = transform_masks(masks, model.preprocess)
    assert m.shape == (4, x.shape[2], x.shape[3])
    out = measure_attention(model, x, m)
    rows, cols = model.grid_size()
    for key in ("cls_target_mass", "target_area", "prefix_mass"):
        assert out[key].shape == (4,)
        assert torch.all((out[key] >= 0) & (out[key] <= 1 + 1e-6)), key
    assert torch.all((out["patches_95"] >= 1) & (out["patches_95"] <= rows * cols))
    assert torch.all(out["target_area"] > 0)
    # the same numbers as recording by hand
    with torch.no_grad(), record(model, "probs", layers=[-1]) as rec:
        model.forward_features(x)
    again = cls_attention_metrics(rec.get("probs"), m, model.num_prefix_tokens, (rows, cols))
    for key, value in out.items():
        assert torch.allclose(value.float(), again[key].float(), atol=1e-6), key
    with pytest.raises(ValueError, match="match"):
        measure_attention(model, x, m[:, :-1])


def test_measure_attention_refuses_windowed_attention() -> None:
    model = focusshot.create_backbone("tiny-swin")
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(NoGlobalClsError, match="no global \\[CLS\\]"):
        measure_attention(model, x, torch.zeros(2, 32, 32, dtype=torch.bool))
