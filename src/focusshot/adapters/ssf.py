"""SSF: scale and shift the features of a frozen network.

Lian et al., *Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning*
(NeurIPS 2022). After each adapted operation (here: linear layers and layer norms) the output
``y`` of shape ``(..., C)`` becomes ``y * gamma + beta`` with trainable per-channel ``gamma`` and
``beta`` of shape ``(C,)``. The paper draws ``gamma ~ N(1, std)`` and ``beta ~ N(0, std)`` with
``std = 0.02``; ``init_std = 0`` starts from the identity exactly. Being linear in ``y``, SSF folds
into the preceding layer after training ("re-parameterisation"):

* linear: ``W' = diag(gamma) W``, ``b' = gamma * b + beta``;
* layer norm: ``weight' = gamma * weight``, ``bias' = gamma * bias + beta``.

The default targets cover every linear layer and layer norm of focusshot's transformer blocks
(``attn.q/k/v/proj``, ``mlp.fc1/fc2``, ``norm1/norm2``) and the final ``norm``. The official code
also scales the patch-embedding output; that convolution is not a default target here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from focusshot.adapters.base import (
    AdapterError,
    AdapterModule,
    adapter_layers,
    injection_targets,
    merge_all,
    new_parameter,
    replace_module,
)
from focusshot.options import option

#: Every linear layer and layer norm in focusshot's ViT blocks, plus the final norm.
SSF_DEFAULT_TARGETS: tuple[str, ...] = (
    "*.attn.q",
    "*.attn.k",
    "*.attn.v",
    "*.attn.proj",
    "*.mlp.fc1",
    "*.mlp.fc2",
    "*.norm1",
    "*.norm2",
    "*norm",
)


@dataclass
class SSFConfig:
    """Options of :func:`inject_ssf`."""

    targets: tuple[str, ...] = option(
        SSF_DEFAULT_TARGETS, "fnmatch patterns of the nn.Linear / nn.LayerNorm layers to scale and shift"
    )
    init_std: float = option(0.02, "scale ~ N(1, std), shift ~ N(0, std) at init; 0 starts from the identity")

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"SSFConfig.targets must be non-empty strings, got {self.targets!r}")
        if not math.isfinite(self.init_std) or self.init_std < 0:
            raise ValueError(f"SSFConfig.init_std must be a finite number >= 0, got {self.init_std!r}")


class SSF(AdapterModule):
    """``base(x) * scale + shift`` over a frozen ``nn.Linear`` or ``nn.LayerNorm`` (Lian et al., 2022).

    Args:
        base: the layer; its parameters get ``requires_grad=False``.
        init_std: ``scale ~ N(1, init_std)``, ``shift ~ N(0, init_std)``.
        generator: random generator for the initialisation (global RNG when ``None``).

    Attributes:
        base: the wrapped layer.
        scale, shift: ``(out_features,)`` for a linear layer, ``normalized_shape`` for a layer norm.
        merged: whether scale and shift are folded into ``base``.
    """

    base: nn.Linear | nn.LayerNorm
    _orig_weight: Tensor | None  # buffers (register_buffer), set while merged
    _orig_bias: Tensor | None

    def __init__(
        self, base: nn.Linear | nn.LayerNorm, init_std: float = 0.02, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if isinstance(base, nn.Linear):
            shape: tuple[int, ...] = (base.out_features,)
            like = base.weight
        elif isinstance(base, nn.LayerNorm):
            shape = tuple(base.normalized_shape)
            like = base.weight if base.weight is not None else torch.empty(0)
        else:
            raise AdapterError(f"SSF wraps nn.Linear or nn.LayerNorm, got {type(base).__name__}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = new_parameter(shape, like, "normal", generator, mean=1.0, std=init_std)
        self.shift = new_parameter(shape, like, "normal", generator, mean=0.0, std=init_std)
        self.merged = False
        self._created_bias = False
        self.register_buffer("_orig_weight", None, persistent=False)
        self.register_buffer("_orig_bias", None, persistent=False)

    @property
    def weight(self) -> Tensor | None:
        """The base layer's weight (the scaled one only while merged)."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        """The base layer's bias (the scaled and shifted one only while merged)."""
        return self.base.bias

    @property
    def in_features(self) -> int:
        if not isinstance(self.base, nn.Linear):
            raise AttributeError("in_features: SSF wraps a LayerNorm here")
        return self.base.in_features

    @property
    def out_features(self) -> int:
        if not isinstance(self.base, nn.Linear):
            raise AttributeError("out_features: SSF wraps a LayerNorm here")
        return self.base.out_features

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        if not isinstance(self.base, nn.LayerNorm):
            raise AttributeError("normalized_shape: SSF wraps a Linear here")
        return tuple(self.base.normalized_shape)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., C_in) -> (..., C)``: ``base(x) * scale + shift`` (``base(x)`` alone while merged)."""
        out = self.base(x)
        if self.merged:
            return out
        return out * self.scale + self.shift

    @torch.no_grad()
    def merge(self) -> None:
        """Fold scale and shift into ``base`` (see the module docstring); merging twice does nothing.

        The parameters stay the same objects but get new storage, so weights whose storage is shared
        with another model (a frozen copy) are never written; the original tensors are kept for
        :meth:`unmerge`. A base without a bias gets one (``shift``), which unmerging removes again.

        Raises:
            AdapterError: the base is a LayerNorm without an elementwise affine weight.
        """
        if self.merged:
            return
        base = self.base
        if base.weight is None:
            raise AdapterError(
                "cannot merge SSF into a LayerNorm without elementwise_affine weights; keep it unmerged"
            )
        weight = base.weight
        scale = self.scale.detach().to(weight.dtype)
        shift = self.shift.detach().to(weight.dtype)
        self._orig_weight = weight.data
        weight.data = weight.data * (scale[:, None] if isinstance(base, nn.Linear) else scale)
        if base.bias is None:
            base.bias = nn.Parameter(shift.clone(), requires_grad=weight.requires_grad)
            self._created_bias = True
        else:
            self._orig_bias = base.bias.data
            base.bias.data = base.bias.data * scale + shift
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put ``base``'s original weight and bias tensors back (bit-exact); unmerged: does nothing."""
        if not self.merged:
            return
        base = self.base
        assert base.weight is not None and self._orig_weight is not None
        base.weight.data = self._orig_weight
        if self._created_bias:
            base.register_parameter("bias", None)  # what `base.bias = None` does
            self._created_bias = False
        elif base.bias is not None and self._orig_bias is not None:
            base.bias.data = self._orig_bias
        self._orig_weight = None
        self._orig_bias = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"merged={self.merged}"


