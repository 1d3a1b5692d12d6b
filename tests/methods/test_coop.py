"""CoOp on tiny CLIPs: its initial prompts equal zero-shot's template, only the context trains, the
cut text sequence changes nothing, fits save and load, over-long prompts fail naming the class."""

import pytest
import torch

import focusshot
from focusshot.heads import create_head
from focusshot.methods.base import FitContext, create_method, fitted_from_state
from focusshot.methods.coop import CoOpOptions, PromptLearner, initial_context, prompt_ids
from focusshot.methods.text import class_text_embeddings

NAMES = ["red circle", "blue_square", "cat"]


@pytest.fixture(scope="module", params=["tiny-clip-vit", "tiny-clip-rn"])
def clip(request):
    return focusshot.create_backbone(request.param, seed=0).eval()


def _features(clip, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    crop = clip.preprocess.crop
    with torch.no_grad():
        f = clip.forward_features(torch.randn(3 * n, 3, crop, crop, generator=g))
    return f, torch.arange(3).repeat(n)


def test_initial_prompt_is_the_zero_shot_template(clip) -> None:
    opts = CoOpOptions(ctx_init="a photo of a")
    ctx = initial_context(clip, opts, 3, torch.Generator())
    learner = PromptLearner(clip.text, prompt_ids(clip, NAMES, ctx.shape[0]), ctx)
    text = class_text_embeddings(clip, NAMES, ["a photo of a {}."])[:, 0]
    with torch.no_grad():
        assert torch.allclose(learner(), text, atol=1e-5)
    # the fitted classifier of that prompt scores as zero-shot CLIP with the template
    f, _ = _features(clip)
    zs = create_head("zeroshot", text_embeddings=text, scale=100.0).classifier()
    assert torch.allclose(
        100.0 * torch.nn.functional.normalize(f) @ learner().detach().T, zs.logits(f), atol=1e-3
    )


def test_cutting_the_sequence_after_the_longest_prompt_changes_nothing(clip) -> None:
    ids = clip.tokenize(["a photo of a cat.", "dog."])
    full = clip.text(ids)
    cut = ids[:, : int(clip.text.eot_positions(ids).max()) + 1]
    assert cut.shape[1] < ids.shape[1]
    assert torch.allclose(clip.text(cut), full, atol=1e-5)


def test_training_changes_only_the_context(clip) -> None:
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    f, y = _features(clip)
    m = create_method("coop", {"n_ctx": 4, "epochs": 5, "lr": 0.05})
    fitted = m.fit(f, y, FitContext(clip, 3, class_names=NAMES, seed=1))
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())
    init = initial_context(clip, CoOpOptions(n_ctx=4), 3, torch.Generator().manual_seed(1))
    assert fitted.ctx.shape == init.shape == (4, clip.text.cfg.width)
    assert not torch.allclose(fitted.ctx, init)
    assert fitted.info()["steps"] == 5 and fitted.info()["n_ctx"] == 4
    # the learned context is what produces the stored class features
    learner = PromptLearner(clip.text, prompt_ids(clip, NAMES, 4), fitted.ctx)
    with torch.no_grad():
        assert torch.allclose(learner(), fitted.weights, atol=1e-5)


def test_class_specific_context_and_save_load(clip) -> None:
    f, y = _features(clip)
    m = create_method("coop", {"n_ctx": 3, "epochs": 3, "class_specific": True})
    fitted = m.fit(f, y, FitContext(clip, 3, class_names=NAMES, seed=2))
    assert fitted.ctx.shape == (3, 3, clip.text.cfg.width)
    q, _ = _features(clip, 1, seed=5)
    again = fitted_from_state(fitted.state_dict(), fitted.config(), clip)
    assert torch.equal(again.logits(q), fitted.logits(q))
    twice = m.fit(f, y, FitContext(clip, 3, class_names=NAMES, seed=2))
    assert torch.equal(twice.logits(q), fitted.logits(q))


def test_schedule_and_errors(clip) -> None:
    m = create_method("coop")
    assert (m._epochs(3, 3), m._epochs(12, 3), m._epochs(48, 3)) == (50, 100, 200)
    f, y = _features(clip)
    long = ["a very very very very very long class name indeed"]
    with pytest.raises(ValueError, match="context length"):
        create_method("coop", {"n_ctx": 14}).fit(f[:1], y[:1], FitContext(clip, 1, class_names=long))
    with pytest.raises(ValueError, match="class names"):
        create_method("coop", {"n_ctx": 2}).fit(f, y, FitContext(clip, 3))
    with pytest.raises(ValueError, match="CLIP"):
        create_method("coop").prefix(focusshot.create_backbone("tiny-vit", seed=0))
