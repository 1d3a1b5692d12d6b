"""world-dino pretraining (DINO, Caron et al. 2021): multi-crop shapes, the loss, the EMA teacher, the
saved layout, and bit-reproducibility of a tiny run."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from focusshot.backbones.world_dino import PREPROCESS, load_world_dino
from focusshot.training.multicrop import CropSpec, multi_crop, sample_boxes, step_generator
from focusshot.training.pretrain_dino import (
    DinoConfig,
    DinoHead,
    DinoTrainer,
    dino_loss,
    ema_update,
    pretrain_dino,
    update_center,
)

TINY = dict(
    arch="world-dino-tiny",
    batch_size=2,
    n_local=2,
    out_dim=32,
    head_hidden=32,
    head_bottleneck=16,
    warmup=1,
    threads=1,
    log_every=1,
)


def test_multi_crop_shapes_ranges_and_seeding() -> None:
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8).numpy()
    spec = CropSpec(n_local=4)
    g, loc = multi_crop(images, spec, step_generator(0, 5), PREPROCESS.mean, PREPROCESS.std)
    assert g.shape == (2 * 3, 3, 64, 64) and loc.shape == (4 * 3, 3, 32, 32)
    g2, loc2 = multi_crop(images, spec, step_generator(0, 5), PREPROCESS.mean, PREPROCESS.std)
    assert torch.equal(g, g2) and torch.equal(loc, loc2)
    g3, _ = multi_crop(images, spec, step_generator(0, 6), PREPROCESS.mean, PREPROCESS.std)
    assert not torch.equal(g, g3)
    boxes = sample_boxes(500, (0.05, 0.4), step_generator(1, 0))
    x0, y0, w, h = boxes.unbind(1)
    assert bool(((x0 >= 0) & (y0 >= 0) & (x0 + w <= 1 + 1e-6) & (y0 + h <= 1 + 1e-6)).all())
    area = w * h
    assert float(area.min()) >= 0.05 - 1e-6 and float(area.max()) <= 0.4 + 1e-6


def test_a_whole_image_box_without_flip_or_jitter_is_the_image() -> None:
    from focusshot.training.multicrop import resized_crops

    x = torch.rand(2, 3, 16, 16)
    out = resized_crops(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), torch.tensor([False, True]), 16)
    assert torch.allclose(out[0], x[0], atol=1e-5)
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-5)


def test_loss_is_cross_entropy_over_views_other_than_the_teachers_own() -> None:
    torch.manual_seed(0)
    b, k = 3, 8
    student, teacher, center = torch.randn(4 * b, k), torch.randn(2 * b, k), torch.randn(1, k)
    loss = dino_loss(student, teacher, center, 0.1, 0.04)
    t = F.softmax((teacher - center) / 0.04, -1).chunk(2)
    s = F.log_softmax(student / 0.1, -1).chunk(4)
    pairs = [(i, j) for i in range(2) for j in range(4) if i != j]
    want = sum(-(t[i] * s[j]).sum(-1).mean() for i, j in pairs) / len(pairs)
    assert torch.isfinite(loss) and torch.allclose(loss, want)
    new = update_center(center, teacher, 0.9)
    assert torch.allclose(new, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True))


def test_head_normalises_its_last_layer_and_keeps_dinos_names() -> None:
    head = DinoHead(16, 10, hidden=8, bottleneck=4)
    assert set(head.state_dict()) == {
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
        "last_layer.weight_g", "last_layer.weight_v",
    }  # fmt: skip
    assert not head.last_layer.weight_g.requires_grad
    z = F.normalize(torch.randn(5, 4), dim=-1)
    v = head.last_layer.weight_v
    assert torch.allclose(head.last_layer(z), z @ (v / v.norm(dim=1, keepdim=True)).t(), atol=1e-6)


def test_one_step_moves_the_teacher_by_exactly_the_ema_of_the_student() -> None:
    trainer = DinoTrainer(DinoConfig(steps=4, **TINY))
    teacher0 = copy.deepcopy(trainer.teacher)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher0.parameters(), trainer.student.parameters(), strict=True)
    )
    m = trainer.schedules(0)["momentum"]
    row = trainer.step()
    assert row["momentum"] == m and torch.isfinite(torch.tensor(row["loss"]))
    expected = copy.deepcopy(teacher0)
    ema_update(expected, trainer.student, m)
    for (name, got), want, s, t0 in zip(
        trainer.teacher.named_parameters(),
        expected.parameters(),
        trainer.student.parameters(),
        teacher0.parameters(),
        strict=True,
    ):
        assert torch.equal(got, want), name
        assert torch.allclose(got, m * t0 + (1 - m) * s, atol=1e-7), name
    assert not torch.equal(trainer.teacher.backbone.cls_token, teacher0.backbone.cls_token)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())


def test_novel_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="base classes only"):
        DinoTrainer(DinoConfig(suite="world:clutter", **TINY))


def test_a_tiny_run_is_bit_reproducible_and_saved_in_dinos_layout(tmp_path) -> None:
    cfg = DinoConfig(steps=3, seed=1, **TINY)
    info = pretrain_dino(cfg, tmp_path / "a.safetensors", log=lambda _: None)
    again = pretrain_dino(cfg, tmp_path / "b.safetensors", log=lambda _: None)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert info["sha256"] == again["sha256"]  # the files are byte-identical
    assert all(t.dtype == torch.float16 for t in a.values())
    assert {"teacher.backbone.cls_token", "teacher.backbone.blocks.1.attn.qkv.weight",
            "teacher.backbone.patch_embed.proj.weight", "teacher.head.last_layer.weight_v",
            "dino_loss.center"} <= set(a)  # fmt: skip
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["steps"] == 3 and record["seed"] == 1 and record["config"]["arch"] == "world-dino-tiny"
    assert [r["step"] for r in record["history"]] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in record["history"])
    model = load_world_dino(tmp_path / "a.safetensors", arch="world-dino-tiny")
    assert torch.equal(model.cls_token.half(), a["teacher.backbone.cls_token"])
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    with pytest.raises(ValueError, match="not a world-dino checkpoint"):
        load_world_dino(tmp_path / "a.safetensors")


def test_the_cli_pretrains_world_dino_and_refuses_dino_options_for_world_clip(tmp_path, capsys) -> None:
    from focusshot.cli import main

    out = tmp_path / "w.safetensors"
    args = ["world", "pretrain", "--arch", "world-dino-tiny", "--steps", "1", "--batch-size", "2"]
    args += ["--n-local", "1", "--out-dim", "16", "--head-hidden", "16", "--head-bottleneck", "8"]
    assert main([*args, "--local-scale", "0.1,0.3", "--threads", "1", "--output", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["config"]["local_scale"] == [0.1, 0.3] and record["config"]["out_dim"] == 16
    assert record["config"]["lr"] == DinoConfig().lr  # an option not given keeps world-dino's default
    assert record["config"]["backgrounds"] == DinoConfig().backgrounds == 1
    # the background pool reaches the scene stream (one step at lr 0: only the centre moves)
    shared = tmp_path / "unique.safetensors"
    assert main([*args, "--local-scale", "0.1,0.3", "--backgrounds", "0", "--output", str(shared)]) == 0
    assert json.loads(shared.with_suffix(".json").read_text())["config"]["backgrounds"] == 0
    a, b = load_file(str(out)), load_file(str(shared))
    assert not torch.equal(a["dino_loss.center"], b["dino_loss.center"])  # the teacher saw other scenes
    capsys.readouterr()
    bad = ["world", "pretrain", "--arch", "world-clip", "--teacher-temp", "0.05", "--output", str(out)]
    assert main(bad) == 2
    assert "--teacher-temp do not apply to --arch world-clip" in capsys.readouterr().err
