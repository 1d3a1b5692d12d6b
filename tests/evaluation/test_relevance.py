"""relevance_maps: the right rule per fit and backbone, the gradient of the explained class's logit
through the model the method runs (checked against autograd run by hand), the fit left untouched."""

from pathlib import Path

import pytest
import torch

import focusshot
from focusshot.attention.record import attention_modules, record
from focusshot.attention.relevance import grad_cam, gradient_rollout
from focusshot.backbones.prefix import Prefix
from focusshot.classifier import Classifier
from focusshot.evaluation.relevance import map_kind, relevance_maps
from focusshot.graph_mode import keep_graph
from tests.methods.helpers import class_folders


@pytest.fixture(scope="module")
def support(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_folders(tmp_path_factory.mktemp("relevance"), classes=3, per_class=2)


def _fit(support: Path, backbone: str, method: str, options: dict | None = None) -> Classifier:
    return focusshot.fit(support, backbone, method, options=options)


def _images(clf: Classifier, support: Path) -> torch.Tensor:
    paths = sorted(str(p) for p in support.rglob("*.png"))
    return clf.embed(paths, prefix=Prefix.images()).features.clone()


def test_protonet_on_a_vit_is_chefers_rule_on_its_own_logits(support: Path) -> None:
    clf = _fit(support, "tiny-vit", "protonet")
    x, b = _images(clf, support), clf.backbone
    target = torch.tensor([2, 1, 0, 2, 1, 0])
    out = relevance_maps(b, clf.fitted, clf.prefix, x, target=target, chunk=4)
    assert out.kind == map_kind(b, clf.fitted) == "gradient_rollout" and out.grid == (4, 4)
    # by hand: every layer's attention of one pass, the gradient of the chosen logits' sum
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad(), record(b, "probs", grad=True) as rec:
        logits = clf.fitted.export_logits(b.forward_features(xg))
        probs = [rec.get("probs", i) for i in range(len(rec.layers))]
        grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), probs)
    torch.testing.assert_close(out.maps, gradient_rollout(probs, grads, 1, 16))
    torch.testing.assert_close(out.logits, logits.detach())
    assert out.target.tolist() == target.tolist()
    assert set(out.references) == {"rollout", "cls_attention"}
    other = relevance_maps(b, clf.fitted, clf.prefix, x, target=(target + 1) % 3)
    assert not torch.allclose(other.maps, out.maps)  # the map is the class's, not the image's
    predicted = relevance_maps(b, clf.fitted, clf.prefix, x)
    assert predicted.target.tolist() == logits.argmax(-1).tolist()


def test_a_tuned_tail_rolls_out_through_the_adapted_model_and_is_left_untouched(support: Path) -> None:
    clf = _fit(support, "tiny-vit", "last_block", {"epochs": 1})
    b, fitted = clf.backbone, clf.fitted
    prefix = clf.prefix
    assert prefix.kind == "tokens"  # blocks before the tuned one are read frozen
    before = {k: v.clone() for k, v in fitted.state_dict().items()}
    x = _images(clf, support)[:3]
    out = relevance_maps(b, fitted, prefix, x)
    model = fitted.attention_model()
    xg = x.clone().requires_grad_(True)
    total = len(attention_modules(b))
    with keep_graph(), record(b, "probs", grad=True, strict=False) as r1:
        with record(model, "probs", grad=True, strict=False) as r2:
            logits = fitted.export_logits(b.forward_blocks(b.embed_tokens(xg), 0, prefix.block))
            probs = [(r2 if r2.calls("probs", i) else r1).get("probs", i) for i in range(total)]
            grads = torch.autograd.grad(logits.gather(1, out.target[:, None]).sum(), probs)
    assert r2.calls("probs", total - 1) and not r2.calls("probs", 0)  # the tuned block ran adapted
    torch.testing.assert_close(out.maps, gradient_rollout(probs, grads, 1, 16))
    assert all(torch.equal(before[k], v) for k, v in fitted.state_dict().items())
    assert all(p.grad is None for p in [*b.parameters(), *model.parameters()])


def test_a_cnn_gets_grad_cam_of_its_last_feature_map(support: Path) -> None:
    clf = _fit(support, "tiny-efficientnet", "logistic")
    b = clf.backbone
    x = _images(clf, support)
    out = relevance_maps(b, clf.fitted, clf.prefix, x)
    assert out.kind == "grad_cam"
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        fmap = b.forward_map(xg)  # (B, C, h, w)
        logits = clf.fitted.export_logits(b.forward_head(fmap.flatten(2).transpose(1, 2)))
        (g,) = torch.autograd.grad(logits.gather(1, out.target[:, None]).sum(), fmap)
    h, w = fmap.shape[2:]
    assert out.grid == (h, w)
    expected = grad_cam(fmap.flatten(2).transpose(1, 2), g.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out.maps, expected)


def test_sav_shows_the_heads_that_voted_for_the_class(support: Path) -> None:
    clf = _fit(support, "tiny-vit", "sav")
    b, fitted = clf.backbone, clf.fitted
    x = _images(clf, support)
    out = relevance_maps(b, fitted, clf.prefix, x)
    assert out.kind == "sav_heads"
    heads, votes = fitted.voting_heads(clf.embed(sorted(str(p) for p in support.rglob("*.png"))).features)
    with torch.inference_mode(), record(b, "probs") as rec:
        b.forward_features(x)
    for i in range(len(x)):
        mine = [k for k in range(len(heads)) if votes[i, k] == out.target[i]] or list(range(len(heads)))
        rows = [rec.get("probs", heads[k][0])[i, heads[k][1], 0, 1:] for k in mine]
        torch.testing.assert_close(out.maps[i], torch.stack(rows).mean(0))
