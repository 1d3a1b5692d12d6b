"""The CUDA paths, run where a GPU is (``pytest -m cuda``; ``benchmarks/gpu_check.sh``): attention
recording on the device, extraction (eager, compiled, bf16) against the CPU, bf16 autocast in the
training loop, and a training method's episode on the GPU. Skipped, saying why, without CUDA."""

from __future__ import annotations

import pytest
import torch

from focusshot import create_backbone, record
from focusshot.backbones.prefix import Prefix
from focusshot.evaluation.cache import FeatureCache

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def images(tmp_path):
    from focusshot.data.world import build_world

    return build_world("world:clutter", tmp_path / "w", per_class=1).paths[:6]


def test_attention_recorded_on_the_gpu_equals_the_cpu() -> None:
    cpu = create_backbone("tiny-clip-vit", pretrained=False, seed=0).eval()
    gpu = create_backbone("tiny-clip-vit", pretrained=False, seed=0).eval().cuda()
    x = torch.randn(3, 3, cpu.visual.cfg.image_size, cpu.visual.cfg.image_size)
    with record(cpu, "probs", "logits", layers=[-1]) as a, torch.no_grad():
        cpu.forward_features(x)
    with record(gpu, "probs", "logits", layers=[-1]) as b, torch.no_grad():
        gpu.forward_features(x.cuda())
    assert b.get("probs").is_cuda
    torch.testing.assert_close(b.get("probs").cpu(), a.get("probs"), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.get("logits").cpu(), a.get("logits"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compile", ["never", "always"])
def test_extraction_on_the_gpu_is_close_to_the_cpu(images, tmp_path, compile) -> None:
    model = create_backbone("tiny-vit", pretrained=False, seed=0)
    want = FeatureCache(tmp_path / "cpu", compile="never").get(model, images, Prefix.pooled(), progress=False)
    got = FeatureCache(tmp_path / "gpu", compile=compile).get(
        model.cuda(), images, Prefix.pooled(), progress=False
    )
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)  # float16 on disk
    half = FeatureCache(tmp_path / "bf16", autocast="bf16").get(
        model, images, Prefix.pooled(), progress=False
    )
    assert torch.nn.functional.cosine_similarity(half.cpu(), want, dim=-1).min() > 0.99


def test_bf16_autocast_trains_on_the_gpu() -> None:
    from focusshot.training.loop import TrainConfig, train

    torch.manual_seed(0)
    x = torch.randn(48, 8)
    y = (x[:, 0] > 0).long()
    layer = torch.nn.Linear(8, 2).cuda()
    result = train(
        layer, list(layer.parameters()), x, y, TrainConfig(steps=60, lr=0.05, amp=True), device="cuda"
    )
    assert result.amp and str(result.device).startswith("cuda")
    with torch.no_grad():
        acc = (layer(x.cuda()).argmax(-1).cpu() == y).float().mean()
    assert acc > 0.9


def test_a_lora_episode_runs_on_the_gpu(tmp_path, monkeypatch) -> None:
    from focusshot.api import evaluate

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    out = evaluate(
        "tiny-vit", "world:clutter?per_class=4", ["protonet", "lora", "lora+fort"], output=tmp_path / "r",
        ways=3, queries=2, episodes=2, pretrained=False, report=False, device="cuda",
        method_options={"lora": {"steps": 3}, "lora+fort": {"steps": 3}},
    )  # fmt: skip
    assert len(out.rows) == 6 and all(0 <= r["accuracy"] <= 1 for r in out.rows)
