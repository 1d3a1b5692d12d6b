"""CLIP-LoRA on tiny CLIPs: LoRA in q, k, v of both towers only, starts as zero-shot CLIP with its
template, the step rule 500 x K, frozen backbone untouched, fits (batch norms included) reload."""

import pytest
import torch

import focusshot
from focusshot.heads import create_head
from focusshot.methods.base import FitContext, create_method, fitted_from_state
from focusshot.methods.text import class_text_embeddings
from tests.methods.helpers import random_support

NAMES = ["red circle", "blue square", "cat"]


@pytest.fixture(scope="module", params=["tiny-clip-vit", "tiny-clip-rn"])
def clip(request):
    return focusshot.create_backbone(request.param, seed=0).eval()


def test_adapters_start_as_zero_shot_clip_with_the_template(clip) -> None:
    m = create_method("clip_lora")
    model, _ = m.build(clip, torch.Generator().manual_seed(0))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any(n.startswith("visual.") for n in names) and any(n.startswith("text.") for n in names)
    assert all(any(f".attn.{t}." in n for t in "qkv") for n in names)
    x, _ = random_support(clip, 1, 3)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), clip.forward_features(x), atol=1e-5)
        text = torch.nn.functional.normalize(model.text(m._ids(model, NAMES)), dim=-1)
    expected = class_text_embeddings(clip, NAMES, ["a photo of a {}."])[:, 0]
    assert torch.allclose(text, expected, atol=1e-5)
    zs = create_head("zeroshot", text_embeddings=expected, scale=100.0).classifier()
    assert torch.allclose(
        100 * torch.nn.functional.normalize(clip.forward_features(x)) @ text.T,
        zs.logits(clip.forward_features(x)),
        atol=1e-3,
    )


def test_fit_trains_500k_steps_leaves_the_backbone_and_reloads(clip) -> None:
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    x, y = random_support(clip, 2, 3)
    m = create_method("clip_lora", {"iters_per_shot": 3})
    fitted = m.fit(x, y, FitContext(clip, 3, class_names=NAMES, seed=1))
    assert fitted.info()["steps"] == 3 * 2  # iters_per_shot x K
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())
    q, _ = random_support(clip, 1, 3, seed=4)
    again = fitted_from_state(fitted.state_dict(), fitted.config(), clip)
    assert torch.allclose(again.logits(q), fitted.logits(q), atol=1e-5)
    twice = m.fit(x, y, FitContext(clip, 3, class_names=NAMES, seed=1))
    assert torch.equal(twice.logits(q), fitted.logits(q))


def test_vision_only_and_errors(clip) -> None:
    model, _ = create_method("clip_lora", {"encoders": "vision"}).build(clip, torch.Generator())
    assert not any(p.requires_grad for p in model.text.parameters())
    with pytest.raises(ValueError, match="encoders"):
        create_method("clip_lora", {"encoders": "image"})
    with pytest.raises(ValueError, match="class names"):
        x, y = random_support(clip, 1, 3)
        create_method("clip_lora", {"steps": 1}).fit(x, y, FitContext(clip, 3))


def test_wise_zero_is_zero_shot_clip(clip) -> None:
    x, y = random_support(clip, 2, 3)
    fitted = create_method("clip_lora", {"steps": 3, "lr": 1e-2, "wise": 0.0}).fit(
        x, y, FitContext(clip, 3, class_names=NAMES)
    )
    text = class_text_embeddings(clip, NAMES, ["a photo of a {}."])[:, 0]
    scale = float(clip.logit_scale.detach().exp().clamp(max=100))
    with torch.no_grad():
        zs = (
            create_head("zeroshot", text_embeddings=text, scale=scale)
            .classifier()
            .logits(clip.forward_features(x))
        )
    assert torch.allclose(fitted.logits(x), zs, atol=1e-3)
