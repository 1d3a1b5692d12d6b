"""Parameter-efficient tuning injected by module name: LoRA, SSF, VPT, and full / last-k tuning.

* :mod:`~focusshot.adapters.lora` -- LoRA (Hu et al., ICLR 2022);
* :mod:`~focusshot.adapters.ssf` -- SSF (Lian et al., NeurIPS 2022);
* :mod:`~focusshot.adapters.vpt` -- VPT, shallow and deep (Jia et al., ECCV 2022);
* :mod:`~focusshot.adapters.base` -- finding modules by name, freezing, unfreezing (full or last-k
  fine-tuning: ``unfreeze(model, ["*"])``, ``unfreeze(model, ["blocks.10", "blocks.11", "norm"])``)
  and saving what trains.

Recipe: ``freeze(model)``, inject (the adapter's own parameters train), train the parameters with
``requires_grad``, keep them with ``trainable_state``.
"""

from focusshot.adapters.base import (
    AdapterError,
    AdapterModule,
    describe_model,
    find_modules,
    freeze,
    load_trainable_state,
    replace_module,
    trainable_state,
    unfreeze,
)
from focusshot.adapters.lora import LoRAConfig, LoRALinear, inject_lora, lora_layers, merge_lora, unmerge_lora
from focusshot.adapters.ssf import (
    SSF,
    SSF_DEFAULT_TARGETS,
    SSFConfig,
    inject_ssf,
    merge_ssf,
    ssf_layers,
    unmerge_ssf,
)
from focusshot.adapters.vpt import PromptedBlock, VPTConfig, inject_vpt, pad_bias, vpt_prompts

__all__ = [
    "SSF",
    "SSF_DEFAULT_TARGETS",
    "AdapterError",
    "AdapterModule",
    "LoRAConfig",
    "LoRALinear",
    "PromptedBlock",
    "SSFConfig",
    "VPTConfig",
    "describe_model",
    "find_modules",
    "freeze",
    "inject_lora",
    "inject_ssf",
    "inject_vpt",
    "load_trainable_state",
    "lora_layers",
    "merge_lora",
    "merge_ssf",
    "pad_bias",
    "replace_module",
    "ssf_layers",
    "trainable_state",
    "unfreeze",
    "unmerge_lora",
    "unmerge_ssf",
    "vpt_prompts",
]
