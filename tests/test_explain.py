"""focusshot explain: one figure per image plus explain.json; "before" is the frozen backbone's
attention, "after" the adapted model's (recorded independently here), the prompts pick exactly P
patches, and classifiers without an adapted backbone or a global [CLS] row are refused by name."""

import json

import pytest
import torch
from PIL import Image

import focusshot
from focusshot.attention import grad_rollout as gr
from focusshot.attention.record import record
from focusshot.backbones.prefix import Prefix
from focusshot.classifier import Classifier
from focusshot.cli import main
from focusshot.evaluation.attention_metrics import cls_attention_metrics
from focusshot.explain import coverage_patches, explain
from focusshot.heads.trainable import LinearHead
from focusshot.methods.base import create_method
from focusshot.methods.finetune import AdaptedFitted
from tests.methods.helpers import class_folders


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Support folders and classifier files (lora+fort, lora, protonet) on a tiny random ViT."""
    root = tmp_path_factory.mktemp("explain")
    support = class_folders(root / "support", classes=2, per_class=2)
    files = {}
    for method in ("lora+fort", "lora", "protonet"):
        opts = None if method == "protonet" else {"epochs": 1}
        clf = focusshot.fit(support, "tiny-vit", method, options=opts, cache_dir=root / "cache")
        files[method] = clf.save(root / f"{method.replace('+', '_')}.safetensors")
    return support, files


def _frozen_probs(clf: Classifier, paths) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images ``(B, 3, crop, crop)`` and the frozen backbone's last-layer attention."""
    x = clf.embed(paths, prefix=Prefix.images()).features.clone()
    with torch.inference_mode(), record(clf.backbone, "probs", layers=[-1]) as rec:
        clf.backbone.forward_features(x)
    return x, rec.get("probs")


def test_cli_writes_a_figure_per_image_and_the_record(saved, tmp_path, capsys) -> None:
    support, files = saved
    out = tmp_path / "out"
    args = ["explain", str(files["lora+fort"]), str(support / "class_0"), str(support / "class_1" / "0.png")]
    assert main([*args, "--output", str(out), "--quiet"]) == 0
    assert "after adapting" in capsys.readouterr().out
    info = json.loads((out / "explain.json").read_text())
    assert info["classifier"] == str(files["lora+fort"]) and info["method"] == "lora+fort"
    assert info["seed"] == 0 and info["config"]["options"]["epochs"] == 1
    assert {"focusshot", "torch"} <= set(info["versions"]) and info["coverage"] == 0.95
    assert info["prompts"]["from_fort_options"] and info["prompts"]["top"] == 4  # 4x4 grid: P = 4
    rows = info["images"]
    paths = [str(p) for p in sorted((support / "class_0").iterdir())] + [str(support / "class_1" / "0.png")]
    assert [r["path"] for r in rows] == paths
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == sorted(r["png"] for r in rows) and len(pngs) == 3
    assert Image.open(pngs[0]).size[0] >= 5 * 224  # image, relevance, prompts, before, after
    clf = Classifier.load(files["lora+fort"])
    x, probs = _frozen_probs(clf, paths)
    masks = torch.zeros(len(paths), x.shape[2], x.shape[3], dtype=torch.bool)
    p95 = cls_attention_metrics(probs, masks, 1, (4, 4))["patches_95"].tolist()
    assert [r["patches_before"] for r in rows] == p95
    labels = torch.tensor([clf.class_names.index(r["predicted"]) for r in rows])
    for r in rows:
        assert len(r["prompt_patches"]) == 4 == len(set(r["prompt_patches"]))
        assert [r["patches_before"], r["patches_after"]] == [
            len(r["before_patches"]),
            len(r["after_patches"]),
        ]
    # the prompts: Grad-Rollout on the frozen backbone, tuned head, predicted class, one image at a time
    head = clf.fitted.head
    for i, r in enumerate(rows):
        imp, _ = gr.grad_rollout_importance(
            clf.backbone,
            clf.backbone.forward_features,
            lambda f: head(f) * head.temperature,
            x[i : i + 1],
            labels[i : i + 1],
            gr.tail_layers(clf.backbone, None),
            1,
            16,
        )
        q = gr.position_prompts(imp, 4)[0]
        assert set(r["prompt_patches"]) == set(q.nonzero().flatten().tolist())
        assert r["prompt_weights"] == sorted(r["prompt_weights"], reverse=True)


