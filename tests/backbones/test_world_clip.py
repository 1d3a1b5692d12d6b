"""The shipped world-clip and world-clip-deep weights: they load, keep the backbone contract, and
classify novel FocusWorld classes zero-shot far above chance (the README records the figures). The
shipped tokenizer vocabulary is FocusWorld's caption vocabulary, and the tokenizer trained on it is
the one the weights were pretrained with."""

import pytest
import torch

import focusshot
from focusshot.backbones.tokenizer import ClipTokenizer
from focusshot.backbones.world_clip import (
    build_world_clip,
    shipped_vocabulary,
    shipped_weights,
    world_tokenizer,
)
from focusshot.data.world import build_world, caption_vocabulary, iter_batches, novel_classes
from focusshot.evaluation.zeroshot import zero_shot_accuracy

ARCHS = [
    pytest.param(
        a, marks=pytest.mark.skipif(not shipped_weights(a).is_file(), reason=f"{a} weights not built")
    )
    for a in ("world-clip", "world-clip-deep")
]


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_weights_load_and_are_small(arch: str) -> None:
    assert shipped_weights(arch).stat().st_size <= 10 * 2**20
    model = focusshot.create_backbone(arch)
    assert model.identity.source == "package" and model.capabilities.text
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 128)


def test_deep_architecture_has_vit_b_depth_and_more_heads() -> None:
    model = build_world_clip(arch="world-clip-deep")
    attn = model.attention_modules()
    assert len(attn) == 12 and attn[0].num_heads == 6
    assert sum(p.numel() for p in model.parameters()) * 2 <= 10 * 2**20  # float16 bytes
    with pytest.raises(ValueError, match="arch"):
        build_world_clip(arch="world-clip-huge")


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_shot_on_novel_single_object_classes_is_far_above_chance(tmp_path, arch: str) -> None:
    data = build_world("world:single", tmp_path / "single", image_size=64, per_class=2, seed=0)
    assert data.class_names == [c.name for c in novel_classes()]
    res = zero_shot_accuracy(focusshot.create_backbone(arch), data)
    # 64 novel classes never seen in pretraining: chance is 1/64
    assert res["classes"] == 64
    assert res["top1"] >= 8 * res["chance"], res


def test_shipped_vocabulary_is_focusworlds_caption_vocabulary() -> None:
    """The asset was written once from ``caption_vocabulary()``; a change to either shows here."""
    assert shipped_vocabulary() == caption_vocabulary()


def test_the_shipped_tokenizer_is_the_one_trained_on_focusworld_captions() -> None:
    words = sorted(caption_vocabulary())
    before = ClipTokenizer.train([" ".join(words)] * 4 + words, vocab_size=768)  # the recipe of the weights
    for tok in (world_tokenizer(shipped_vocabulary()), build_world_clip().tokenizer):
        assert tok.encoder == before.encoder and tok.merges == before.merges
    _, captions, _ = next(iter_batches("world:clutter", 4, 32, seed=0))
    captions = [*captions, "a red striped star and an orange plain circle"]
    assert torch.equal(build_world_clip().tokenize(captions), before(captions, context_length=32))
    tok = build_world_clip().tokenizer
    assert tok.vocab_size == 594
    assert tok.encode("a red striped star and an orange plain circle") == [
        320, 584, 589, 588, 531, 516, 574, 577, 548
    ]  # fmt: skip
