"""The registry, create_backbone's sources, and the backbone contract on every tiny model."""

import pytest
import torch

import focusshot
from focusshot.backbones import registry
from focusshot.backbones.loading import CheckpointError

TINY = [s.name for s in focusshot.list_backbones() if s.tiny]


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbones_keep_the_contract(name: str) -> None:
    model = focusshot.create_backbone(name)
    size = model.preprocess.crop
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features)
        tokens = model.forward_tokens(x)
        assert tokens.ndim == 3 and tokens.shape[0] == 2
        torch.testing.assert_close(model.forward_head(tokens), feats) if name != "tiny-clip-rn" else None
        inter = model.forward_intermediates(x, [0, -1])
        assert len(inter) == 2
    rows, cols = model.grid_size()
    assert rows >= 1 and cols >= 1
    if model.capabilities.global_cls:
        assert tokens.shape[1] == model.num_prefix_tokens + rows * cols
    assert model.identity.name == name and len(model.identity.weights_sha256) == 64
    assert model.identity.source == "random(seed=0)"


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a = focusshot.create_backbone("tiny-vit", seed=0)
    b = focusshot.create_backbone("tiny-vit", seed=0)
    c = focusshot.create_backbone("tiny-vit", seed=1)
    assert a.identity.weights_sha256 == b.identity.weights_sha256 != c.identity.weights_sha256


def test_real_architecture_with_random_weights() -> None:
    model = focusshot.create_backbone("dino-vit-s16", pretrained=False)
    assert model.num_features == 384 and model.grid_size() == (14, 14)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 384)


def test_unknown_source_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="clip-vit-b16.*tiny-vit"):
        focusshot.create_backbone("clip-vit-b99")


def test_hf_source_downloads_through_huggingface_hub(tmp_path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    ref = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    ref.save_pretrained(tmp_path / "repo")
    asked = {}

    def fake_list(repo_id):
        asked["list"] = repo_id
        return ["config.json", "model.safetensors"]

    def fake_snapshot(repo_id, allow_patterns=None, local_files_only=False):
        asked["snapshot"] = (repo_id, tuple(allow_patterns))
        return str(tmp_path / "repo")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "list_repo_files", fake_list)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model = focusshot.create_backbone("hf:someone/tiny-vit")
    assert asked["list"] == "someone/tiny-vit" and "*.safetensors" in asked["snapshot"][1]
    assert "*.bin" not in asked["snapshot"][1]
    assert model.identity.source == "hf:someone/tiny-vit"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x), ref(pixel_values=x).last_hidden_state[:, 0], atol=1e-4, rtol=1e-4
        )


def test_hf_source_offline_gives_a_clear_error(monkeypatch) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        CheckpointError, match="hf:openai/clip-vit-base-patch16: could not download.*local directory"
    ):
        focusshot.create_backbone("clip-vit-b16")


def test_register_twice_fails() -> None:
    spec = registry.REGISTRY["tiny-vit"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backbone(spec)


def test_one_source_parser(tmp_path) -> None:
    from focusshot.adapters.export_peft import hf_base_model_name
    from focusshot.backbones.registry import parse_source

    assert parse_source("clip-vit-b16").hf_repo == "openai/clip-vit-base-patch16"
    assert parse_source("hf:org/model").kind == "hf" and parse_source("hf:org/model").value == "org/model"
    assert parse_source(str(tmp_path)).kind == "path"
    with pytest.raises(ValueError, match="hf: needs a repository id"):
        parse_source("hf:")
    with pytest.raises(ValueError, match="unknown backbone source 'nope'"):
        parse_source("nope")
    assert hf_base_model_name("clip-vit-b16") == "openai/clip-vit-base-patch16"
    assert hf_base_model_name("tiny-vit") == "tiny-vit" and hf_base_model_name("hf:a/b") == "a/b"