def inject_ssf(
    model: nn.Module, cfg: SSFConfig | None = None, generator: torch.Generator | None = None
) -> list[str]:
    """Wrap every ``nn.Linear`` / ``nn.LayerNorm`` of ``model`` matching ``cfg.targets`` in :class:`SSF`.

    Only the wrapped layers' own parameters are frozen here; freeze the rest first with
    :func:`~focusshot.adapters.base.freeze`. Layers are initialised in model order from ``generator``.

    Args:
        model: any module (for a CLIP, the default patterns also match the text tower; pass
            ``model.visual`` or ``"visual."``-prefixed patterns to adapt only the image side).
        cfg: the options; :class:`SSFConfig` defaults when ``None``.
        generator: random generator for scale and shift.

    Returns:
        Qualified names of the wrapped layers.

    Raises:
        AdapterError: nothing matches, or SSF already wraps a matching layer.
    """
    cfg = cfg or SSFConfig()
    targets = injection_targets(
        model,
        cfg.targets,
        (nn.Linear, nn.LayerNorm),
        SSF,
        "SSF",
        "SSF scales and shifts the outputs of linear layers and layer norms",
    )
    for name, mod in targets:
        assert isinstance(mod, nn.Linear | nn.LayerNorm)
        replace_module(model, name, SSF(mod, cfg.init_std, generator))
    return [name for name, _ in targets]


def ssf_layers(model: nn.Module) -> list[tuple[str, SSF]]:
    """``(qualified_name, layer)`` of every :class:`SSF` in ``model``, in model order."""
    return adapter_layers(model, SSF)


def merge_ssf(model: nn.Module) -> list[str]:
    """Merge every SSF layer of ``model`` into its base; returns their names."""
    return merge_all(model, SSF, True, "SSF", "inject_ssf")


def unmerge_ssf(model: nn.Module) -> list[str]:
    """Undo :func:`merge_ssf` on every SSF layer of ``model``; returns their names."""
    return merge_all(model, SSF, False, "SSF", "inject_ssf")
