"""A save_pretrained directory without preprocessor_config.json is preprocessed at the model's own
input size (taken from config.json), so its image features equal transformers' on the same file."""

import numpy as np
import pytest
import torch
from PIL import Image
from tests.hf_tiny import tiny_clip_config

from focusshot.backbones.registry import create_backbone
from focusshot.data.transforms import make_transform
from focusshot.embedding import embed_images

transformers = pytest.importorskip("transformers")


def _image(path, size=48, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(path)
    return path


def test_clip_directory_takes_its_image_size_from_config(tmp_path) -> None:
    torch.manual_seed(0)
    ref = transformers.CLIPModel(tiny_clip_config(transformers)).eval()
    ref.save_pretrained(tmp_path / "clip")
    ours = create_backbone(str(tmp_path / "clip"))
    assert (ours.preprocess.resize, ours.preprocess.crop) == (32, 32)  # was 224 / 224
    assert "image_size" in ours.identity.extra["preprocess_source"]
    path = _image(tmp_path / "a.png")
    feats = embed_images(ours, [str(path)]).features
    # transformers on the same 32-px pixels: equal, so nothing was interpolated on our side
    with Image.open(path) as im:
        pixels = make_transform(ours.preprocess)(im).unsqueeze(0)
    with torch.no_grad():
        hf = ref.get_image_features(pixel_values=pixels)
    hf = getattr(hf, "pooler_output", hf)
    assert float((feats - hf).abs().max()) < 1e-4


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_vit_and_swin_directories_take_their_image_size_from_config(tmp_path, family) -> None:
    if family == "vit":
        cfg = transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
        model = transformers.ViTModel(cfg, add_pooling_layer=False)
    else:
        cfg = transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
        )
        model = transformers.SwinModel(cfg)
    model.save_pretrained(tmp_path / family)
    ours = create_backbone(str(tmp_path / family))
    assert (ours.preprocess.resize, ours.preprocess.crop) == (37, 32)  # 32 / (224 / 256); was 256 / 224
    # a preprocessor config, when present, still wins
    (tmp_path / family / "preprocessor_config.json").write_text('{"size": 40, "crop_size": 36}')
    again = create_backbone(str(tmp_path / family))
    assert (again.preprocess.resize, again.preprocess.crop) == (40, 36)
    assert again.identity.extra["preprocess_source"] == "preprocessor_config.json"
