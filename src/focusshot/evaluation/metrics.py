"""Metrics for few-shot evaluation: accuracy with a 95% interval, calibration (ECE, Brier, selective
accuracy, temperature scaling), NLL, and paired differences between two methods scored on the
same episodes.

Inputs may be numpy arrays, nested lists or torch tensors (any device, any float dtype); every
function computes in float64 numpy and returns Python floats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from focusshot.numerics import golden_section

__all__ = [
    "PairedDifference",
    "ReliabilityBins",
    "accuracy",
    "brier",
    "confidence_bins",
    "ece",
    "fit_temperature",
    "mean_ci95",
    "nll",
    "paired_difference",
    "reliability_bins",
    "selective_accuracy",
]

_Z95 = 1.96


def _to_numpy(x: Any) -> np.ndarray:
    """Convert arrays, lists and torch tensors (without importing torch) to a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if getattr(x, "is_floating_point", lambda: False)():
            x = x.double()
        x = x.numpy()
    return np.asarray(x)


def _labels(labels: Any, n: int | None = None) -> np.ndarray:
    y = _to_numpy(labels).reshape(-1)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("labels must be integers")
    y = y.astype(np.int64)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{n} predictions but {y.shape[0]} labels")
    return y


def _scores(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x).astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, classes), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return a


