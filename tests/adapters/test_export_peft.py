"""LoRA adapters exported to peft give the features our adapted model gives, inside transformers.

A tiny random Hugging Face ``CLIPModel`` is written with ``save_pretrained`` and loaded through
``create_backbone``; LoRA (random non-zero ``B``) is injected into its image tower, exported with
:func:`export_peft`, loaded back with ``peft.PeftModel.from_pretrained`` over the same
``CLIPModel`` and ``get_image_features`` compared with ours (max abs diff <= 1e-4). The CLI test
does the same through ``focusshot fit --method lora`` and ``focusshot export-adapter``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from focusshot import create_backbone
from focusshot.adapters.base import AdapterError
from focusshot.adapters.export_peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft, hf_base_model_name
from focusshot.adapters.lora import LoRAConfig, LoRALinear, inject_lora, lora_layers
from focusshot.api import Classifier
from focusshot.cli import main
from tests.hf_tiny import tiny_clip_config

from .conftest import images, max_diff, randomise

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOL = 1e-4


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))


def _tiny_clip_dir(tmp_path: Path) -> Path:
    """A tiny random ``CLIPModel`` written by ``save_pretrained`` (as tests/backbones/test_hf_convert.py)."""
    cfg = tiny_clip_config(transformers, heads=2)
    transformers.CLIPModel(cfg).eval().save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def _hf_image_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``get_image_features`` as a tensor (transformers 5 returns an output object)."""
    with torch.no_grad():
        out = model.get_image_features(pixel_values=x)
    return getattr(out, "pooler_output", out)


def _peft_features(hf_dir: Path, adapter_dir: Path, x: torch.Tensor) -> torch.Tensor:
    base = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    return _hf_image_features(peft.PeftModel.from_pretrained(base, adapter_dir).eval(), x)


@pytest.mark.parametrize(
    "targets",
    [("*.attn.q", "*.attn.k", "*.attn.v", "*.attn.proj"), ("*.mlp.fc1", "*.mlp.fc2", "proj")],
    ids=["attention", "mlp-and-projection"],
)
def test_export_matches_peft(tmp_path, targets: tuple[str, ...]) -> None:
    hf_dir = _tiny_clip_dir(tmp_path)
    model = create_backbone(str(hf_dir))
    x = images(3, 32)
    with torch.no_grad():
        plain = model.forward_features(x)
    # the baseline first: the un-adapted models agree, so any difference below is the adapter's
    reference_plain = _hf_image_features(transformers.CLIPModel.from_pretrained(hf_dir).eval(), x)
    assert max_diff(plain, reference_plain) <= TOL

    names = inject_lora(model.visual, LoRAConfig(rank=2, alpha=4.0, targets=targets))
    randomise([layer.lora_B for _, layer in lora_layers(model)], std=0.2)
    with torch.no_grad():
        ours = model.forward_features(x)
    assert max_diff(ours, plain) > 1e-2  # the adapter changes the features

    out = export_peft(model, tmp_path / "adapter", rank=2, alpha=4.0, base_model_name_or_path=str(hf_dir))
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and cfg["lora_alpha"] == 4
    assert len(cfg["target_modules"]) == len(names)
    prefixes = ("vision_model.encoder.layers.", "visual_projection")
    assert all(t.startswith(prefixes) for t in cfg["target_modules"])
    assert peft.LoraConfig.from_pretrained(str(out)).target_modules == set(cfg["target_modules"])

    # the tensor keys are those peft's own save_pretrained writes for the same targets
    reference = peft.get_peft_model(
        transformers.CLIPModel.from_pretrained(hf_dir),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=cfg["target_modules"]),
    )
    reference.save_pretrained(tmp_path / "reference")
    want = load_file(tmp_path / "reference" / ADAPTER_WEIGHTS)
    got = load_file(out / ADAPTER_WEIGHTS)
    assert sorted(got) == sorted(want)
    assert all(got[k].shape == want[k].shape for k in want)

    theirs = _peft_features(hf_dir, out, x)
    assert max_diff(theirs, ours) <= TOL
    assert max_diff(theirs, plain) > 1e-2


