"""timm-layout checkpoints (timm, original DINO / iBOT, DINOv2) agree with transformers' models.

The reference is a tiny random ``transformers`` model; its weights are re-expressed in timm's key
layout (fused ``attn.qkv``), wrapped the way DINO/iBOT training checkpoints wrap them, saved in a
real torch file, and loaded through ``create_backbone`` on that file.
"""

import pytest
import torch

from focusshot import create_backbone, record
from focusshot.backbones.loading import CheckpointError

transformers = pytest.importorskip("transformers")


def _to_timm(sd: dict[str, torch.Tensor], depth: int, dinov2: bool) -> dict[str, torch.Tensor]:
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
        "head.weight": torch.zeros(5, 32),  # a classifier head the backbone must ignore
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    for i in range(depth):
        p = f"encoder.layer.{i}."
        a = p + "attention.attention."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [sd[a + "query." + kind], sd[a + "key." + kind], sd[a + "value." + kind]]
            )
            out[f"blocks.{i}.attn.proj.{kind}"] = sd[p + "attention.output.dense." + kind]
            if dinov2:
                out[f"blocks.{i}.norm1.{kind}"] = sd[p + "norm1." + kind]
                out[f"blocks.{i}.norm2.{kind}"] = sd[p + "norm2." + kind]
                out[f"blocks.{i}.mlp.fc1.{kind}"] = sd[p + "mlp.fc1." + kind]
                out[f"blocks.{i}.mlp.fc2.{kind}"] = sd[p + "mlp.fc2." + kind]
            else:
                out[f"blocks.{i}.norm1.{kind}"] = sd[p + "layernorm_before." + kind]
                out[f"blocks.{i}.norm2.{kind}"] = sd[p + "layernorm_after." + kind]
                out[f"blocks.{i}.mlp.fc1.{kind}"] = sd[p + "intermediate.dense." + kind]
                out[f"blocks.{i}.mlp.fc2.{kind}"] = sd[p + "output.dense." + kind]
        if dinov2:
            out[f"blocks.{i}.ls1.gamma"] = sd[p + "layer_scale1.lambda1"]
            out[f"blocks.{i}.ls2.gamma"] = sd[p + "layer_scale2.lambda1"]
    return out


def _hf_state(model) -> dict[str, torch.Tensor]:
    """The reference's weights in the on-disk key layout that ``save_pretrained`` writes."""
    from focusshot.backbones.loading import read_directory_weights

    return read_directory_weights(model)


class _NotAllowed:
    """An arbitrary pickled object: never loaded."""


def test_dino_checkpoint_with_teacher_wrapper(tmp_path) -> None:
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        layer_norm_eps=1e-6,
    )
    ref = transformers.ViTModel(cfg, add_pooling_layer=False)
    ref.set_attn_implementation("eager")
    ref.eval().save_pretrained(tmp_path / "hf")
    timm_sd = _to_timm(_hf_state(tmp_path / "hf"), 2, dinov2=False)
    import argparse

    # as the official training checkpoint: its argparse settings travel with it (allowed), any other
    # pickled object does not
    args = argparse.Namespace(arch="vit_small", patch_size=8, out_dim=65536, lr=5e-4)
    ckpt = {"teacher": {"backbone." + k: v for k, v in timm_sd.items()}, "epoch": 3, "args": args}
    torch.save(ckpt, tmp_path / "dino.pth")
    torch.save({**ckpt, "args": _NotAllowed()}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="weights_only"):
        create_backbone(str(tmp_path / "bad.pth"))
    # width 128 -> 2 heads by the width // 64 rule, as the reference has
    ours = create_backbone(str(tmp_path / "dino.pth"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = ref(pixel_values=x, output_attentions=True)
        with record(ours, "probs", layers=[-1]) as rec:
            feats = ours.forward_features(x)
    assert float((feats - out.last_hidden_state[:, 0]).abs().max()) <= 1e-4
    assert float((rec.get("probs") - out.attentions[-1]).abs().max()) <= 1e-4


def test_dinov2_original_layout_with_registers(tmp_path) -> None:
    cfg = transformers.Dinov2WithRegistersConfig(
        image_size=40,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        mlp_ratio=2,
        num_register_tokens=4,
    )
    ref = transformers.Dinov2WithRegistersModel(cfg)
    ref.set_attn_implementation("eager")
    ref.eval().save_pretrained(tmp_path / "hf")
    from safetensors.torch import save_file

    save_file(_to_timm(_hf_state(tmp_path / "hf"), 2, dinov2=True), str(tmp_path / "dinov2.safetensors"))
    ours = create_backbone(str(tmp_path / "dinov2.safetensors"))
    assert ours.num_prefix_tokens == 5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert float((ours.forward_features(x) - ref(pixel_values=x).pooler_output).abs().max()) <= 1e-4


def test_unreadable_and_unknown_files_name_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        create_backbone(str(bad))
    torch.save({"something.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        create_backbone(str(tmp_path / "other.pt"))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused(tmp_path) -> None:
    torch.save({"cls_token": torch.zeros(1), "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        create_backbone(str(tmp_path / "evil.pt"))
