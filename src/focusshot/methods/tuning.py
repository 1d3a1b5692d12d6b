"""The fine-tuning baselines FORT measures itself against: ``ft``, ``last_block``, ``lora``, ``ssf``, ``vpt``.

Defaults follow the official FORT code (Wang et al., NeurIPS 2023; ``Haoqing-Wang/FORT``), which
tunes each episode's support set with batch = N-way and a MetaOptNet-initialised head:

========== ========================= ===== ====== ============ ==========================================
method     optimiser                 lr    epochs temperature  what trains
========== ========================= ===== ====== ============ ==========================================
ft         AdamW (wd 0.01)           1e-5  5      1            every image-tower parameter
last_block AdamW (wd 0.01)           1e-4  10     1            the last block + final norm/projection
lora       AdamW (wd 0.01)           5e-3  10     20           LoRA r=4, alpha=1 on q, k, v, proj
ssf        AdamW (wd 0.01)           5e-3  10     20           SSF scale/shift after linears and norms
vpt        SGD (m 0.9, wd 1e-3)      1e-2  10     20           10 deep prompt tokens per block
========== ========================= ===== ====== ============ ==========================================

FORT's code puts LoRA on the fused qkv and the output projection (our separate q, k, v and proj);
``lora.targets`` narrows it to q and v (Hu et al.'s choice). ``last_block`` has no FORT default:
lr 1e-4 for 10 epochs is ours. Every recipe also tunes its head. Hu et al., *LoRA*, ICLR 2022;
Lian et al., *Scaling & Shifting Your Features* (SSF), NeurIPS 2022; Jia et al., *Visual Prompt
Tuning*, ECCV 2022.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from torch import nn

from focusshot.adapters.base import AdapterError, find_modules, freeze
from focusshot.adapters.lora import LoRAConfig, inject_lora
from focusshot.adapters.ssf import SSF_DEFAULT_TARGETS, SSFConfig, inject_ssf
from focusshot.adapters.vpt import VPTConfig, check_vpt_model, inject_vpt
from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.methods.base import register_method
from focusshot.methods.finetune import FO, FinetuneMethod, FinetuneOptions, image_tower, own_storage
from focusshot.options import Checked, check_component, option


def _in_tail(name: str, start: int | None) -> bool:
    """Whether module ``name`` of the image tower runs in a tail that starts at block ``start``."""
    if start is None:
        return True
    parts = name.split(".")
    if parts[0] == "blocks":
        return len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= start
    return parts[0] in ("norm", "proj")


def _tail_targets(
    model: Backbone,
    targets: tuple[str, ...],
    start: int | None,
    kind: type[nn.Module] | tuple[type[nn.Module], ...],
) -> tuple[str, ...]:
    """Exact names of the tower's modules matching ``targets`` that run in the tail."""
    tower = image_tower(model)
    names = [n for n, _ in find_modules(tower, targets, kind) if _in_tail(n, start)]
    if not names:
        kinds = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AdapterError(
            f"no {kinds} modules matching {list(targets)} after block {start or 0} in "
            f"{type(model).__name__} ({model.identity.name})"
        )
    return tuple(names)


@dataclass(frozen=True)
class FullOptions(FinetuneOptions):
    lr: float = option(1e-5, "learning rate")
    epochs: int = option(5, "epochs over the support set (0: use steps)")


class FullTuning(FinetuneMethod[FO]):
    """Tunes the image tower's own parameters: all of them, or those of the tuned tail's blocks
    (``ft``, ``last_block`` and ``ft+fort``)."""

    def adapt(self, model: Backbone, start: int | None, generator: torch.Generator) -> list[nn.Parameter]:
        tower = image_tower(model)
        params: list[nn.Parameter] = []
        for name, child in tower.named_children():
            if name == "blocks" and start is not None:
                for i, blk in enumerate(cast(nn.ModuleList, child)):
                    if i >= start:
                        params += own_storage(blk)
            elif _in_tail(name, start):
                params += own_storage(child)
        if start is None:  # parameters held directly by the tower (cls token, position embeddings)
            for _, p in tower.named_parameters(recurse=False):
                p.data = p.data.clone()
                p.requires_grad_(True)
                params.append(p)
        return params