def test_export_errors(tmp_path) -> None:
    model = create_backbone(str(_tiny_clip_dir(tmp_path)))
    with pytest.raises(AdapterError, match="no LoRA layers"):
        export_peft(model, tmp_path / "a", rank=2, alpha=4.0)
    inject_lora(model.visual, LoRAConfig(rank=2, alpha=4.0))
    with pytest.raises(AdapterError, match="rank 2, but the export was asked for rank 4"):
        export_peft(model, tmp_path / "a", rank=4, alpha=4.0)
    with pytest.raises(AdapterError, match="alpha"):
        export_peft(model, tmp_path / "a", rank=2, alpha=1.0)
    model.visual.extra = LoRALinear(nn.Linear(4, 4), rank=2, alpha=4.0)
    with pytest.raises(AdapterError, match=r"'visual\.extra' .* no counterpart in Hugging Face's CLIPModel"):
        export_peft(model, tmp_path / "a", rank=2, alpha=4.0)
    assert not (tmp_path / "a").exists()  # nothing is written when the export fails


def test_hf_base_model_name(tmp_path) -> None:
    assert hf_base_model_name("clip-vit-b16") == "openai/clip-vit-base-patch16"
    assert hf_base_model_name("hf:org/model") == "org/model"
    assert hf_base_model_name(str(tmp_path)) == str(tmp_path.resolve())
    assert hf_base_model_name("tiny-clip-vit") == "tiny-clip-vit"


def _write_support(folder: Path, classes: int = 2, per_class: int = 3) -> Path:
    """Class folders of small random PNGs."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (folder / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(36, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(folder / f"class_{c}" / f"img_{i}.png")
    return folder


@pytest.mark.parametrize("method", ["lora", "lora+fort"])
def test_cli_export_adapter_round_trip(tmp_path, capsys, method) -> None:
    hf_dir = _tiny_clip_dir(tmp_path)
    support = _write_support(tmp_path / "support")
    clf_path, adapter = tmp_path / "clf.safetensors", tmp_path / "adapter"
    common = ["--backbone", str(hf_dir), "--quiet", "--cache-dir", str(tmp_path / "features")]
    fit = ["fit", str(support), *common, "--method", method, "--output", str(clf_path)]
    # lora's options reach lora+fort (its base recipe)
    assert main([*fit, "--set", "lora.epochs=1", "--set", "lora.lr=0.05", "--set", "lora.alpha=4"]) == 0
    assert Classifier.load(clf_path).fitted.config()["options"]["alpha"] == 4
    assert main(["export-adapter", str(clf_path), "--format", "peft", "--output", str(adapter)]) == 0
    assert str(adapter) in capsys.readouterr().out

    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (4, 4)  # lora's default rank, the alpha we set
    assert cfg["base_model_name_or_path"] == str(hf_dir.resolve())
    assert len(cfg["target_modules"]) == 8  # q, k, v, out_proj of both blocks

    x = images(2, 32)
    tuned = Classifier.load(clf_path).fitted.tail.backbone  # type: ignore[attr-defined]
    with torch.no_grad():
        ours = tuned.forward_features(x)
        plain = create_backbone(str(hf_dir)).forward_features(x)
    theirs = _peft_features(hf_dir, adapter, x)
    assert max_diff(theirs, ours) <= TOL
    assert max_diff(theirs, plain) > 1e-2  # one epoch of training moved the adapter

    # a classifier without LoRA has no adapter to export
    other = tmp_path / "protonet.safetensors"
    assert main(["fit", str(support), *common, "--method", "protonet", "--output", str(other)]) == 0
    assert main(["export-adapter", str(other), "--output", str(tmp_path / "none")]) == 2
    assert "holds no LoRA layers" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
