"""Sparse Attention Vectors (SAV): a few attention heads, each a nearest-class-mean voter.

Mitra et al., "Enhancing Few-Shot Vision-Language Classification with Large Multimodal Model
Features" (arXiv 2412.00142). The paper (Sec. 3) reads, for every attention head ``(l, h)`` of a
large multimodal model, the head's output at the last token (the input of the output projection,
split into heads); here, for a ViT/CLIP backbone, the analogue is the [CLS] row of every head
before the output projection, the ``head_out`` prefix (:class:`~focusshot.backbones.prefix.Prefix`),
``(L, H, D)`` per image and computed once per image by the shared cache. For large multimodal models
see :mod:`focusshot.methods.sav_vlm`, whose activations :func:`fit_sav` takes unchanged.

The recipe (paper Sec. 3.2 and 3.3, "Finding SAVs" and "Classification with SAVs"):

1. **Class means per head.** For every head ``(l, h)`` and class ``c``, the mean ``mu[l, h, c]``
   ``(D,)`` of the support vectors of class ``c``.
2. **Score every head** by the accuracy of its own nearest-class-mean classifier (cosine
   similarity) on the support set.
3. **Keep the top ``H`` heads** (the paper: 20).
4. **Classify** a query by majority vote: each kept head votes for the class whose mean is most
   similar to the query's vector in that head.

Choices made here, all recorded in :meth:`SavFitted.info`:

* **Leave-one-out selection** (``leave_one_out=True``, the default). Scoring a support sample
  against a class mean that contains the sample itself rewards heads that merely memorise: at 2
  shots the own-class mean is half the sample, so a head in which samples of a class are unrelated
  still "classifies" the support perfectly. Here the own-class mean of sample ``i`` excludes ``i``
  (the other classes' means never contain it). The official code (``chancharikmitra/SAVs``,
  ``mllm_encode``) scores against the full means; ``leave_one_out=False`` reproduces it.
* **One shot.** A class with a single support sample has no leave-one-out mean. Its samples are
  scored as without leave-one-out (their own mean is themselves, so they count as correct in every
  head and add the same amount to every head's accuracy, leaving the ranking to the other classes
  and to the margin tie-break); the classes are listed in ``info()["loo_undefined_classes"]``. The
  alternative, dropping them from the score, would leave nothing to rank in a 1-shot episode,
  while the fallback still ranks heads there by the margin (how much more similar each support
  vector is to itself than to the nearest other class), which measures how well the head
  separates the support images. Equivalently: at 1 shot ``leave_one_out`` has no effect.
* **Ties in the ranking** are broken by the mean margin (similarity to the own-class mean minus
  the largest similarity to another class mean, over the support; larger first), then by the
  head's index ``l * H + h`` (smaller first), so the selection is deterministic. (The official
  code breaks ties by ``numpy.argsort`` order.)
* **How many heads.** ``heads`` is absolute and clamped to the number of heads available (a ViT-B
  has 12 x 12 = 144, the tiny test ViTs 2 x 4 = 8). With ``heads_fraction > 0`` the count is
  ``round(heads_fraction * total)`` (at least 1) instead: the paper's 20 heads of the 28 x 28 =
  784 of LLaVA-OneVision-7B / Qwen2-VL-7B (Qwen2-7B language models) are ~2.6%, and 20 of a
  32 x 32 = 1024-head 7B LLaMA would be ~2%; 2.6% of a ViT-B's 144 heads is 4.
* **Similarity.** ``"cosine"``: class means of L2-normalised head vectors, compared by cosine
  similarity (every support image weighs the same in its class mean whatever its norm).
  ``"cosine_raw"``: means of the raw vectors, compared by cosine similarity, as the official code
  does; with ``leave_one_out=False`` it reproduces the official selection (up to tie order).
* **Logits.** The prediction is the majority vote, as in the paper. The logits are
  ``log(votes_c + t_c)`` with the tie-break term ``t_c = (3 + mean_h cos(q_h, mu[h, c])) / 8`` in
  ``[1/4, 1/2]``: ``t`` is below 1 so it never overturns a vote difference, it breaks vote ties by
  the mean similarity over the kept heads (the official code keeps the first class counted), and
  as a pseudo-count it keeps every probability positive. The softmax probability of class ``c``
  is therefore its share of the votes, ``(votes_c + t_c) / (H + sum_k t_k)``: vote-based, and
  calibrated like a vote rather than like ``exp(votes)`` (which would make an 11-to-9 vote of 20
  heads 88% sure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from focusshot.attention.record import attention_modules
from focusshot.backbones.base import Backbone
from focusshot.backbones.prefix import Prefix
from focusshot.methods.base import FitContext, Fitted, Method, register_method
from focusshot.options import option

__all__ = [
    "SIMILARITIES",
    "HeadScores",
    "SavFitted",
    "SavMethod",
    "SavOptions",
    "fit_sav",
    "rank_heads",
    "score_heads",
]

#: the similarities SAV compares head vectors with (module docstring, "Similarity")
SIMILARITIES: tuple[str, ...] = ("cosine", "cosine_raw")


@dataclass(frozen=True)
class SavOptions:
    """Options of SAV (Mitra et al., arXiv 2412.00142)."""

    heads: int = option(
        20, "heads kept (the paper's 20), clamped to the heads available; ignored when heads_fraction > 0"
    )
    heads_fraction: float = option(
        0.0,
        "if > 0, keep round(heads_fraction * total heads) (at least 1) instead of `heads`; the paper's "
        "20 of 784 heads is ~0.026",
    )
    layers: tuple[int, ...] = option(
        (), "attention layers whose heads compete (negatives count from the end); empty: every layer"
    )
    leave_one_out: bool = option(
        True,
        "score each support sample against an own-class mean that excludes it (False: the official "
        "code, which includes it); classes with one sample fall back to the full mean",
    )
    similarity: str = option(
        "cosine",
        "cosine: means of L2-normalised head vectors, cosine similarity; cosine_raw: means of raw "
        "vectors (the official code), cosine similarity",
    )

    selection: str = option(
        "best",
        "best: the top heads by support accuracy (SAV); random: that many heads drawn at random "
        "(the ablation that shows whether selection matters)",
    )
    random_seed: int = option(0, "seed of the random heads (selection=random)")

    def __post_init__(self) -> None:
        if self.selection not in ("best", "random"):
            raise ValueError(f"selection must be 'best' or 'random', got {self.selection!r}")
        if isinstance(self.heads, bool) or not isinstance(self.heads, int) or self.heads < 1:
            raise ValueError(f"heads must be an int >= 1, got {self.heads!r}")
        frac = self.heads_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac <= 1.0:
            raise ValueError(f"heads_fraction must be a number in [0, 1], got {frac!r}")
        layers = self.layers
        if isinstance(layers, list):
            layers = tuple(layers)
        if not isinstance(layers, tuple) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in layers
        ):
            raise ValueError(f"layers must be a tuple of ints, got {self.layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        if not isinstance(self.leave_one_out, bool):
            raise ValueError(f"leave_one_out must be a bool, got {self.leave_one_out!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {self.similarity!r}")

    def count(self, total: int) -> int:
        """How many of ``total`` heads to keep: ``heads`` or the fraction (half up), in ``1..total``."""
        want = int(math.floor(self.heads_fraction * total + 0.5)) if self.heads_fraction > 0 else self.heads
        return max(1, min(want, total))


@dataclass
class HeadScores:
    """How well every head's nearest-class-mean classifier labels the support set.

    Attributes:
        correct: ``(P,)`` int64, support samples each head labels correctly (``P = L * H`` heads,
            flattened ``l * H + h``).
        margin: ``(P,)`` float64, mean over the support of the similarity to the own-class mean
            minus the largest similarity to another class mean.
        means: ``(C, P, D)`` class means of every head over the whole support (what classification
            compares queries to).
        loo_undefined: classes with one sample, scored without leave-one-out (module docstring).
    """

    correct: Tensor
    margin: Tensor
    means: Tensor
    loo_undefined: list[int]


def _class_sums(v: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums ``(C, P, D)`` and counts ``(C,)`` of ``v`` ``(N, P, D)``."""
    onehot = F.one_hot(labels, num_classes).to(v.dtype)  # (N, C)
    return torch.einsum("nc,npd->cpd", onehot, v), onehot.sum(0)


