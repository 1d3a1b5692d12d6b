"""Self-distillation pretraining of ``world-dino`` on FocusWorld base-class scenes (DINO).

Caron et al., *Emerging Properties in Self-Supervised Vision Transformers* (ICCV 2021). A student
ViT with a projection head is trained to match a teacher, the exponential moving average (EMA) of
the student, across views: the teacher sees two global crops, the student every global and local
crop (:mod:`focusshot.training.multicrop`), and the loss is the cross-entropy between the teacher's
centred, sharpened softmax and the student's softmax over every (teacher view i, student view j != i)
pair. Centring (an EMA of the teacher's mean output subtracted before its softmax) and sharpening (a
low teacher temperature) together keep the outputs from collapsing. No labels and no captions: the
images are scenes of FocusWorld's *base* classes (single objects and clutter, 0-4 distractors);
novel classes, which episodes use, are never seen. Every scene is drawn on one shared background
(``backgrounds=1``): with a new background per scene, DINO learned the background, which tells
scenes apart and is in every crop, instead of the objects (the first world-dino; see
``benchmarks/world_dino_encodes.py``).

Architecture (:mod:`focusshot.backbones.world_dino`): world-clip-deep's image tower, 12 layers x 6
heads, width 144, patch 8 at 64 px, in DINO's ViT layout (``qkv`` bias, LayerNorm eps 1e-6). Chosen
over world-clip's 6 x 3 at width 192 because FORT's premise concerns a 12-layer DINO ViT (FORT starts
from ViT-B/16) and its Grad-Rollout runs over the depth, and because with the same tower as
world-clip-deep the two models differ only in their objective. Both towers cost about the same per
token on one CPU thread: a step of 32 scenes x (2 global + 6 local) views took 1.8-1.9 s on one
thread of a build machine with little competing load (3-4 s with another run beside it), so the
default 600 steps take 20 to 40 minutes.

Projection head: DINO's 3-layer MLP (GELU), an L2-normalised bottleneck and a weight-normalised last
layer with its norm fixed at 1, scaled down for a width-144 ViT: hidden 512, bottleneck 128, and
``out_dim`` 256 prototypes instead of 65536: in short probes (``benchmarks/world_dino_pilot.py``)
256 prototypes with lr 1e-3 and teacher momentum 0.99 learned the objects faster than 1024 with
DINO's lr and momentum, and the head stays small in the 10 MB float16 budget.

Deterministic for a seed: a fixed number of steps, a seeded scene stream and crop generator, seeded
initialisation and a fixed thread count; a rerun writes a byte-identical file (the metadata in the
file holds no timing). The teacher is saved in DINO's full-checkpoint layout, flattened:
``teacher.backbone.*`` (timm names: ``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``,
``blocks.N.attn.qkv.weight``...), ``teacher.head.*`` (``mlp.0/2/4``, ``last_layer.weight_g/_v``) and
``dino_loss.center``, float16, with a provenance JSON beside it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.backbones.convert.timm_vit import TEACHER, to_timm_state_dict
from focusshot.backbones.vit import VisionTransformer
from focusshot.options import option
from focusshot.training.multicrop import CropSpec, multi_crop, step_generator


@dataclass
class DinoConfig:
    """Settings of world-dino pretraining (DINO's names in parentheses where they differ)."""

    steps: int = option(600, "optimisation steps")
    batch_size: int = option(32, "scenes per step")
    lr: float = option(1e-3, "peak AdamW learning rate, reached after warm-up")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine")
    weight_decay: float = option(0.04, "AdamW weight decay at the start")
    weight_decay_end: float = option(0.4, "weight decay at the end (cosine)")
    warmup: int = option(50, "linear learning-rate warm-up steps")
    seed: int = option(0, "seed of weights, scenes and crops")
    threads: int = option(1, "torch CPU threads (fixed for reproducibility)")
    suite: str = option("world:base", "FocusWorld suite (base classes only)")
    backgrounds: int = option(
        1, "draw scene backgrounds from a shared pool of this many (0: a new one per scene)"
    )
    arch: str = option("world-dino", "world-dino (or world-dino-tiny for tests)")
    out_dim: int = option(256, "prototypes of the projection head (K)")
    head_hidden: int = option(512, "hidden width of the head's MLP")
    head_bottleneck: int = option(128, "bottleneck width before the last layer")
    momentum_teacher: float = option(0.99, "teacher EMA momentum (cosine to 1)")
    teacher_temp: float = option(0.04, "teacher temperature after warm-up")
    teacher_temp_start: float = option(0.04, "teacher temperature at step 0")
    teacher_temp_warmup: int = option(0, "steps of teacher-temperature warm-up")
    student_temp: float = option(0.1, "student temperature")
    center_momentum: float = option(0.9, "momentum of the teacher-output centre")
    n_local: int = option(6, "local crops per scene (local_crops_number)")
    global_size: int = option(64, "side of the 2 global crops (pixels)")
    local_size: int = option(32, "side of the local crops (pixels)")
    global_scale: tuple[float, float] = option(
        (0.4, 1.0), "area fraction of global crops (global_crops_scale)"
    )
    local_scale: tuple[float, float] = option((0.05, 0.4), "area fraction of local crops (local_crops_scale)")
    clip_grad: float = option(3.0, "gradient-norm clip (0: none)")
    freeze_last_layer: int = option(0, "steps the head's last layer stays fixed")
    log_every: int = option(25, "steps between log lines")

    def __post_init__(self) -> None:
        for name in ("global_scale", "local_scale"):
            lo_hi = tuple(float(v) for v in getattr(self, name))
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
                raise ValueError(f"{name} must be two area fractions 0 < min <= max <= 1, got {lo_hi}")
            setattr(self, name, lo_hi)
        if self.steps < 1 or self.batch_size < 1 or self.n_local < 0:
            raise ValueError("steps and batch_size must be positive and n_local non-negative")

    def crop_spec(self) -> CropSpec:
        """The multi-crop views of this configuration."""
        return CropSpec(
            global_size=self.global_size,
            local_size=self.local_size,
            n_local=self.n_local,
            global_scale=(self.global_scale[0], self.global_scale[1]),  # two floats (__post_init__)
            local_scale=(self.local_scale[0], self.local_scale[1]),
        )


class WeightNormLinear(nn.Module):
    """Bias-free linear layer ``W = g * V / ||V||`` (row norms), as ``nn.utils.weight_norm`` stores it.

    Parameters ``weight_g`` ``(out, 1)`` and ``weight_v`` ``(out, in)`` keep DINO's checkpoint names.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        v = nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone()
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)``."""
        return F.linear(x, self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True))