def test_after_is_the_adapted_models_attention(saved, tmp_path) -> None:
    support, files = saved
    clf = Classifier.load(files["lora+fort"])
    model = clf.fitted.attention_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a strong adapter, so that its attention clearly differs from the frozen one
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=g) * 2.0)
    paths = [str(p) for p in sorted((support / "class_1").iterdir())]
    info = explain(clf, paths, tmp_path / "out", coverage=0.5)
    x, frozen = _frozen_probs(clf, paths)
    with torch.inference_mode(), record(model, "probs", layers=[-1]) as rec:
        model.forward_features(x)  # lora tunes every block from the images: its prefix is the image
    adapted = rec.get("probs")
    before, after = coverage_patches(frozen, 1, 16, 0.5)[1], coverage_patches(adapted, 1, 16, 0.5)[1]
    assert [r["before_patches"] for r in info["images"]] == before
    assert [r["after_patches"] for r in info["images"]] == after
    assert before != after
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_plain_lora_uses_default_prompt_settings_and_the_coverage(saved, tmp_path) -> None:
    support, files = saved
    out = tmp_path / "out"
    assert main(["explain", str(files["lora"]), str(support), "--output", str(out), "--coverage", "0.5"]) == 0
    info = json.loads((out / "explain.json").read_text())
    assert info["method"] == "lora" and info["coverage"] == 0.5
    assert info["prompts"] == {
        **info["prompts"],
        "top": 4,
        "variant": "code",
        "lamb": 1.0,
        "sign": "aligned",
        "from_fort_options": False,
    }
    assert len(info["images"]) == 4 and all(len(r["prompt_patches"]) == 4 for r in info["images"])
    assert all(r["patches_before"] <= 8 for r in info["images"])  # half the mass of 16 near-even patches


def test_frozen_feature_classifier_gets_its_relevance_map(saved, tmp_path, capsys) -> None:
    support, files = saved
    out = tmp_path / "out"
    assert main(["explain", str(files["protonet"]), str(support), "--output", str(out), "--quiet"]) == 0
    assert "gradient_rollout map on" in capsys.readouterr().out
    info = json.loads((out / "explain.json").read_text())
    assert info["relevance"]["kind"] == "gradient_rollout" and info["relevance"]["grid"] == [4, 4]
    assert "Chefer" in info["relevance"]["rule"] and "prompts" not in info
    clf = Classifier.load(files["protonet"])
    paths = [r["path"] for r in info["images"]]
    probs, _, _ = clf.predict_proba(paths)
    for r, p in zip(info["images"], probs, strict=True):
        assert r["predicted"] == clf.class_names[int(p.argmax())]  # the class predict gives is explained
        assert "patches_before" not in r and abs(sum(r["relevance"]) - 1) < 1e-4
        ranked = sorted(range(16), key=lambda j: -r["relevance"][j])
        assert set(r["relevance_cells"]) == set(ranked[: len(r["relevance_cells"])])
    assert len(list(out.glob("*.png"))) == 4


def test_windowed_backbone_gets_grad_cam(saved, tmp_path, capsys) -> None:
    support, _ = saved
    swin = focusshot.create_backbone("tiny-swin")
    method = create_method("lora", {"epochs": 1})
    tail, _ = method.build(swin, torch.Generator().manual_seed(0))
    head = LinearHead(
        torch.randn(2, swin.num_features, generator=torch.Generator().manual_seed(0)), torch.zeros(2)
    )
    config = {"method": "lora", "options": method.options_dict(), "start": None, "seed": 0}
    fitted = AdaptedFitted("lora", tail, head, config, {})
    spec = {"source": "tiny-swin", "pretrained": True, "seed": 0}
    path = Classifier(swin, fitted, ["a", "b"], "lora", spec).save(tmp_path / "swin.safetensors")
    out = tmp_path / "out"
    assert main(["explain", str(path), str(support), "--output", str(out), "--quiet"]) == 0
    info = json.loads((out / "explain.json").read_text())
    assert info["relevance"]["kind"] == "grad_cam" and "prompts" not in info
    assert all("patches_after" not in r for r in info["images"])  # no global [CLS] row to compare


def test_an_undecodable_image_is_named_and_nothing_is_written(saved, tmp_path) -> None:
    support, files = saved
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(Exception, match="broken.png"):
        explain(files["protonet"], [str(support / "class_0" / "0.png"), str(bad)], out)
    assert not out.exists()


def test_coverage_patches_match_patches_95() -> None:
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(3, 2, 1 + 16 + 2, 1 + 16 + 2, generator=g) * 2).softmax(-1)  # 2 trailing tokens
    attn, sets = coverage_patches(probs, 1, 16, 0.8)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    ref = cls_attention_metrics(probs, masks, 1, (4, 4), coverage=0.8, trailing_tokens=2)
    assert [len(s) for s in sets] == ref["patches_95"].tolist()
    torch.testing.assert_close(attn.sum(1), torch.ones(3))
    for a, s in zip(attn, sets, strict=True):
        assert a[s].sum() >= 0.8 - 1e-6 > a[s[:-1]].sum()
        assert a[s].min() >= a[[j for j in range(16) if j not in s]].max()
    with pytest.raises(ValueError, match="coverage"):
        coverage_patches(probs, 1, 16, 0.0)
