"""Contrastive pretraining of ``world-clip`` on FocusWorld base-class scenes.

CLIP's objective (Radford et al., 2021): a symmetric cross-entropy over the in-batch image-text
similarity matrix scaled by a learnt temperature. Captions name every object in a scene, so the
model learns to attend to all entities and is never told which one a later task cares about.
Base classes only: novel classes stay unseen for zero-shot and few-shot evaluation.

Deterministic for a seed: a fixed number of steps (not a time budget), seeded data stream,
seeded initialisation, and a fixed thread count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.backbones.clip import CLIP
from focusshot.options import option


@dataclass
class PretrainConfig:
    """Settings of world-clip pretraining."""

    steps: int = option(1500, "optimisation steps")
    batch_size: int = option(128, "image-caption pairs per step")
    lr: float = option(1e-3, "peak AdamW learning rate")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    warmup: int = option(100, "linear warm-up steps")
    seed: int = option(0, "seed of weights and data")
    threads: int = option(2, "torch CPU threads (fixed for reproducibility)")
    suite: str = option("world:base", "FocusWorld suite to train on")
    arch: str = option("world-clip", "world-clip or world-clip-deep")


def images_to_tensor(images, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 images ``(B, H, W, 3)`` -> normalised float ``(B, 3, H, W)``."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def clip_loss(model: CLIP, images: Tensor, ids: Tensor) -> tuple[Tensor, float]:
    """Symmetric InfoNCE over a batch; returns the loss and the image->text top-1 accuracy."""
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(ids), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100.0) * img @ txt.t()
    target = torch.arange(len(images))
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    acc = float((logits.argmax(1) == target).float().mean())
    return loss, acc


def _param_groups(model: CLIP, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(cfg: PretrainConfig, output: str | Path, log=print) -> dict:
    """Train world-clip and write ``output`` (float16 safetensors) plus ``output``.json (provenance)."""
    from focusshot.backbones.world_clip import IMAGE_SIZE, build_world_clip, world_tokenizer
    from focusshot.data.world import caption_vocabulary, iter_batches
    from focusshot.versions import versions

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_world_clip(world_tokenizer(caption_vocabulary()), arch=cfg.arch).train()
    pre = model.preprocess
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))

    stream = iter_batches(cfg.suite, cfg.batch_size, IMAGE_SIZE, cfg.seed)
    history = []
    start = time.time()
    for step in range(cfg.steps):
        images, captions, _ = next(stream)
        x = images_to_tensor(images, pre.mean, pre.std)
        ids = model.tokenize(captions)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, acc = clip_loss(model, x, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            row = {
                "step": step,
                "loss": float(loss.detach()),
                "batch_acc": acc,
                "seconds": round(time.time() - start, 1),
            }
            history.append(row)
            log(json.dumps(row))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    info = {
        "config": asdict(cfg),
        "versions": versions(),
        "seconds": round(time.time() - start, 1),
        "final": history[-1],
    }
    tmp = output.with_name(output.name + ".tmp")
    save_file(state, str(tmp), metadata={"focusshot": json.dumps(info)})
    tmp.replace(output)
    output.with_suffix(".json").write_text(json.dumps({**info, "history": history}, indent=2) + "\n")
    return info
