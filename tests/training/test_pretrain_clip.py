"""world-clip pretraining: a few steps run, reduce the loss on a repeated batch, and are reproducible."""

import json

import pytest
import torch
from safetensors.torch import load_file

from focusshot.backbones.world_clip import build_world_clip, load_world_clip
from focusshot.training.pretrain_clip import PretrainConfig, clip_loss, images_to_tensor, pretrain


def test_a_few_steps_write_float16_weights_with_provenance(tmp_path) -> None:
    cfg = PretrainConfig(steps=2, batch_size=4, warmup=1, seed=3, threads=1)
    info = pretrain(cfg, tmp_path / "w.safetensors", log=lambda _: None)
    state = load_file(str(tmp_path / "w.safetensors"))
    assert all(t.dtype == torch.float16 for t in state.values())
    record = json.loads((tmp_path / "w.json").read_text())
    assert record["config"]["seed"] == 3 and record["versions"]["torch"] == torch.__version__
    assert info["final"]["step"] == 1
    model = load_world_clip(tmp_path / "w.safetensors")  # loads strictly into the architecture
    assert model.num_features == 128
    again = pretrain(cfg, tmp_path / "again.safetensors", log=lambda _: None)
    assert again["final"]["loss"] == info["final"]["loss"]
    other = load_file(str(tmp_path / "again.safetensors"))
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_contrastive_loss_decreases_on_a_fixed_batch() -> None:
    from focusshot.data.world import iter_batches

    torch.manual_seed(0)
    model = build_world_clip().train()
    images, captions, _ = next(iter_batches("world:base", 8, 64, 0))
    x = images_to_tensor(images, model.preprocess.mean, model.preprocess.std)
    ids = model.tokenize(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss, _ = clip_loss(model, x, ids)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(clip_loss(model, x, ids)[0].detach()) < first


def test_the_deep_architecture_pretrains_and_loads_as_itself(tmp_path) -> None:
    cfg = PretrainConfig(steps=1, batch_size=2, warmup=1, seed=0, threads=1, arch="world-clip-deep")
    pretrain(cfg, tmp_path / "deep.safetensors", log=lambda _: None)
    model = load_world_clip(tmp_path / "deep.safetensors", arch="world-clip-deep")
    assert len(model.attention_modules()) == 12
    assert json.loads((tmp_path / "deep.json").read_text())["config"]["arch"] == "world-clip-deep"
    with pytest.raises(ValueError, match="deep.safetensors"):  # the weights fit only their own architecture
        load_world_clip(tmp_path / "deep.safetensors")