@register_method("ft", groups=("tuning",))
class FullFinetune(FullTuning[FullOptions]):
    """Full fine-tuning of the image tower (and a solver-initialised head)."""

    summary = "full fine-tuning of the image tower, head from MetaOptNet (FORT's FT baseline)"


@dataclass(frozen=True)
class LastBlockOptions(FinetuneOptions):
    blocks: int = option(1, "tune the last k blocks from the cached tokens entering block L-k (0: all)")
    lr: float = option(1e-4, "learning rate")


@register_method("last_block", groups=("tuning",))
class LastBlockFinetune(FullTuning[LastBlockOptions]):
    """Tune the last block(s) only, reading the cached tokens entering them."""

    summary = "fine-tune the last k blocks (default 1) from the cached tokens entering them"


@dataclass(frozen=True)
class LoRAFields(Checked):
    """LoRA's fields (:class:`~focusshot.adapters.lora.LoRAConfig`'s, with the official FORT code's
    defaults), checked by the adapter's config when the options are created; ``lora`` and
    ``clip_lora`` take them."""

    rank: int = option(4, "rank r of the update B A (r >= 1)")
    alpha: float = option(1.0, "the update is scaled by alpha / rank")
    dropout: float = option(0.0, "dropout on the input of the low-rank path")
    targets: tuple[str, ...] = option(
        ("*.attn.q", "*.attn.k", "*.attn.v", "*.attn.proj"),
        "fnmatch patterns of the nn.Linear layers to adapt (qualified module names)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_component(self, ("rank", "alpha", "dropout", "targets"), self.lora_config)

    def lora_config(self, targets: tuple[str, ...] | None = None) -> LoRAConfig:
        """The adapter's config (``targets``: the exact module names the patterns resolved to)."""
        names = self.targets if targets is None else targets
        return LoRAConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout, targets=names)


@dataclass(frozen=True)
class LoRAOptions(LoRAFields, FinetuneOptions):
    """FORT's LoRA: the adapter's fields with the official code's defaults, plus the shared tuning
    options."""

    lr: float = option(5e-3, "learning rate")
    temperature: float = option(20.0, "logits = (W f + b) / temperature; W, b start at temperature x solver")


LO = TypeVar("LO", bound=LoRAOptions)


class LoRATuning(FinetuneMethod[LO]):
    """Tunes LoRA updates of the tail's linear layers matching ``targets`` (``lora``, ``lora+fort``)."""

    def check_backbone(self, backbone: Backbone, prefix: Prefix) -> None:
        """Linear layers matching ``targets`` in the tail that starts where ``prefix`` enters."""
        super().check_backbone(backbone, prefix)
        _tail_targets(backbone, self.options.targets, self.tail_start(prefix), nn.Linear)

    def adapt(self, model: Backbone, start: int | None, generator: torch.Generator) -> list[nn.Parameter]:
        names = _tail_targets(model, self.options.targets, start, nn.Linear)
        tower = image_tower(model)
        inject_lora(tower, self.options.lora_config(names), generator=generator)
        return [p for p in tower.parameters() if p.requires_grad]


@register_method("lora", groups=("tuning",), auto_order=4)  # auto: tried while the budget lasts
class LoRAFinetune(LoRATuning[LoRAOptions]):
    """LoRA on the attention projections (Hu et al., ICLR 2022)."""

    summary = "LoRA (r=4) on q, k, v, proj of every block, head from MetaOptNet"