def _check_targets(y: np.ndarray, num_classes: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")


def _looks_like_probs(a: np.ndarray, atol: float = 1e-2) -> bool:
    return bool(np.all(a >= 0) and np.all(a <= 1) and np.allclose(a.sum(axis=1), 1.0, atol=atol))


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Fraction of correct predictions, in [0, 1].

    Args:
        logits_or_preds: ``(n, classes)`` scores (logits or probabilities; the arg-max is the
            prediction) or ``(n,)`` predicted class ids.
        labels: ``(n,)`` true class ids.
    """
    a = _to_numpy(logits_or_preds)
    if a.ndim == 2:
        preds = a.argmax(axis=1)
    elif a.ndim == 1:
        preds = _labels(a)
    else:
        raise ValueError(f"expected (n, classes) scores or (n,) predictions, got shape {a.shape}")
    y = _labels(labels, preds.shape[0])
    if y.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(preds == y))


def mean_ci95(values: Any) -> tuple[float, float]:
    """Mean of per-episode values and the half width of its 95% confidence interval.

    The half width is ``1.96 * s / sqrt(E)`` with ``s`` the *sample* standard deviation (``ddof=1``)
    of the ``E`` values — the normal-approximation interval reported by few-shot papers as
    ``mean ± half_width``. With a single value the spread is unknown and the half width is ``0.0``.
    NaN values are not allowed.
    """
    v = _to_numpy(values).astype(np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_ci95 of no values is undefined")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    mean = float(v.mean())
    if v.size == 1:
        return mean, 0.0
    return mean, float(_Z95 * v.std(ddof=1) / math.sqrt(v.size))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin sums of a reliability diagram over equal-width bins of top-label confidence.

    Bin ``b`` holds confidences in ``(edges[b], edges[b+1]]`` (the first bin also holds 0). Sums,
    not means, so bins of several sets pool exactly (``a + b``). :attr:`ece` is the one definition
    of expected calibration error in focusshot: every ECE it reports comes from here.

    Attributes:
        edges: ``(bins + 1,)`` bin edges on [0, 1].
        counts: ``(bins,)`` predictions per bin.
        correct: ``(bins,)`` correct predictions per bin.
        confidence_sum: ``(bins,)`` sum of the top-label confidences per bin.
    """

    edges: np.ndarray
    counts: np.ndarray
    correct: np.ndarray
    confidence_sum: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """``(bins,)`` accuracy per bin; NaN for an empty bin."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.correct / self.counts

    @property
    def confidence(self) -> np.ndarray:
        """``(bins,)`` mean confidence per bin; NaN for an empty bin."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.confidence_sum / self.counts

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """Expected calibration error (Guo et al., 2017): ``sum_b counts_b / n * |accuracy_b -
        confidence_b|``, computed as ``sum_b |correct_b - confidence_sum_b| / n``."""
        return float(np.abs(self.correct - self.confidence_sum).sum() / self.n)

    def __add__(self, other: ReliabilityBins) -> ReliabilityBins:
        if len(self.counts) != len(other.counts):
            raise ValueError(f"cannot pool {len(self.counts)} bins with {len(other.counts)}")
        return ReliabilityBins(
            self.edges,
            self.counts + other.counts,
            self.correct + other.correct,
            self.confidence_sum + other.confidence_sum,
        )

    def sums(self) -> dict[str, list[float]]:
        """``count``, ``correct`` and ``confidence`` sums per bin, as stored in result lines."""
        return {
            "count": [int(c) for c in self.counts],
            "correct": [float(c) for c in self.correct],
            "confidence": [float(c) for c in self.confidence_sum],
        }

    @classmethod
    def from_sums(cls, sums: dict[str, Any]) -> ReliabilityBins:
        """The inverse of :meth:`sums`."""
        counts = np.asarray(sums["count"], dtype=np.int64)
        return cls(
            np.linspace(0.0, 1.0, len(counts) + 1),
            counts,
            np.asarray(sums["correct"], dtype=np.float64),
            np.asarray(sums["confidence"], dtype=np.float64),
        )

    @classmethod
    def empty(cls, bins: int = 15) -> ReliabilityBins:
        z = np.zeros(bins)
        return cls(np.linspace(0.0, 1.0, bins + 1), np.zeros(bins, dtype=np.int64), z, z.copy())


def confidence_bins(confidence: Any, correct: Any, bins: int = 15) -> ReliabilityBins:
    """Bin predictions by top-label ``confidence`` ``(n,)`` in [0, 1], with ``correct`` ``(n,)``
    (bool or 0/1) saying whether each was right, into ``bins`` equal-width bins on [0, 1]."""
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    conf = _to_numpy(confidence).astype(np.float64).reshape(-1)
    ok = _to_numpy(correct).astype(np.float64).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {ok.size}")
    if conf.size and (conf.min() < 0 or conf.max() > 1 + 1e-9 or not np.all(np.isfinite(conf))):
        raise ValueError("confidence must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # side="left" on the inner edges puts conf in (edges[b], edges[b+1]]; conf == 0 lands in bin 0.
    which = np.searchsorted(edges[1:-1], conf, side="left")
    return ReliabilityBins(
        edges=edges,
        counts=np.bincount(which, minlength=bins),
        correct=np.bincount(which, weights=ok, minlength=bins).astype(np.float64),
        confidence_sum=np.bincount(which, weights=conf, minlength=bins).astype(np.float64),
    )


def reliability_bins(probs: Any, labels: Any, bins: int = 15) -> ReliabilityBins:
    """:func:`confidence_bins` of ``(n, classes)`` probabilities (rows summing to 1 within 1e-2;
    apply a softmax to logits first): confidence is the maximum probability, the prediction its
    arg-max class."""
    p = _scores(probs, "probs")
    if not _looks_like_probs(p):
        raise ValueError(
            "probs must be probabilities in [0, 1] with rows summing to 1 (softmax logits first)"
        )
    y = _labels(labels, p.shape[0])
    _check_targets(y, p.shape[1])
    return confidence_bins(p.max(axis=1), p.argmax(axis=1) == y, bins)


def ece(probs: Any, labels: Any, bins: int = 15) -> float:
    """Expected calibration error over the whole set (Guo et al., 2017), in [0, 1].

    Samples are binned by confidence (maximum probability) into ``bins`` equal-width bins over
    [0, 1], bin ``b`` holding ``(b/bins, (b+1)/bins]``; ECE is the sample-weighted mean over bins of
    ``|accuracy - mean confidence|`` (:attr:`ReliabilityBins.ece`). Pool all queries of all
    episodes, or compute per episode and average with :func:`mean_ci95`; say which.
    """
    return reliability_bins(probs, labels, bins).ece


def nll(probs_or_logits: Any, labels: Any, *, from_logits: bool | None = None, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true labels (natural log).

    Args:
        probs_or_logits: ``(n, classes)`` probabilities or logits.
        labels: ``(n,)`` true class ids.
        from_logits: ``True`` for logits (a log-softmax is applied, equal to
            ``torch.nn.functional.cross_entropy``), ``False`` for probabilities, ``None`` (default)
            to decide: probabilities when every value is in [0, 1] and each row sums to 1 within
            1e-2, else logits. Pass it explicitly when scores could be either.
        eps: probabilities are clipped below at ``eps`` so a zero probability gives a large finite
            loss rather than infinity.
    """
    a = _scores(probs_or_logits, "probs_or_logits")
    y = _labels(labels, a.shape[0])
    _check_targets(y, a.shape[1])
    if from_logits is None:
        from_logits = not _looks_like_probs(a)
    rows = np.arange(a.shape[0])
    if from_logits:
        if not np.all(np.isfinite(a)):
            raise ValueError("logits must be finite")
        shifted = a - a.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=1))
        return float(np.mean(log_z - shifted[rows, y]))
    if np.any(a < 0) or np.any(a > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    return float(np.mean(-np.log(np.clip(a[rows, y], eps, None))))


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: mean over samples of ``sum_c (p_c - [y = c])^2``, in [0, 2]."""
    p = _scores(probs, "probs")
    if not _looks_like_probs(p):
        raise ValueError("probs must be probabilities with rows summing to 1 (softmax logits first)")
    y = _labels(labels, p.shape[0])
    _check_targets(y, p.shape[1])
    target = np.zeros_like(p)
    target[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - target) ** 2, axis=1)))


