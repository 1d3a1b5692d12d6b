"""SAFE, SAFE-A, CoOp, CLIP-LoRA and LP++ end to end on a converted checkpoint: a tiny random
Hugging Face CLIP written by ``save_pretrained`` with its tokenizer files, loaded from the folder,
fitted through the API (train + validation splits), saved, reloaded and used to predict; and the
RN50 path from the CLI."""

import pytest
import torch

from focusshot.api import Classifier, fit
from focusshot.backbones.registry import TINY_CLIP_WORDS
from focusshot.backbones.tokenizer import ClipTokenizer
from focusshot.cli import main
from tests.evaluation.test_protocols import _write_dataset
from tests.hf_tiny import tiny_clip_config

transformers = pytest.importorskip("transformers")

FAST = {
    "safe": {"steps": 4, "eval_every": 2, "lr_grid": [1e-3], "wd_grid": [0.01]},
    "safe_a": {"steps": 4, "eval_every": 2, "lr_grid": [1e-3], "wd_grid": [0.01], "tip_epochs": 2},
    "coop": {"n_ctx": 4, "epochs": 2},
    "clip_lora": {"steps": 3},
    "lp_pp": {"epochs": 20},
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfclip")
    tok = ClipTokenizer.train([TINY_CLIP_WORDS + " class"], vocab_size=600)
    cfg = tiny_clip_config(transformers, heads=2, eos=tok.eot_token_id)
    cfg.text_config.vocab_size = tok.vocab_size
    cfg.text_config.bos_token_id = tok.sot_token_id
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).eval().save_pretrained(root / "clip")
    tok.to_files(root / "clip")
    return root / "clip"


@pytest.mark.parametrize("method", sorted(FAST))
def test_clip_methods_on_a_converted_checkpoint(tmp_path, monkeypatch, clip_dir, method) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    data = _write_dataset(tmp_path / "data", classes=3, per_class=3, splits=("train", "val", "test"))
    clf = fit(data, backbone=str(clip_dir), method=method, options=FAST[method])
    assert clf.method == method
    again = Classifier.load(clf.save(tmp_path / "clf.safetensors"))
    images = sorted((data / "test" / "class_0").iterdir())
    p1, _, _ = clf.predict_proba(images)
    p2, _, _ = again.predict_proba(images)
    assert p1.shape == (3, 3) and torch.allclose(p1, p2, atol=1e-5)


def test_cli_fit_predict_safe_on_clip_resnet(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    data = _write_dataset(tmp_path / "data", classes=3, per_class=3)
    out = tmp_path / "safe.safetensors"
    args = ["fit", str(data), "--backbone", "tiny-clip-rn", "--random-weights", "--method", "safe"]
    assert main([*args, "--set", "safe.steps=3", "--output", str(out), "--quiet"]) == 0
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out), str(data / "class_1"), "--output", str(preds), "--quiet"]) == 0
    assert len(preds.read_text().splitlines()) == 4  # header + 3 images