@dataclass(frozen=True)
class SSFOptions(FinetuneOptions):
    """SSF's fields (:class:`~focusshot.adapters.ssf.SSFConfig`), identity start, plus the shared ones."""

    init_std: float = option(0.0, "scale ~ N(1, std), shift ~ N(0, std) at init; 0 starts from the identity")
    targets: tuple[str, ...] = option(
        SSF_DEFAULT_TARGETS, "fnmatch patterns of the nn.Linear / nn.LayerNorm layers to scale and shift"
    )
    lr: float = option(5e-3, "learning rate")
    temperature: float = option(20.0, "logits = (W f + b) / temperature; W, b start at temperature x solver")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_component(self, ("init_std", "targets"), self.ssf_config)

    def ssf_config(self, targets: tuple[str, ...] | None = None) -> SSFConfig:
        """The adapter's config (``targets``: the exact module names the patterns resolved to)."""
        return SSFConfig(targets=self.targets if targets is None else targets, init_std=self.init_std)


SO = TypeVar("SO", bound=SSFOptions)


class SSFTuning(FinetuneMethod[SO]):
    """Tunes SSF scales and shifts after the tail's linear and norm layers (``ssf``, ``ssf+fort``)."""

    def check_backbone(self, backbone: Backbone, prefix: Prefix) -> None:
        """Linear or norm layers matching ``targets`` in the tail that starts where ``prefix`` enters."""
        super().check_backbone(backbone, prefix)
        _tail_targets(backbone, self.options.targets, self.tail_start(prefix), (nn.Linear, nn.LayerNorm))

    def adapt(self, model: Backbone, start: int | None, generator: torch.Generator) -> list[nn.Parameter]:
        names = _tail_targets(model, self.options.targets, start, (nn.Linear, nn.LayerNorm))
        tower = image_tower(model)
        inject_ssf(tower, self.options.ssf_config(names), generator=generator)
        return [p for p in tower.parameters() if p.requires_grad]


@register_method("ssf", groups=("tuning",))
class SSFFinetune(SSFTuning[SSFOptions]):
    """SSF: learnable scale and shift after linear and norm layers (Lian et al., NeurIPS 2022)."""

    summary = "SSF scale/shift after every linear and norm, head from MetaOptNet"


@dataclass(frozen=True)
class VPTOptions(FinetuneOptions):
    """VPT's fields (:class:`~focusshot.adapters.vpt.VPTConfig`), deep, plus the shared ones."""

    num_tokens: int = option(10, "number P of prompt tokens (per block when deep)")
    deep: bool = option(True, "new prompts at every block (VPT-deep) instead of once (shallow)")
    prompt_dropout: float = option(0.0, "dropout on the prompt embeddings")
    optimizer: str = option("sgd", "adamw or sgd")
    lr: float = option(1e-2, "learning rate")
    weight_decay: float = option(1e-3, "weight decay (matrices only)")
    temperature: float = option(20.0, "logits = (W f + b) / temperature; W, b start at temperature x solver")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_component(self, ("num_tokens", "deep", "prompt_dropout"), self.vpt_config)

    def vpt_config(self) -> VPTConfig:
        """The adapter's config."""
        return VPTConfig(num_tokens=self.num_tokens, deep=self.deep, dropout=self.prompt_dropout)


VO = TypeVar("VO", bound=VPTOptions)


class VPTTuning(FinetuneMethod[VO]):
    """Tunes prompt tokens entering the tail's blocks (``vpt``, ``vpt+fort``)."""

    def check_backbone(self, backbone: Backbone, prefix: Prefix) -> None:
        """A ViT's list of blocks to prompt."""
        super().check_backbone(backbone, prefix)
        check_vpt_model(image_tower(backbone))

    def adapt(self, model: Backbone, start: int | None, generator: torch.Generator) -> list[nn.Parameter]:
        tower = image_tower(model)
        freeze(tower)
        inject_vpt(tower, self.options.vpt_config(), start=start or 0, generator=generator)
        return [p for p in tower.parameters() if p.requires_grad]


@register_method("vpt", groups=("tuning",))
class VPTFinetune(VPTTuning[VPTOptions]):
    """Visual Prompt Tuning, deep by default (Jia et al., ECCV 2022)."""

    summary = "VPT: 10 learnable prompt tokens per block (deep), head from MetaOptNet"