def selective_accuracy(confidence: Any, correct: Any, coverage: float) -> float:
    """Accuracy on the ``ceil(coverage * n)`` most confident samples (ties: the earlier sample).

    Args:
        confidence: ``(n,)`` confidence of each prediction (e.g. the maximum probability).
        correct: ``(n,)`` whether each prediction is right (bools or 0/1).
        coverage: fraction of samples kept, in (0, 1].
    """
    c = _to_numpy(confidence).astype(np.float64).reshape(-1)
    ok = _to_numpy(correct).astype(np.float64).reshape(-1)
    if c.shape != ok.shape or c.size == 0:
        raise ValueError(f"confidence and correct need the same non-zero length, got {c.size} and {ok.size}")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    keep = int(math.ceil(coverage * c.size - 1e-9))
    order = np.argsort(-c, kind="stable")[:keep]
    return float(ok[order].mean())


def fit_temperature(logits: Any, labels: Any, lo: float = 1e-3, hi: float = 1e4, iters: int = 100) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al., ICML 2017).

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``: a golden-section search over
    ``log T`` in ``[log lo, log hi]``, deterministic. ``T`` never changes an arg-max.
    """
    z = _scores(logits, "logits")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    y = _labels(labels, z.shape[0])
    _check_targets(y, z.shape[1])

    def loss(log_t: float) -> float:
        return nll(z / math.exp(log_t), y, from_logits=True)

    return float(math.exp(golden_section(loss, math.log(lo), math.log(hi), iters)))


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus method B over the same episodes.

    Attributes:
        mean: mean per-episode difference ``a - b``.
        half_width: 95% interval half width of ``mean`` (:func:`mean_ci95` of the differences).
        a_better: fraction of episodes where ``a > b``.
        b_better: fraction where ``b > a``.
        ties: fraction where they are equal.
        episodes: number of episodes.
    """

    mean: float
    half_width: float
    a_better: float
    b_better: float
    ties: float
    episodes: int

    @property
    def ci95(self) -> tuple[float, float]:
        """The interval ``(mean - half_width, mean + half_width)``."""
        return (self.mean - self.half_width, self.mean + self.half_width)

    @property
    def significant(self) -> bool:
        """Whether the 95% interval excludes zero."""
        lo, hi = self.ci95
        return lo > 0 or hi < 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)


def paired_difference(acc_a: Any, acc_b: Any) -> PairedDifference:
    """Compare two methods scored on the same episodes, episode by episode.

    ``acc_a[i]`` and ``acc_b[i]`` must come from the same episode ``i``. The interval is over the
    per-episode differences, which is much tighter than comparing two independent means when
    episodes vary in difficulty.
    """
    a = _to_numpy(acc_a).astype(np.float64).reshape(-1)
    b = _to_numpy(acc_b).astype(np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same episodes: {a.size} values vs {b.size}")
    if a.size == 0:
        raise ValueError("no episodes to compare")
    d = a - b
    mean, half = mean_ci95(d)
    return PairedDifference(
        mean=mean,
        half_width=half,
        a_better=float(np.mean(d > 0)),
        b_better=float(np.mean(d < 0)),
        ties=float(np.mean(d == 0)),
        episodes=int(a.size),
    )
