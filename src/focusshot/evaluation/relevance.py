"""A relevance map for any fitted classifier: where in the image its prediction comes from.

One rule per backbone kind (:mod:`focusshot.attention.relevance` holds the maths):

* **ViT and CLIP ViT** (a global [CLS] row through a token path): gradient-weighted attention
  rollout (Chefer, Gur and Wolf, ICCV 2021) of the explained class's logit, through the model the
  method runs: the frozen backbone for the layers a method reads frozen, its adapted copy for the
  layers it tuned (the copy's attention where both run, e.g. SAFE's tuned last block), and the
  method's own head, whatever it is (a linear probe, prototypes, Tip-Adapter's cache, CLIP's text
  classifier). The same forward pass gives the two reference maps: plain attention rollout and
  the last layer's [CLS] attention.
* **Swin, CNNs and CLIP-ResNet**: Grad-CAM (Selvaraju et al., ICCV 2017) on the last stage's
  tokens, the field's usual map for these backbones (window attention and attention pools have no
  [CLS] row through every layer).
* **SAV**, which classifies by the votes of single attention heads: the mean [CLS] attention of
  its kept heads that voted for the explained class (all kept heads when none did).

Inference runs inside :func:`~focusshot.graph_mode.keep_graph`, on a copy of the fit (a fit
made in this process may hold inference-mode tensors, which autograd refuses), through
:meth:`~focusshot.methods.base.Fitted.export_logits` (one deterministic pass: APT without MC
dropout), exactly what ``focusshot export`` writes.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from focusshot.attention import relevance as rel
from focusshot.attention.record import Recording, attention_modules, record
from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix, compute_prefix
from focusshot.graph_mode import keep_graph
from focusshot.methods.base import Fitted

__all__ = ["MAP_KINDS", "Relevance", "map_kind", "relevance_maps"]

#: the map each kind of fit and backbone gets (module docstring)
MAP_KINDS = ("gradient_rollout", "grad_cam", "sav_heads")

NO_GRADIENT = "the classifier's logits do not depend differentiably on the image"


@dataclass
class Relevance:
    """Relevance maps of a batch of images.

    Attributes:
        maps: ``(B, P)`` float32, non-negative: the explanation, one value per cell of ``grid``.
        kind: which rule made ``maps`` (:data:`MAP_KINDS`).
        grid: ``(rows, cols)`` of the map's cells over the cropped image (patches, or the last
            stage's cells for Grad-CAM); ``P = rows * cols``, row-major.
        logits: ``(B, C)`` the fit's logits of the images.
        target: ``(B,)`` the class explained for each image.
        references: reference maps of the same pass, ``(B, P)`` each: ``"rollout"`` (plain
            attention rollout) and ``"cls_attention"`` (last layer's [CLS] row), for
            ``gradient_rollout`` maps; empty otherwise.
    """

    maps: Tensor
    kind: str
    grid: tuple[int, int]
    logits: Tensor
    target: Tensor
    references: dict[str, Tensor] = field(default_factory=dict)


def map_kind(backbone: Backbone, fitted: Fitted) -> str:
    """The rule :func:`relevance_maps` uses for ``fitted`` on ``backbone`` (:data:`MAP_KINDS`)."""
    if type(fitted).voting_heads is not Fitted.voting_heads:
        return "sav_heads"
    caps = backbone.capabilities
    if caps.attention and caps.global_cls and backbone.token_blocks():
        return "gradient_rollout"
    return "grad_cam"


def _models(backbone: Backbone, fitted: Fitted) -> list[Backbone]:
    adapted = fitted.attention_model()
    return [backbone] if adapted is None or adapted is backbone else [backbone, adapted]


def _autograd_copy(fitted: Fitted, backbone: Backbone) -> Fitted:
    """A copy of ``fitted`` whose tensors are ordinary (not inference-mode) ones; the shared
    frozen ``backbone`` is not copied."""
    return copy.deepcopy(fitted, {id(backbone): backbone})


def _towers(models: list[Backbone]) -> list[Backbone]:
    """The image towers of ``models`` (CLIP's ``visual``, else the model)."""
    out: list[Backbone] = []
    for m in models:
        tower = getattr(m, "visual", None)
        out.append(tower if isinstance(tower, Backbone) else m)
    return out


@contextlib.contextmanager
def _stage_taps(models: list[Backbone]) -> Iterator[list[tuple[Tensor, int]]]:
    """Capture the last stage's output of ``models`` (in call order) while open, with the number of
    tokens ahead of the spatial ones: a CNN's feature map ``(B, C, h, w)`` from ``forward_map``
    (CLIP-ResNet's before its pool adds positions and the mean token), else the
    ``forward_tokens`` sequence ``(B, N, C)`` (Swin's last stage)."""
    seen: list[tuple[Tensor, int]] = []

    def tap(original: Callable[..., Tensor], skip: int) -> Callable[..., Tensor]:
        def run(*args: object, **kwargs: object) -> Tensor:
            out = original(*args, **kwargs)
            seen.append((out, skip))
            return out

        return run

    patched: list[tuple[Backbone, str]] = []
    try:
        for m in _towers(models):
            name = "forward_map" if callable(getattr(m, "forward_map", None)) else "forward_tokens"
            skip = 0 if name == "forward_map" else int(m.num_prefix_tokens)
            object.__setattr__(m, name, tap(getattr(m, name), skip))
            patched.append((m, name))
        yield seen
    finally:
        for m, name in patched:
            object.__delattr__(m, name)


def _layer_probs(recordings: list[Recording], total: int, batch: int) -> list[Tensor]:
    """Each attention layer's probabilities from the last recording that captured it (the adapted
    model's before the frozen backbone's), the last forward through it (the pass that scored)."""
    out = []
    for layer in range(total):
        calls = next((c for r in reversed(recordings) if (c := r.calls("probs", layer))), None)
        if calls is None:
            raise RuntimeError(f"no attention was recorded at layer {layer} while the classifier scored")
        if calls[-1].shape[0] != batch:
            raise RuntimeError(
                f"layer {layer}'s last pass held {calls[-1].shape[0]} images, not the {batch} explained: "
                "explain fewer images at a time"
            )
        out.append(calls[-1])
    return out


def _scored(
    fitted: Fitted, feats: Tensor, regions: Tensor | None, target: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The fit's logits ``(b, C)``, the explained classes ``(b,)`` and the sum of their logits (a
    ``ValueError`` when that sum has no gradient: the logits do not depend on the image in a graph)."""
    logits = fitted.export_logits(feats, regions).float()  # (b, C)
    chosen = logits.detach().argmax(-1) if target is None else target.to(logits.device).long()
    score = logits.gather(1, chosen.unsqueeze(1)).sum()
    if not score.requires_grad:
        raise ValueError(NO_GRADIENT)
    return logits, chosen, score


def _grid_of(n: int, backbone: Backbone) -> tuple[int, int]:
    rows, cols = backbone.grid_size(backbone.preprocess.crop)
    if rows * cols == n:
        return rows, cols
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} spatial tokens form no square grid")
    return side, side


def _gradient_rollout(
    backbone: Backbone,
    fitted: Fitted,
    prefix: Prefix,
    x: Tensor,
    regions: Tensor | None,
    target: Tensor | None,
) -> Relevance:
    models = _models(backbone, fitted)
    total = len(attention_modules(backbone))
    s = int(backbone.num_prefix_tokens)
    grid = backbone.grid_size(backbone.preprocess.crop)
    p = grid[0] * grid[1]
    with keep_graph(), contextlib.ExitStack() as stack:
        recs = [stack.enter_context(record(m, "probs", grad=True, strict=False)) for m in models]
        logits, chosen, score = _scored(fitted, compute_prefix(backbone, prefix, x), regions, target)
        probs = _layer_probs(recs, total, len(x))
        grads = torch.autograd.grad(score, probs, allow_unused=True)
    grads_ = [torch.zeros_like(a) if g is None else g for a, g in zip(probs, grads, strict=True)]
    maps = rel.gradient_rollout(probs, grads_, s, p)
    refs = {"rollout": rel.plain_rollout(probs, s, p), "cls_attention": rel.cls_attention(probs[-1], s, p)}
    return Relevance(maps, "gradient_rollout", grid, logits.detach().cpu(), chosen.cpu(), refs)


def _grad_cam(
    backbone: Backbone,
    fitted: Fitted,
    prefix: Prefix,
    x: Tensor,
    regions: Tensor | None,
    target: Tensor | None,
) -> Relevance:
    with keep_graph(), _stage_taps(_models(backbone, fitted)) as seen:
        logits, chosen, score = _scored(fitted, compute_prefix(backbone, prefix, x), regions, target)
        if not seen:
            raise ValueError("no last-stage features were computed while the classifier scored")
        stage, skip = seen[-1]
        if not stage.requires_grad:
            raise ValueError(NO_GRADIENT)
        (grad,) = torch.autograd.grad(score, stage, allow_unused=True)
    grad = torch.zeros_like(stage) if grad is None else grad
    if stage.ndim == 4:  # (B, C, h, w) -> (B, h * w, C), row-major
        stage, grad = (t.flatten(2).transpose(1, 2) for t in (stage, grad))
    maps = rel.grad_cam(stage, grad, skip)
    return Relevance(maps, "grad_cam", _grid_of(maps.shape[1], backbone), logits.detach().cpu(), chosen.cpu())


@torch.inference_mode()
def _sav_heads(
    backbone: Backbone,
    fitted: Fitted,
    prefix: Prefix,
    x: Tensor,
    regions: Tensor | None,
    target: Tensor | None,
) -> Relevance:
    feats = compute_prefix(backbone, prefix, x)
    voted = fitted.voting_heads(feats)
    assert voted is not None  # map_kind chose this rule because the fit votes by heads
    heads, votes = voted  # K pairs, (b, K)
    logits = fitted.logits(feats, regions).float()
    chosen = logits.argmax(-1) if target is None else target.long()
    total = len(attention_modules(backbone))
    layers = sorted({layer % total for layer, _ in heads})
    with record(backbone, "probs", layers=layers) as rec:
        backbone.forward_features(x)
    s = int(backbone.num_prefix_tokens)
    grid = backbone.grid_size(backbone.preprocess.crop)
    p = grid[0] * grid[1]
    rows = torch.stack(
        [rec.get("probs", layer % total)[:, h, 0, s : s + p].float().cpu() for layer, h in heads], 1
    )
    agree = (votes.cpu() == chosen.cpu().unsqueeze(1)).float()  # (b, K)
    agree = torch.where(agree.sum(1, keepdim=True) > 0, agree, torch.ones_like(agree))
    maps = (rows * agree.unsqueeze(-1)).sum(1) / agree.sum(1, keepdim=True)
    return Relevance(maps.cpu(), "sav_heads", grid, logits.cpu(), chosen.cpu())


def relevance_maps(
    backbone: Backbone,
    fitted: Fitted,
    prefix: Prefix,
    images: Tensor,
    regions: Tensor | None = None,
    target: Tensor | None = None,
    chunk: int = 8,
) -> Relevance:
    """Explain ``fitted``'s prediction on ``images`` (module docstring: the rule per backbone).

    Args:
        backbone: the frozen backbone the fit was made on.
        fitted: the fitted method (not modified; a copy runs).
        prefix: the resolved prefix the fit reads (``Classifier.prefix``).
        images: ``(B, 3, crop, crop)`` preprocessed images.
        regions: ``(B, 4)`` boxes in ``[0, 1]`` crop coordinates, for a fit that reads them.
        target: ``(B,)`` the class to explain per image; the predicted class when ``None``.
        chunk: images per pass (each pass keeps every layer's attention and its gradient).

    Returns:
        a :class:`Relevance` over the whole batch.
    """
    kind = map_kind(backbone, fitted)
    run = {"gradient_rollout": _gradient_rollout, "grad_cam": _grad_cam, "sav_heads": _sav_heads}[kind]
    work = fitted if kind == "sav_heads" else _autograd_copy(fitted, backbone)
    was = backbone.training
    backbone.eval()
    device = next((q.device for q in backbone.parameters()), torch.device("cpu"))
    parts = []
    try:
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk].detach().to(device, torch.float32, copy=True)
            if kind != "sav_heads":
                x.requires_grad_(True)  # every layer's attention then joins the graph
            r = None if regions is None else regions[i : i + chunk]
            t = None if target is None else target[i : i + chunk]
            parts.append(run(backbone, work, prefix, x, r, t))
    finally:
        backbone.train(was)
    first = parts[0]
    refs = {k: torch.cat([q.references[k] for q in parts]) for k in first.references}
    return Relevance(
        torch.cat([q.maps for q in parts]),
        kind,
        first.grid,
        torch.cat([q.logits for q in parts]),
        torch.cat([q.target for q in parts]),
        refs,
    )