class DinoHead(nn.Module):
    """DINO's projection head: ``(B, in_dim) -> (B, out_dim)`` logits over prototypes.

    ``Linear-GELU-Linear-GELU-Linear`` to ``bottleneck``, L2 normalisation, then a weight-normalised
    linear layer whose norm ``weight_g`` is fixed at 1 (``norm_last_layer=True``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck, out_dim)
        self.last_layer.weight_g.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DinoModel(nn.Module):
    """A backbone and its head (DINO's ``MultiCropWrapper``): each resolution group runs as one batch.

    ``forward(globals (2B, 3, G, G), locals (nB, 3, L, L)) -> (2B + nB, out_dim)``, rows in input order.
    """

    def __init__(self, backbone: VisionTransformer, head: DinoHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, *groups: Tensor) -> Tensor:
        feats = [self.backbone.forward_features(g) for g in groups if len(g)]
        return self.head(torch.cat(feats))


def init_dino_weights(vit: VisionTransformer) -> None:
    """DINO's ViT initialisation: truncated normal (std 0.02) linear weights, zero biases, LayerNorm
    1 / 0, truncated normal [CLS] and position embeddings; the patch convolution keeps torch's."""
    for m in vit.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(vit.pos_embed, std=0.02)
    nn.init.trunc_normal_(vit.cls_token, std=0.02)


def dino_loss(
    student: Tensor, teacher: Tensor, center: Tensor, student_temp: float, teacher_temp: float
) -> Tensor:
    """DINO's loss (Caron et al., 2021, Eq. 3 with multi-crop).

    Args:
        student: ``(V * B, K)`` student logits of V views, view-major, the 2 global views first.
        teacher: ``(2 * B, K)`` teacher logits of the 2 global views, view-major.
        center: ``(1, K)`` running mean of the teacher's logits.

    Returns:
        The mean over pairs (teacher view i, student view j != i) of the batch mean of
        ``-sum_k softmax((t - c) / teacher_temp)_k * log_softmax(s / student_temp)_k``.
    """
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach().chunk(2)
    views = student.shape[0] // t[0].shape[0]
    logp = F.log_softmax(student / student_temp, dim=-1).chunk(views)
    total, terms = student.new_zeros(()), 0
    for i, q in enumerate(t):
        for j, lp in enumerate(logp):
            if j != i:
                total = total + (-(q * lp).sum(-1)).mean()
                terms += 1
    return total / terms


def update_center(center: Tensor, teacher: Tensor, momentum: float) -> Tensor:
    """``momentum * center + (1 - momentum) * mean(teacher)`` over the batch: ``(1, K)``."""
    return center * momentum + teacher.mean(dim=0, keepdim=True) * (1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def cosine(base: float, final: float, step: int, steps: int, warmup: int = 0) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup`` steps, then cosine from ``base`` to ``final``."""
    if step < warmup:
        return base * step / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t))


def _param_groups(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Trainable parameters with weight decay (matrices) and without (biases, norms, tokens)."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim < 2 or name.endswith(("cls_token", "pos_embed"))
        (no_decay if flat else decay).append(p)
    return decay, no_decay


class DinoTrainer:
    """Student, EMA teacher, centre, optimiser and the seeded data stream of one DINO run."""

    def __init__(self, cfg: DinoConfig) -> None:
        from focusshot.backbones.world_dino import IMAGE_SIZE, PREPROCESS, build_world_dino
        from focusshot.data.world import iter_batches, resolve_suite

        if resolve_suite(cfg.suite).pool != "base":
            raise ValueError(f"DINO pretraining uses base classes only; {cfg.suite!r} draws from others")
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        backbone = build_world_dino(cfg.arch)
        init_dino_weights(backbone)
        head = DinoHead(backbone.num_features, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck)
        self.student = DinoModel(backbone, head).train()
        self.teacher = copy.deepcopy(self.student).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.center = torch.zeros(1, cfg.out_dim)
        decay, no_decay = _param_groups(self.student)
        groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups)
        self.mean, self.std = PREPROCESS.mean, PREPROCESS.std
        self.spec = cfg.crop_spec()
        self.stream = iter_batches(
            cfg.suite, cfg.batch_size, IMAGE_SIZE, cfg.seed, backgrounds=cfg.backgrounds
        )
        self.step_index = 0

    def schedules(self, step: int) -> dict[str, float]:
        """Learning rate, weight decay, teacher momentum and temperature at ``step``."""
        c = self.cfg
        temp = c.teacher_temp
        if step < c.teacher_temp_warmup:
            frac = step / c.teacher_temp_warmup
            temp = c.teacher_temp_start + (c.teacher_temp - c.teacher_temp_start) * frac
        return {
            "lr": cosine(c.lr, c.min_lr, step, c.steps, c.warmup),
            "wd": cosine(c.weight_decay, c.weight_decay_end, step, c.steps),
            "momentum": cosine(c.momentum_teacher, 1.0, step, c.steps),
            "teacher_temp": temp,
        }

    def step(self) -> dict[str, float]:
        """One optimisation step; returns its loss and diagnostics."""
        c, step = self.cfg, self.step_index
        sched = self.schedules(step)
        images, _, _ = next(self.stream)  # captions and labels are never used
        glob, loc = multi_crop(images, self.spec, step_generator(c.seed, step), self.mean, self.std)
        with torch.no_grad():
            t_out = self.teacher(glob)
        s_out = self.student(glob, loc)
        loss = dino_loss(s_out, t_out, self.center, c.student_temp, sched["teacher_temp"])
        self.opt.param_groups[0]["lr"] = self.opt.param_groups[1]["lr"] = sched["lr"]
        self.opt.param_groups[0]["weight_decay"] = sched["wd"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), c.clip_grad)
        if step < c.freeze_last_layer:
            self.student.head.last_layer.weight_v.grad = None
        self.opt.step()
        ema_update(self.teacher, self.student, sched["momentum"])
        with torch.no_grad():
            probs = F.softmax((t_out - self.center) / sched["teacher_temp"], dim=-1)
            entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
            mean_p = probs.mean(0)
            usage = float(-(mean_p * mean_p.clamp_min(1e-12).log()).sum())
            self.center = update_center(self.center, t_out, c.center_momentum)
        self.step_index += 1
        return {"step": step, "loss": float(loss.detach()), "teacher_entropy": entropy,
                "batch_entropy": usage, **sched}  # fmt: skip


def teacher_checkpoint(trainer: DinoTrainer) -> dict[str, Tensor]:
    """The teacher in DINO's full-checkpoint layout, flattened, float16 (see the module docstring)."""
    out = {f"{TEACHER}backbone.{k}": v for k, v in to_timm_state_dict(trainer.teacher.backbone).items()}
    out.update({f"{TEACHER}head.{k}": v for k, v in trainer.teacher.head.state_dict().items()})
    out["dino_loss.center"] = trainer.center.reshape(-1)
    return {k: v.detach().to(torch.float16).contiguous() for k, v in out.items()}


def pretrain_dino(cfg: DinoConfig, output: str | Path, log=print) -> dict:
    """Run DINO for ``cfg.steps`` and write ``output`` (float16 safetensors) and ``output``.json.

    Returns:
        The provenance record (config, versions, architecture, seconds, final row, sha256).
    """
    from safetensors.torch import save_file

    from focusshot.backbones.world_dino import ARCHS, IMAGE_SIZE, PATCH_SIZE
    from focusshot.versions import versions

    trainer = DinoTrainer(cfg)
    width, depth, heads = ARCHS[cfg.arch]
    arch = {"width": width, "depth": depth, "heads": heads, "patch": PATCH_SIZE, "image": IMAGE_SIZE}
    history, start = [], time.time()
    for step in range(cfg.steps):
        row = trainer.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
            row["seconds"] = round(time.time() - start, 1)
            history.append(row)
            log(json.dumps(row))
    seconds = round(time.time() - start, 1)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stable = {"format": "dino-teacher", "config": asdict(cfg), "architecture": arch, "versions": versions()}
    tmp = output.with_name(output.name + ".tmp")
    save_file(teacher_checkpoint(trainer), str(tmp), metadata={"focusshot": json.dumps(stable)})
    tmp.replace(output)
    info = {
        **stable,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "seconds": seconds,
        "seconds_per_step": round(seconds / max(1, cfg.steps), 3),
        "final": history[-1],
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
    }
    output.with_suffix(".json").write_text(json.dumps({**info, "history": history}, indent=2) + "\n")
    return info