def score_heads(
    support: Tensor, labels: Tensor, num_classes: int, similarity: str = "cosine", leave_one_out: bool = True
) -> HeadScores:
    """Score every head of ``support`` ``(N, P, D)`` by its nearest-class-mean accuracy on the support.

    SAV's head selection (Mitra et al., arXiv 2412.00142, Sec. 3.2), with the leave-one-out and
    one-shot rules of the module docstring. ``labels`` ``(N,)`` in ``0..C-1``, every class present.
    Similarities of vectors with zero norm are 0.
    """
    if support.ndim != 3 or labels.shape != support.shape[:1]:
        raise ValueError(
            f"expected support (N, P, D) and labels (N,), got {tuple(support.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {similarity!r}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    counts = torch.bincount(labels, minlength=num_classes)
    empty = [c for c in range(num_classes) if int(counts[c]) == 0]
    if empty:
        raise ValueError(f"SAV needs at least one support sample of every class; none of classes {empty}")
    x = support.float()
    unit = F.normalize(x, dim=-1)  # (N, P, D) the query side of every similarity
    v = unit if similarity == "cosine" else x  # what class means average
    sums, n = _class_sums(v, labels, num_classes)  # (C, P, D), (C,)
    means = sums / n[:, None, None]
    sim = torch.einsum("npd,cpd->npc", unit, F.normalize(means, dim=-1))  # (N, P, C)
    n_rows, p = x.shape[:2]
    own_idx = labels[:, None, None].expand(n_rows, p, 1)
    single = n[labels] < 2  # (N,) samples of classes with one sample
    if leave_one_out:
        rest = sums[labels] - v  # (N, P, D): own class without sample i (the scale drops out of cosine)
        loo = (unit * F.normalize(rest, dim=-1)).sum(-1, keepdim=True)  # (N, P, 1)
        own = torch.where(single[:, None, None], sim.gather(2, own_idx), loo)
        sim = sim.scatter(2, own_idx, own)
    correct = (sim.argmax(-1) == labels[:, None]).sum(0)  # (P,)
    own = sim.gather(2, own_idx).squeeze(-1)  # (N, P)
    if num_classes > 1:
        others = sim.scatter(2, own_idx, torch.full_like(own_idx, -math.inf, dtype=sim.dtype)).amax(-1)
        margin = (own - others).double().mean(0)
    else:
        margin = torch.zeros(p, dtype=torch.float64)
    loo_undefined = sorted({int(c) for c in labels[single].tolist()}) if leave_one_out else []
    return HeadScores(correct, margin, means, loo_undefined)


def rank_heads(scores: HeadScores) -> Tensor:
    """Head indices ``(P,)`` best first: most correct, then largest mean margin, then smallest index."""
    correct = scores.correct.cpu().numpy()
    margin = scores.margin.cpu().numpy()
    order = np.lexsort((np.arange(len(correct)), -margin, -correct))  # last key sorts first
    return torch.from_numpy(order.astype(np.int64))


class SavFitted(Fitted):
    """SAV fitted to one support set: ``logits(query (M, L, H, D)) -> (M, C)`` by head votes.

    Attributes:
        selected: ``(K, 2)`` int64, ``(position in the prefix's layer axis, head)`` of the kept
            heads, best first.
        class_means: ``(K, C, D)`` float32, each kept head's class means (of L2-normalised vectors
            for ``"cosine"``, of raw vectors for ``"cosine_raw"``).
    """

    method = "sav"

    def __init__(
        self,
        selected: Tensor,
        class_means: Tensor,
        shape: tuple[int, int, int],
        layers: list[int],
        options: dict[str, Any],
        record: dict[str, Any] | None = None,
    ) -> None:
        if selected.ndim != 2 or selected.shape[1] != 2 or class_means.ndim != 3:
            raise ValueError(
                f"expected selected (K, 2) and class_means (K, C, D), got {tuple(selected.shape)} and "
                f"{tuple(class_means.shape)}"
            )
        if class_means.shape[0] != selected.shape[0] or class_means.shape[2] != shape[2]:
            raise ValueError(
                f"class_means {tuple(class_means.shape)} do not match {selected.shape[0]} heads of "
                f"dimension {shape[2]}"
            )
        self.selected = selected.long().contiguous()
        self.class_means = class_means.float().contiguous()
        self.shape = tuple(int(s) for s in shape)
        self.layers = [int(v) for v in layers]
        self.options = dict(options)
        self._record = dict(record or {})

    @property
    def num_classes(self) -> int:
        return int(self.class_means.shape[1])

    def similarities(self, query: Tensor) -> Tensor:
        """Cosine similarity ``(M, K, C)`` of each kept head's query vector to its class means."""
        if query.ndim != 4 or tuple(query.shape[1:]) != self.shape:
            raise ValueError(
                f"SAV expects query head outputs (M, {', '.join(map(str, self.shape))}) (layers x heads x "
                f"head_dim), got {tuple(query.shape)}"
            )
        q = query[:, self.selected[:, 0], self.selected[:, 1]].float()  # (M, K, D)
        return torch.einsum("mkd,kcd->mkc", F.normalize(q, dim=-1), F.normalize(self.class_means, dim=-1))

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """``log(votes + t)`` ``(M, C)`` (module docstring, "Logits"): the argmax is the majority vote."""
        sim = self.similarities(query)  # (M, K, C)
        votes = F.one_hot(sim.argmax(-1), self.num_classes).sum(1).float()  # (M, C)
        tie = (3.0 + sim.mean(1)) / 8.0  # (M, C) in [1/4, 1/2]
        return torch.log(votes + tie)

    def open_scores(self) -> dict[str, str]:
        """``distance`` (to the nearest class mean, averaged over the kept heads) besides ``msp``
        (the vote share) and ``max_logit``; no ``energy``: the logits are log vote counts, whose
        ``logsumexp`` is about the number of heads whatever the image."""
        return {
            **super().open_scores(),
            "distance": "",
            "energy": "the logits are log vote counts: their logsumexp is the number of kept heads "
            "(plus a tie-break under 1 per class), whatever the image",
        }

    def nearest_distance(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """``1 - cos`` to the nearest class mean, averaged over the kept heads ``(M,)``."""
        return 1.0 - self.similarities(query).amax(-1).mean(-1)

    def voting_heads(self, query: Tensor) -> tuple[list[tuple[int, int]], Tensor]:
        """The kept heads as ``(attention layer, head)`` (layers as the prefix names them) and each
        query's vote per head ``(M, K)``."""
        heads = [(self.layers[int(pos)], int(h)) for pos, h in self.selected.tolist()]
        return heads, self.similarities(query).argmax(-1)

    def votes(self, query: Tensor) -> Tensor:
        """Heads voting for each class ``(M, C)`` (int64)."""
        return F.one_hot(self.similarities(query).argmax(-1), self.num_classes).sum(1)

    def state_dict(self) -> dict[str, Tensor]:
        return {"selected": self.selected.clone(), "class_means": self.class_means.clone()}

    def config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "options": dict(self.options),
            "shape": list(self.shape),
            "layers": list(self.layers),
        }

    def info(self) -> dict[str, Any]:
        return dict(self._record)


def fit_sav(
    support: Tensor,
    labels: Tensor,
    num_classes: int,
    options: SavOptions | None = None,
    layers: list[int] | None = None,
) -> SavFitted:
    """Fit SAV to per-head support vectors ``(N, L, H, D)`` with labels ``(N,)`` in ``0..C-1``.

    Any per-head activations work: the [CLS]-row ``head_out`` prefix of a ViT, or a multimodal
    model's last-token o_proj inputs (:func:`focusshot.methods.sav_vlm.vlm_head_activations`).
    ``layers`` names the layer axis in :meth:`SavFitted.info` (default ``0..L-1``);
    ``options.layers`` is not applied here (the caller computed those layers).
    """
    options = options or SavOptions()
    if support.ndim != 4:
        raise ValueError(f"SAV expects support head outputs (N, L, H, D), got {tuple(support.shape)}")
    n, n_layers, n_heads, dim = (int(s) for s in support.shape)
    if n == 0:
        raise ValueError("SAV needs a non-empty support set")
    layers = list(range(n_layers)) if layers is None else [int(v) for v in layers]
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer names for {n_layers} layers")
    scores = score_heads(
        support.reshape(n, n_layers * n_heads, dim),
        labels,
        num_classes,
        options.similarity,
        options.leave_one_out,
    )
    total = n_layers * n_heads
    keep = options.count(total)
    if options.selection == "random":
        gen = torch.Generator().manual_seed(int(options.random_seed))
        top = torch.randperm(total, generator=gen)[:keep]
    else:
        top = rank_heads(scores)[:keep]  # (K,) flat indices l * H + h
    selected = torch.stack([top // n_heads, top % n_heads], dim=1)  # (K, 2)
    means = scores.means[:, top].permute(1, 0, 2)  # (K, C, D)
    acc = (scores.correct[top].double() / n).tolist()
    record = {
        "heads_selected": keep,
        "heads_available": total,
        "selected_heads": [[layers[int(p)], int(h)] for p, h in selected.tolist()],
        "selection_accuracy": [round(a, 6) for a in acc],
        "selection_margin": [round(float(m), 6) for m in scores.margin[top].tolist()],
        "mean_selection_accuracy": float(sum(acc) / len(acc)),
        "leave_one_out": options.leave_one_out,
        "loo_undefined_classes": scores.loo_undefined,
        "similarity": options.similarity,
    }
    return SavFitted(selected, means, (n_layers, n_heads, dim), layers, _options_dict(options), record)


@register_method("sav")
class SavMethod(Method[SavOptions]):
    """SAV: the top attention heads by support accuracy vote with class means (Mitra et al., 2024)."""

    summary: ClassVar[str] = "SAV: sparse attention-head votes over class means (Mitra et al., 2024)"
    open_score: ClassVar[str] = "distance"

    def prefix(self, backbone: Backbone) -> Prefix:
        """[CLS]-row per-head outputs of ``options.layers`` (all attention layers when empty), resolved.

        Raises:
            ValueError: the backbone has no global [CLS] attention (Swin, CNNs) or a layer is out of range.
        """
        total = len(attention_modules(backbone))
        layers = self.options.layers or tuple(range(total))
        try:
            if not layers:
                raise ValueError(f"{type(backbone).__name__} has no attention layers")
            return Prefix.head_out(layers).resolve(backbone)
        except ValueError as exc:
            name = backbone.identity.name if isinstance(backbone, Backbone) else type(backbone).__name__
            raise ValueError(
                f"method 'sav' reads the per-head [CLS] outputs of global attention layers, which "
                f"{name} cannot give: {exc}"
            ) from exc

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        """Select heads on the support ``(N, L, H, D)`` (labels ``(N,)``) and keep their class means."""
        layers = list(self.prefix(ctx.backbone).layers)
        if support.ndim == 4 and support.shape[1] != len(layers):
            raise ValueError(
                f"SAV's prefix has {len(layers)} layers ({layers}) but the support has {support.shape[1]}"
            )
        fitted = fit_sav(support, labels, ctx.num_classes, self.options, layers)
        fitted.method = self.name  # an alias's fit carries the alias
        return fitted

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any], backbone: Backbone) -> Fitted:
        options = SavOptions(**config["options"])
        shape = tuple(int(s) for s in config["shape"])
        if len(shape) != 3:
            raise ValueError(f"SAV shape must be (L, H, D), got {shape}")
        fitted = SavFitted(
            state["selected"], state["class_means"], shape, config["layers"], _options_dict(options)
        )
        want = list(cls(options).prefix(backbone).layers)
        if want != fitted.layers:
            raise ValueError(f"SAV was fitted on layers {fitted.layers}, the backbone gives {want}")
        return fitted


def _options_dict(options: SavOptions) -> dict[str, Any]:
    return {
        "heads": options.heads,
        "heads_fraction": float(options.heads_fraction),
        "layers": list(options.layers),
        "leave_one_out": options.leave_one_out,
        "similarity": options.similarity,
    }
