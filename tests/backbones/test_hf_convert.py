"""Hugging Face checkpoints (CLIP, ViT/DINO, DINOv2) load into our modules and agree with transformers.

Each test builds a tiny random model in ``transformers``, writes it with ``save_pretrained`` (the
real on-disk format: config.json + model.safetensors), loads the directory through
``create_backbone`` and compares features and attention probabilities (max abs diff <= 1e-4).
"""

import json

import pytest
import torch
from tests.hf_tiny import tiny_clip_config

from focusshot import create_backbone, record
from focusshot.backbones.clip import CLIP
from focusshot.backbones.convert.hf import convert_hf_vit
from focusshot.backbones.loading import read_directory_weights

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _eager(model):
    """Reference model on its eager attention path, which returns attention probabilities."""
    model.set_attn_implementation("eager")
    return model.eval()


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max())


def _tiny_clip_hf(tmp_path, eos: int = 98):
    cfg = tiny_clip_config(transformers, heads=4, eos=eos)
    model = _eager(transformers.CLIPModel(cfg))
    model.save_pretrained(tmp_path / "clip")
    return model, tmp_path / "clip"


def test_hf_clip_equivalence(tmp_path) -> None:
    ref, path = _tiny_clip_hf(tmp_path)
    ours = create_backbone(str(path))
    assert isinstance(ours, CLIP)
    images = torch.randn(3, 3, 32, 32)
    ids = torch.randint(1, 96, (3, 12))
    ids[:, 0] = 97
    ids[0, 5], ids[1, 11], ids[2, 7] = 98, 98, 98  # end-of-text at different places
    ids[0, 6:] = 0
    with torch.no_grad():
        hf_img = ref.get_image_features(pixel_values=images)
        hf_txt = ref.get_text_features(input_ids=ids)
        hf_out = ref.vision_model(pixel_values=images, output_attentions=True)
        with record(ours, "probs") as rec:
            our_img = ours.forward_features(images)
        our_txt = ours.encode_text(ids)
    hf_img = getattr(hf_img, "pooler_output", hf_img)
    hf_txt = getattr(hf_txt, "pooler_output", hf_txt)
    assert _diff(our_img, hf_img) <= TOL
    assert _diff(our_txt, hf_txt) <= TOL
    for layer, probs in enumerate(hf_out.attentions):
        assert _diff(rec.get("probs", layer), probs) <= TOL
    assert _diff(ours.logit_scale.detach(), ref.logit_scale.detach()) == 0.0
    # the fused path gives the same features as the recorded one
    with torch.no_grad():
        assert _diff(ours.forward_features(images), our_img) <= 1e-5
    assert ours.identity.weights_sha256 and ours.identity.source.endswith("clip")


def test_hf_clip_vision_only_with_projection(tmp_path) -> None:
    vcfg = transformers.CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=16,
    )
    ref = transformers.CLIPVisionModelWithProjection(vcfg).eval()
    ref.save_pretrained(tmp_path / "v")
    ours = create_backbone(str(tmp_path / "v"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _diff(ours.forward_features(x), ref(pixel_values=x).image_embeds) <= TOL


@pytest.mark.parametrize("image_size", [32, 48])
def test_hf_vit_dino_equivalence(tmp_path, image_size: int) -> None:
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        layer_norm_eps=1e-6,
    )
    ref = _eager(transformers.ViTModel(cfg, add_pooling_layer=False))
    ref.save_pretrained(tmp_path / "vit")
    ours = create_backbone(str(tmp_path / "vit"))
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        out = ref(pixel_values=x, output_attentions=True, interpolate_pos_encoding=image_size != 32)
        with record(ours, "probs", layers=[-1]) as rec:
            tokens = ours.forward_tokens(x)
            feats = ours.forward_head(tokens)
    assert _diff(ours.norm(tokens), out.last_hidden_state) <= TOL
    assert _diff(feats, out.last_hidden_state[:, 0]) <= TOL
    assert _diff(rec.get("probs"), out.attentions[-1]) <= TOL


@pytest.mark.parametrize("registers", [0, 2])
def test_hf_dinov2_equivalence(tmp_path, registers: int) -> None:
    common = dict(
        image_size=40,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        layerscale_value=0.5,
    )
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        ref = _eager(transformers.Dinov2WithRegistersModel(cfg))
    else:
        ref = _eager(transformers.Dinov2Model(transformers.Dinov2Config(**common)))
    with torch.no_grad():  # layer scale away from its init value, so a dropped gamma would show
        for name, p in ref.named_parameters():
            if "lambda1" in name:
                p.copy_(torch.rand_like(p))
    ref.save_pretrained(tmp_path / "d2")
    ours = create_backbone(str(tmp_path / "d2"))
    assert ours.num_prefix_tokens == 1 + registers
    x = torch.randn(2, 3, 32, 32)  # a smaller grid than trained: position embeddings are interpolated
    with torch.no_grad():
        out = ref(pixel_values=x, output_attentions=True)
        with record(ours, "probs") as rec:
            feats = ours.forward_features(x)
    assert _diff(feats, out.pooler_output) <= TOL
    assert _diff(rec.get("probs", -1), out.attentions[-1]) <= TOL


def test_mismatched_checkpoint_lists_keys(tmp_path) -> None:
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    sd = read_directory_weights(tmp_path / "vit")
    sd.pop("encoder.layer.1.attention.attention.query.weight")
    sd["extra.weight"] = torch.zeros(1)
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    with pytest.raises(
        ValueError, match=r"missing keys \(1\): \['blocks.1.attn.q.weight'\].*unexpected keys"
    ):
        convert_hf_vit(config, sd)
    config["num_hidden_layers"] = 3
    with pytest.raises(ValueError, match="blocks.2"):
        convert_hf_vit(config, read_directory_weights(tmp_path / "vit"))
