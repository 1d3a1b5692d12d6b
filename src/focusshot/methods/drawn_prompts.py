"""Drawn visual prompts: zero-shot CLIP on images marked by editing their pixels, the baselines
FALIP (:mod:`focusshot.methods.falip`) is compared against.

* ``red_circle``: a red ellipse drawn around the region (Shtedritski et al., "What does CLIP know
  about a red circle?", ICCV 2023);
* ``blur_box``: everything outside the region blurred (ReCLIP, Subramanian et al., ACL 2022; Fine-
  Grained Visual Prompting, Yang et al., NeurIPS 2023).

**Prefix.** Both read the cached preprocessed crop (``Prefix.images()``), draw on it after
de-normalising (:mod:`focusshot.data.prompts`), and run the whole tower; so they work on any CLIP.
Line width and blur are in pixels of the evaluation crop. **Regions** are the data's boxes
(:mod:`focusshot.methods.regions`); an image without one stops the run unless
``missing_box="whole"``, when it is left unprompted and counted in ``regions_missing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor

from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.data.prompts import blur_outside, red_ellipse
from focusshot.graph_mode import inference
from focusshot.heads import FittedHead
from focusshot.heads import fitted_from_state as head_from_state
from focusshot.methods.base import FitContext, Fitted, Method, options_from_dict, register_method
from focusshot.methods.regions import (
    RegionHeadFitted,
    check_region_options,
    device_dtype,
    resolve_regions,
    zeroshot_classifier,
)
from focusshot.options import option, options_dict

__all__ = ["BlurBoxOptions", "PromptFitted", "RedCircleOptions"]


@dataclass(frozen=True)
class RedCircleOptions:
    """Options of ``red_circle``."""

    width: float = option(2.0, "outline width in pixels of the evaluation crop")
    missing_box: str = option("error", "an image without a box: error, or whole (drawn unprompted; counted)")
    scale: float = option(100.0, "CLIP's logit scale on cosine similarities")
    batch_size: int = option(64, "images per forward pass")

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"width must be positive, got {self.width}")
        check_region_options("box", self.missing_box, self.scale, self.batch_size)

    def draw(self, rgb: Tensor, boxes: Tensor) -> Tensor:
        """A red ellipse around each box on de-normalised crops ``(M, 3, H, W)``; same shape back."""
        return red_ellipse(rgb, boxes, float(self.width))


@dataclass(frozen=True)
class BlurBoxOptions:
    """Options of ``blur_box``."""

    blur: float = option(
        0.15, "Gaussian std outside the box, as a fraction of the crop side (ReCLIP's 100 px ~ 0.15)"
    )
    missing_box: str = option("error", "an image without a box: error, or whole (left sharp; counted)")
    scale: float = option(100.0, "CLIP's logit scale on cosine similarities")
    batch_size: int = option(64, "images per forward pass")

    def __post_init__(self) -> None:
        if not self.blur >= 0:
            raise ValueError(f"blur must be >= 0, got {self.blur}")
        check_region_options("box", self.missing_box, self.scale, self.batch_size)

    def draw(self, rgb: Tensor, boxes: Tensor) -> Tensor:
        """Blur outside each box on de-normalised crops ``(M, 3, H, W)``; same shape back."""
        return blur_outside(rgb, boxes, float(self.blur) * int(rgb.shape[-1]))


class DrawnPrompt(Protocol):
    """What a drawn prompt's options hold (:class:`RedCircleOptions`, :class:`BlurBoxOptions`)."""

    @property
    def missing_box(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    def draw(self, rgb: Tensor, boxes: Tensor) -> Tensor: ...


class PromptFitted(RegionHeadFitted):
    """A fitted ``red_circle``/``blur_box``: ``logits(images (M, 3, H, W), regions (M, 4)) -> (M, C)``."""

    def __init__(self, method: str, backbone: Backbone, options: DrawnPrompt, head: FittedHead) -> None:
        self.method = method
        self.backbone = backbone
        self.options = options
        self.head = head

    def prompted(self, images: Tensor, regions: Tensor) -> Tensor:
        """Draw the prompt on preprocessed images ``(M, 3, H, W)`` (normalised); same shape back."""
        pre = self.backbone.preprocess
        mean = torch.tensor(pre.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        rgb = images * std + mean
        boxes = regions.to(images.device)
        rgb = self.options.draw(rgb, boxes)
        return (rgb - mean) / std

    @inference
    def features(self, images: Tensor, regions: Tensor | None = None) -> Tensor:
        """Pooled CLIP features ``(M, D)`` of the prompted images (float32, on the CPU)."""
        boxes = resolve_regions(self.method, "box", self.options.missing_box, regions)
        if boxes is None:
            boxes = torch.full((images.shape[0], 4), float("nan"))
        if tuple(boxes.shape) != (images.shape[0], 4):
            raise ValueError(f"regions must be ({images.shape[0]}, 4), got {tuple(boxes.shape)}")
        device, dtype = device_dtype(self.backbone)
        out = []
        bs = int(self.options.batch_size)
        for s in range(0, images.shape[0], bs):
            x = self.prompted(images[s : s + bs].to(torch.float32), boxes[s : s + bs])
            out.append(self.backbone.forward_features(x.to(device=device, dtype=dtype)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, int(self.backbone.num_features))

    def config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "options": options_dict(self.options),
            "head": self.head.config(),
        }


P = TypeVar("P", bound=DrawnPrompt)


class PromptMethod(Method[P]):
    """Zero-shot CLIP on images with a prompt drawn on them (``red_circle``, ``blur_box``)."""

    needs_text: ClassVar[bool] = True
    open_score: ClassVar[str] = "max_logit"

    @property
    def needs_regions(self) -> bool:
        return True

    def missing_box(self) -> str:
        return self.options.missing_box

    def export_refusal(self) -> str:
        return (
            "the prompt is drawn on the images in chunks of batch_size (a Python loop over the batch), "
            "which traces to no graph with a dynamic batch"
        )

    def prefix(self, backbone: Backbone) -> Prefix:
        """The preprocessed crop: the prompt is drawn on it, then the whole tower runs."""
        return Prefix.images()

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        """Nothing to learn: the zero-shot classifier of the class texts (the support set is unused)."""
        head = zeroshot_classifier(ctx, self.name, self.options.scale)
        return PromptFitted(self.name, ctx.backbone, self.options, head)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        options = options_from_dict(cls.Options, config["options"], cls.name)
        return PromptFitted(cls.name, backbone, options, head_from_state(state, config["head"]))


@register_method("red_circle")
class RedCircleMethod(PromptMethod[RedCircleOptions]):
    """Zero-shot CLIP on images with a red ellipse drawn around the region (Shtedritski et al., 2023)."""

    summary = "zero-shot CLIP with a red ellipse drawn around the region (Shtedritski et al., 2023)"


@register_method("blur_box")
class BlurBoxMethod(PromptMethod[BlurBoxOptions]):
    """Zero-shot CLIP on images blurred outside the region (ReCLIP / FGVP's blur prompt)."""

    summary = "zero-shot CLIP with everything outside the region blurred (ReCLIP, Subramanian et al., 2022)"
