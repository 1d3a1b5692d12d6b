"""world-dino: the registry entry, the DINO checkpoint layouts the timm/DINO converter reads (nested
torch files as DINO's training writes them, and the same flattened in safetensors), and the shipped
file (architecture and hash) once it has been made."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

import focusshot
from focusshot.backbones.convert.timm_vit import convert_timm_vit, to_timm_state_dict
from focusshot.backbones.loading import load_file
from focusshot.backbones.vit import VisionTransformer, ViTConfig
from focusshot.backbones.world_dino import build_world_dino, load_world_dino, shipped_weights
from focusshot.cli import main

SHIPPED = shipped_weights()
needs_asset = pytest.mark.skipif(
    not SHIPPED.is_file(),
    reason=f"{SHIPPED.name} not made yet (`focusshot world pretrain --arch world-dino`)",
)


def _tiny_vit() -> VisionTransformer:
    return VisionTransformer(
        ViTConfig(image_size=32, patch_size=8, width=128, depth=2, num_heads=2, mlp_dim=96)
    )


def _dino_full_checkpoint(vit: VisionTransformer) -> dict:
    """The layout of DINO's ``checkpoint.pth``: student (DDP-wrapped), teacher, optimiser, epoch, centre."""
    backbone = {f"backbone.{k}": v.clone() for k, v in to_timm_state_dict(vit).items()}
    head = {
        "head.mlp.0.weight": torch.randn(16, 128),
        "head.mlp.0.bias": torch.zeros(16),
        "head.last_layer.weight_g": torch.ones(10, 1),
        "head.last_layer.weight_v": torch.randn(10, 16),
    }
    student = {f"module.{k}": torch.randn_like(v) for k, v in {**backbone, **head}.items()}
    optimizer = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
        "param_groups": [{"lr": 0.1}],
    }
    return {
        "student": student,
        "teacher": {**backbone, **head},
        "optimizer": optimizer,
        "epoch": 100,
        "dino_loss": {"center": torch.zeros(1, 10)},
    }


def test_registry_lists_world_dino_with_its_architecture(capsys) -> None:
    assert "world-dino" in [s.name for s in focusshot.list_backbones()]
    assert main(["backbones"]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("world-dino "))
    assert "package" in line
    model = focusshot.create_backbone("world-dino", pretrained=False)
    attn = model.attention_modules()
    assert len(attn) == 12 and {a.num_heads for a in attn} == {6}
    assert model.num_features == 144 and model.patch_size == 8 and model.cfg.eps == 1e-6
    assert model.cfg.qkv_bias and not model.cfg.pre_norm and model.proj is None
    assert sum(p.numel() for p in model.parameters()) * 2 <= 10 * 2**20  # float16 bytes


def test_local_crops_interpolate_position_embeddings_and_the_native_size_is_untouched() -> None:
    model = build_world_dino().eval()
    assert torch.equal(model._pos_embed(8, 8), model.pos_embed)
    with torch.no_grad():
        assert model.forward_tokens(torch.randn(2, 3, 32, 32)).shape == (2, 1 + 16, 144)
        assert model.forward_tokens(torch.randn(2, 3, 64, 64)).shape == (2, 1 + 64, 144)


def test_to_timm_state_dict_round_trips_through_the_converter() -> None:
    vit = _tiny_vit().eval()
    sd = to_timm_state_dict(vit)
    assert "blocks.0.attn.qkv.weight" in sd and "patch_embed.proj.weight" in sd
    assert not any(".attn.q." in k for k in sd)
    back = convert_timm_vit(sd, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back.forward_features(x), vit.forward_features(x))
    with pytest.raises(ValueError, match="projection"):
        to_timm_state_dict(VisionTransformer(ViTConfig(32, 8, 32, 1, 2, 64, proj_dim=8)))


@pytest.mark.parametrize("layout", ["torch-nested", "safetensors-flat"])
def test_dino_full_checkpoint_loads_its_teacher(tmp_path, layout: str) -> None:
    vit = _tiny_vit().eval()
    ckpt = _dino_full_checkpoint(vit)
    if layout == "torch-nested":
        path = tmp_path / "checkpoint.pth"
        torch.save(ckpt, path)
    else:
        flat = {f"{group}.{k}": v for group in ("student", "teacher") for k, v in ckpt[group].items()}
        flat["dino_loss.center"] = ckpt["dino_loss"]["center"]
        path = tmp_path / "checkpoint.safetensors"
        save_file(flat, str(path))
    model = focusshot.create_backbone(str(path))  # width 128 -> 2 heads by the width // 64 rule
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), vit.forward_features(x))  # the teacher, not the student


@needs_asset
def test_shipped_world_dino_loads_through_the_dino_converter_and_matches_its_record() -> None:
    record = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == record["sha256"]
    assert SHIPPED.stat().st_size <= 10 * 2**20
    assert record["architecture"] == {"width": 144, "depth": 12, "heads": 6, "patch": 8, "image": 64}
    assert record["config"]["arch"] == "world-dino" and record["steps"] == record["config"]["steps"]
    model = focusshot.create_backbone("world-dino")
    assert model.identity.source == "package"
    attn = model.attention_modules()
    assert len(attn) == 12 and {a.num_heads for a in attn} == {6}
    assert (model.cfg.width, model.cfg.patch_size, model.cfg.image_size) == (144, 8, 64)
    user = load_file(SHIPPED, num_heads=6)  # the path a user's dino_vitb16.pth takes
    assert all(
        torch.equal(a, b)
        for a, b in zip(user.state_dict().values(), model.state_dict().values(), strict=True)
    )
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 144) and bool(torch.isfinite(feats).all())


def test_missing_weights_say_how_to_make_them(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="world pretrain --arch world-dino"):
        load_world_dino(tmp_path / "none.safetensors")


def test_the_shipped_file_loaded_by_path_keeps_its_six_heads_and_input_size() -> None:
    """The weights cannot tell 6 heads of 24 channels from 2 of 72 (width // 64), nor the 64 px
    input; the file's metadata records both, so loading it by path equals loading it by name."""
    path = shipped_weights()
    if not path.is_file():
        pytest.skip(f"{path} is not there yet (focusshot world pretrain --arch world-dino)")
    by_path, by_name = load_file(path), focusshot.create_backbone("world-dino")
    assert by_path.blocks[0].attn.num_heads == by_name.blocks[0].attn.num_heads == 6
    assert by_path.preprocess == by_name.preprocess  # 64 px in, not ImageNet's 256 -> 224
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(by_path.forward_features(x), by_name.forward_features(x))
