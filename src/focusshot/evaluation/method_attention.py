"""Each method's own [CLS] attention on the query images, after it adapted (FORT's question).

A method that trains changes where the model looks; the frozen backbone's attention
(:func:`focusshot.evaluation.attention_metrics.attention_report`) cannot show that. For a fitted
method whose :meth:`~focusshot.methods.base.Fitted.attention_model` is an adapted backbone, this
records the last attention layer while the method scores the episode's queries (from the same
cached prefix it classifies) and measures the [CLS]-to-patch mass on the target masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from focusshot.attention.record import record
from focusshot.backbones.base import Backbone
from focusshot.data.sources import LabelledImages
from focusshot.evaluation.attention_metrics import (
    cls_attention_metrics,
    patch_target_weights,
    target_masks,
    transform_masks,
)
from focusshot.methods.base import Fitted


class QueryAttention:
    """Target masks of a pool of images, and the measurement of a fitted method on some of them."""

    def __init__(self, backbone: Backbone, masks: list[np.ndarray]) -> None:
        self.backbone = backbone
        self.masks = masks

    @classmethod
    def create(cls, backbone: Backbone, data: LabelledImages) -> QueryAttention | None:
        """``None`` when the data carry no masks or boxes, or the backbone has no global [CLS] row."""
        caps = backbone.capabilities
        if not (caps.attention and caps.global_cls):
            return None
        masks = target_masks(data)
        return None if masks is None else cls(backbone, masks)

    def measure(
        self, fitted: Fitted, query: Tensor, indices: Sequence[int], regions: Tensor | None = None
    ) -> dict[str, Any]:
        """``{"cls_target_mass": mean over queries}`` of the fitted model's last-layer [CLS] row.

        A query whose [CLS] row puts no attention on any patch has no target mass: the mean leaves
        it out, and ``cls_no_patch_queries`` counts such queries (absent when there are none;
        ``cls_target_mass`` is absent when every query is one).

        Args:
            fitted: a fitted method; nothing is measured when it has no attention model.
            query: the queries' prefix ``(M, *prefix)``, as the method reads it.
            indices: the queries' indices into the pool (their masks).
        """
        model = fitted.attention_model()
        if model is None:
            return {}
        b = self.backbone
        with record(model, "probs", layers=[-1]) as rec:
            fitted.logits(query) if regions is None else fitted.logits(query, regions=regions)
        probs = rec.get("probs", -1)
        crop = b.preprocess.crop
        masks = transform_masks([self.masks[i] for i in indices], b.preprocess)
        grid = b.grid_size(crop)
        expected = b.num_prefix_tokens + grid[0] * grid[1]
        res = cls_attention_metrics(
            probs, masks, b.num_prefix_tokens, grid, trailing_tokens=max(0, probs.shape[-1] - expected)
        )
        mass = res["cls_target_mass"].double()
        ok = ~mass.isnan()  # queries whose [CLS] row reaches the patches
        out: dict[str, Any] = {} if not ok.any() else {"cls_target_mass": float(mass[ok].mean())}
        if not ok.all():
            out["cls_no_patch_queries"] = int((~ok).sum())
        return out

    def measure_prompts(self, fitted: Fitted, indices: Sequence[int]) -> dict[str, Any]:
        """FORT's position prompts against the support images' targets.

        ``{"prompt_target_mass": mean over support images of the prompt mass inside the target,
        "prompt_chance": mean target area (the mass of prompts spread uniformly)}``; empty when the
        fitted method has no ``prompts`` ``(S, P)``.

        Args:
            fitted: a fitted method, possibly with a ``prompts`` attribute (support x patches).
            indices: the support images' indices into the pool (their masks), in prompt order.
        """
        prompts = getattr(fitted, "prompts", None)
        if prompts is None:
            return {}
        b = self.backbone
        masks = transform_masks([self.masks[i] for i in indices], b.preprocess)
        weights = patch_target_weights(masks, b.grid_size(b.preprocess.crop))
        if weights.shape != prompts.shape:
            raise ValueError(
                f"prompts {tuple(prompts.shape)} do not match {tuple(weights.shape)} support patches"
            )
        q = prompts.float()
        mass = (q * weights).sum(dim=1) / q.sum(dim=1).clamp_min(1e-12)
        return {
            "prompt_target_mass": float(mass.double().mean()),
            "prompt_chance": float(weights.double().mean()),
        }
