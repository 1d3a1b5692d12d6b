"""CLIP-LoRA: low-rank adapters on q, k, v of both CLIP towers (Zanella & Ben Ayed, *Low-Rank
Few-Shot Adaptation of Vision-Language Models*, CVPR Workshops 2024; ``MaxZanella/CLIP-LoRA``).

LoRA (rank 2, alpha 1, dropout 0.25 on the low-rank path's input) wraps the query, key and value
projections of every attention layer of the image tower and of the text tower. The classifier is
CLIP's own: ``scale * cos(image, text_c)`` with ``text_c`` the adapted text tower's embedding of
"a photo of a {class}." (one template), so nothing but the adapters trains. One fixed recipe for
every task and shot count, as the paper insists: AdamW (lr 2e-4, weight decay 0.01), batch 32,
``500 x K`` steps (K = shots per class) with cosine decay to 1e-6, no validation.

On CLIP's ResNet the image side's only attention is the pool, so LoRA goes there (the paper
covers ViTs). The paper trains on randomly cropped and flipped images; ``views`` > 0 adds that many
cached augmented views per support image. The whole image tower runs each step (the prefix is
the preprocessed image). ``wise`` < 1 scales every ``lora_B`` after training: the adapted weights
become ``W0 + wise (W_trained - W0)``, WiSE-FT's weight interpolation (Wortsman et al., CVPR 2022).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from focusshot.adapters.base import load_trainable_state
from focusshot.adapters.lora import inject_lora
from focusshot.backbones.base import Backbone
from focusshot.backbones.clip import CLIP, TextTransformer
from focusshot.backbones.prefix import Prefix
from focusshot.heads.base import l2_normalize
from focusshot.heads.trainable import LinearHead
from focusshot.methods.base import FitContext, Fitted, Method, options_from_dict, register_method
from focusshot.methods.finetune import AdaptedFitted, Tail, frozen_copy, train_modules, with_views
from focusshot.methods.text import fill, logit_scale, readable, require_text_tower
from focusshot.methods.tuning import LoRAFields
from focusshot.options import option
from focusshot.training.loop import TrainConfig, train

__all__ = ["CLIPLoRAMethod", "CLIPLoRAOptions"]


@dataclass(frozen=True)
class CLIPLoRAOptions(LoRAFields):
    """CLIP-LoRA's fixed recipe (module docstring): the adapter's fields
    (:class:`~focusshot.adapters.lora.LoRAConfig`) with the paper's defaults, and its training."""

    rank: int = option(2, "rank r of the update B A (r >= 1)")
    dropout: float = option(0.25, "dropout on the input of the low-rank path")
    targets: tuple[str, ...] = option(("*.attn.q", "*.attn.k", "*.attn.v"), "module patterns, in both towers")
    encoders: str = option("both", "which towers get LoRA: both, vision or text")
    lr: float = option(2e-4, "AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    batch_size: int = option(32, "images per step")
    iters_per_shot: int = option(500, "steps = iters_per_shot x K (shots per class)")
    steps: int = option(0, "a fixed number of steps instead (0: iters_per_shot x K)")
    min_lr: float = option(1e-6, "learning rate the cosine decay ends at")
    template: str = option("a photo of a {}.", "the one prompt template")
    scale: float = option(0.0, "logit scale (0: the model's exp(logit_scale))")
    views: int = option(0, "augmented views per support image (random resized crop + flip), cached")
    wise: float = option(
        1.0, "WiSE-FT: weights = zero-shot + wise x (trained - zero-shot), via lora_B; 1: off"
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.wise <= 1.0:
            raise ValueError(f"wise must be in [0, 1], got {self.wise}")
        if self.encoders not in ("both", "vision", "text"):
            raise ValueError(f"encoders must be both, vision or text, got {self.encoders!r}")
        if self.steps < 0 or self.iters_per_shot < 1 or self.batch_size < 1 or self.views < 0:
            raise ValueError("steps >= 0, iters_per_shot >= 1, batch_size >= 1 and views >= 0 are required")
        if "{}" not in self.template:
            raise ValueError(f"the template needs a '{{}}' for the class name, got {self.template!r}")
        super().__post_init__()  # then the adapter's checks (LoRAFields)


class _TextClassifier(nn.Module):
    """The (adapted) text tower's class embeddings ``(C, E)``, L2-normalised, from fixed token ids."""

    def __init__(self, text: TextTransformer, ids: Tensor) -> None:
        super().__init__()
        self.text = text
        eot = text.eot_positions(ids)
        self.register_buffer("ids", ids[:, : int(eot.max()) + 1].clone(), persistent=False)

    def forward(self) -> Tensor:
        return l2_normalize(self.text(self.ids))


@register_method("clip_lora", auto_order=5)  # auto: tried while the budget lasts
class CLIPLoRAMethod(Method[CLIPLoRAOptions]):
    """CLIP-LoRA: LoRA on q, k, v of both towers, CLIP's text classifier (Zanella & Ben Ayed, 2024)."""

    trains: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True
    summary = "CLIP-LoRA: LoRA r=2 on q, k, v of both CLIP towers, one fixed recipe (Zanella & Ben Ayed)"

    def prefix(self, backbone: Backbone) -> Prefix:
        require_text_tower(self.name, backbone)
        return Prefix.images()

    def augment_views(self) -> int:
        return int(self.options.views)

    def build(self, backbone: Backbone, generator: torch.Generator) -> tuple[CLIP, list[nn.Parameter]]:
        """A frozen copy of ``backbone`` with LoRA in the chosen towers, and the LoRA parameters."""
        o = self.options
        model = frozen_copy(require_text_tower(self.name, backbone))
        cfg = o.lora_config()
        towers = {"both": (model.visual, model.text), "vision": (model.visual,), "text": (model.text,)}
        for tower in towers[o.encoders]:
            inject_lora(tower, cfg, generator=generator)
        return model, [p for p in model.parameters() if p.requires_grad]

    def _ids(self, backbone: CLIP, class_names: list[str]) -> Tensor:
        return backbone.tokenize([fill(self.options.template, readable(c)) for c in class_names])

    def _scale(self, backbone: Backbone) -> float:
        return logit_scale(backbone, self.options.scale)

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        o = self.options
        t0 = time.perf_counter()
        if not ctx.class_names:
            raise ValueError(f"method {self.name!r} needs the class names")
        gen = torch.Generator().manual_seed(ctx.seed)
        model, params = self.build(ctx.backbone, gen)
        device = torch.device(ctx.device)
        model.to(device)
        classifier = _TextClassifier(model.text, self._ids(model, list(ctx.class_names))).to(device)
        scale = self._scale(ctx.backbone)
        inputs, targets = with_views(self.name, support, labels, ctx.views, o.views)
        shots = max(1, math.ceil(len(support) / max(ctx.num_classes, 1)))
        steps = o.steps or o.iters_per_shot * shots
        cfg = TrainConfig(
            optimizer="adamw",
            lr=o.lr,
            weight_decay=o.weight_decay,
            steps=steps,
            batch_size=o.batch_size,
            min_lr=min(o.min_lr, o.lr),
            seed=ctx.seed,
            progress=ctx.progress,
        )

        def forward(x: Tensor) -> Tensor:
            logits: Tensor = scale * l2_normalize(model.forward_features(x)) @ classifier().T
            return logits

        result = train(
            forward,
            params,
            inputs.to(device),
            targets.to(device),
            cfg,
            modules=train_modules(model),
            device=device,
        )
        model.eval()
        with torch.no_grad():
            if o.wise != 1.0:  # W0 + wise * s B A: exactly WiSE-FT's interpolation, since B starts at 0
                for name, p in model.named_parameters():
                    if name.endswith("lora_B"):
                        p.mul_(o.wise)
            text = classifier().float()
        head = LinearHead(scale * text, torch.zeros(len(text)), normalize=True).to(device)
        head.requires_grad_(False)
        record = result.to_dict()
        record.pop("history", None)
        record.update(
            {
                "fit_seconds": round(time.perf_counter() - t0, 3),
                "trained_params": sum(p.numel() for p in params),
            }
        )
        config = {
            "method": self.name,
            "options": self.options_dict(),
            "seed": ctx.seed,
            "scale": scale,
            "start": None,
        }
        return AdaptedFitted(self.name, Tail(model, None), head, config, record)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        method = cls(options_from_dict(cls.Options, config["options"], cls.name))
        model, _ = method.build(backbone, torch.Generator().manual_seed(int(config.get("seed", 0))))
        tail = Tail(model, None)
        load_trainable_state(
            tail, {k.removeprefix("tail."): v for k, v in state.items() if k.startswith("tail.")}
        )
        head = LinearHead(state["head.weight"], state["head.bias"], normalize=True).requires_grad_(False)
        return AdaptedFitted(cls.name, tail, head, config, {})
