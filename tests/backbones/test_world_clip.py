"""The shipped world-clip weights: they load, keep the backbone contract, and classify novel
FocusWorld classes zero-shot far above chance (the README records the measured figure)."""

import pytest
import torch

import focusshot
from focusshot.backbones.world_clip import shipped_weights
from focusshot.data.world import build_world, novel_classes
from focusshot.evaluation.zeroshot import zero_shot_accuracy

pytestmark = pytest.mark.skipif(not shipped_weights().is_file(), reason="world-clip weights not built yet")


def test_shipped_weights_load_and_are_small() -> None:
    assert shipped_weights().stat().st_size <= 10 * 2**20
    model = focusshot.create_backbone("world-clip")
    assert model.identity.source == "package" and model.capabilities.text
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 128)


def test_zero_shot_on_novel_single_object_classes_is_far_above_chance(tmp_path) -> None:
    data = build_world("world:single", tmp_path / "single", image_size=64, per_class=2, seed=0)
    assert data.class_names == [c.name for c in novel_classes()]
    res = zero_shot_accuracy(focusshot.create_backbone("world-clip"), data)
    # 64 novel classes never seen in pretraining: chance is 1/64
    assert res["classes"] == 64
    assert res["top1"] >= 8 * res["chance"], res
