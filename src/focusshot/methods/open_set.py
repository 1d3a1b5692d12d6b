"""Open-set scores: how much a query looks like one of the fitted classes ("known"), higher = more.

One definition serves rejection (``predict`` writes ``unknown`` below a threshold), the choice of
that threshold (``fit --reject auto``) and the open-set protocol (``evaluate --open-ways``):

* ``msp``: the maximum softmax probability, after the classifier's temperature where one is
  fitted (Hendrycks & Gimpel, ICLR 2017);
* ``max_logit``: the largest logit (Hendrycks et al., ICML 2022);
* ``energy``: minus the free energy, ``T * logsumexp(logits / T)`` with ``T = 1`` (Liu et al.,
  "Energy-based Out-of-distribution Detection", NeurIPS 2020, whose score is ``-E(x)``);
* ``distance``: minus the distance of the query's feature to the nearest class prototype or
  support feature, for fits that classify by distance (ProtoNet, nearest neighbour, SAV);
* ``mcm``: maximum concept matching, the largest softmax of the cosine similarities of the
  image feature to the class texts at temperature ``tau = 1`` (Ming et al., "Delving into
  Out-of-Distribution Detection with Vision-Language Representations", NeurIPS 2022), for CLIP
  fits that keep those similarities apart from their logits.

Every fit gives the three logit scores unless it says why not (:meth:`Fitted.open_scores
<focusshot.methods.base.Fitted.open_scores>`: SAV's logits are log vote counts, whose
``logsumexp`` is the number of heads whatever the image); ``distance`` and ``mcm`` come from the
fit's :meth:`~focusshot.methods.base.Fitted.nearest_distance` and
:meth:`~focusshot.methods.base.Fitted.text_similarities`. Each method names its default in
:attr:`Method.open_score <focusshot.methods.base.Method.open_score>`.

A fitted head (``focusshot.heads``) that offers a score defines ``nearest_distance(features)
-> (M,)`` or ``text_similarities(features) -> (M, C)``; the fits that wrap a head
(:class:`HeadScores`) pass them on. This module imports nothing of the method contract, so the
contract can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from focusshot.heads.base import FittedHead

__all__ = [
    "LOGIT_SCORES",
    "MCM_TAU",
    "SCORES",
    "HeadScores",
    "OpenFit",
    "check_score",
    "check_scores",
    "head_scores",
    "logit_score",
    "logit_support",
    "mcm",
    "open_scores",
]

#: every open-set score, name -> what it is (higher: more like a known class)
SCORES: dict[str, str] = {
    "msp": "maximum softmax probability, after the classifier's temperature (Hendrycks & Gimpel, 2017)",
    "max_logit": "the largest logit (Hendrycks et al., 2022)",
    "energy": "minus the free energy, logsumexp of the logits, T = 1 (Liu et al., NeurIPS 2020)",
    "distance": "minus the distance to the nearest class prototype or support feature (metric heads)",
    "mcm": "largest softmax of the cosine similarities to the class texts, tau = 1 (Ming et al., 2022)",
}
#: the scores every fit's logits give (unless the fit says why not)
LOGIT_SCORES = ("msp", "max_logit", "energy")
#: MCM's temperature on cosine similarities (the paper's default, tau = 1)
MCM_TAU = 1.0
#: the energy score's temperature (Liu et al.: T = 1)
ENERGY_T = 1.0

_NO_DISTANCE = "its fit holds no class prototypes or support features to measure a distance to"
_NO_TEXT = "its fit keeps no image-text cosine similarities apart from its logits (no class texts)"


def check_score(name: str) -> str:
    """``name`` if it is a score, else a ``ValueError`` listing the valid ones."""
    if name not in SCORES:
        raise ValueError(f"unknown open-set score {name!r}; valid scores: {', '.join(SCORES)}")
    return name


def check_scores(names: Sequence[str]) -> list[str]:
    """Each of ``names`` checked (:func:`check_score`), in order, each once."""
    out: list[str] = []
    for n in names:
        if check_score(n) not in out:
            out.append(n)
    return out


def logit_support() -> dict[str, str]:
    """What a fit that offers only its logits gives: the logit scores (``""``), and why not the
    others."""
    return {**dict.fromkeys(LOGIT_SCORES, ""), "distance": _NO_DISTANCE, "mcm": _NO_TEXT}


def logit_score(logits: Tensor, name: str, temperature: float = 1.0) -> Tensor:
    """A logit score ``(M,)`` (float64) of logits ``(M, C)``: ``msp`` (after ``temperature``),
    ``max_logit`` or ``energy``."""
    x = logits.detach().double()
    if name == "msp":
        return (x / temperature).softmax(-1).amax(-1)
    if name == "max_logit":
        return x.amax(-1)
    if name == "energy":
        return ENERGY_T * torch.logsumexp(x / ENERGY_T, dim=-1)
    raise ValueError(f"{name!r} is not a logit score; logit scores: {', '.join(LOGIT_SCORES)}")


def mcm(similarities: Tensor, tau: float = MCM_TAU) -> Tensor:
    """MCM ``(M,)`` of cosine similarities ``(M, C)`` to the class texts: ``max softmax(s / tau)``."""
    return (similarities.detach().double() / tau).softmax(-1).amax(-1)


class OpenFit(Protocol):
    """What :func:`open_scores` reads of a fit (every :class:`~focusshot.methods.base.Fitted`)."""

    method: str

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor: ...

    def open_scores(self) -> dict[str, str]: ...

    def nearest_distance(self, query: Tensor, regions: Tensor | None = None) -> Tensor: ...

    def text_similarities(self, query: Tensor, regions: Tensor | None = None) -> Tensor: ...


def open_scores(
    fitted: OpenFit,
    query: Tensor,
    names: Sequence[str],
    regions: Tensor | None = None,
    *,
    temperature: float = 1.0,
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """The scores ``names`` ``(M,)`` (float64, higher: more like a known class) of the query prefix.

    Args:
        fitted: the fit.
        query: the query prefix ``(M, *prefix)``.
        names: score names (:data:`SCORES`).
        regions: ``(M, 4)`` query regions, for a fit that reads them.
        temperature: the classifier's temperature (``msp`` divides the logits by it).
        logits: the fit's logits of ``query`` when already computed (they are otherwise computed
            once for every logit score).

    Raises:
        ValueError: an unknown name (listing the valid ones), or a score the fit cannot give (the
            reason).
    """
    support = fitted.open_scores()
    out: dict[str, Tensor] = {}
    for name in check_scores(names):
        why = support.get(name, "")
        if why:
            raise ValueError(f"method {fitted.method!r} cannot give the open-set score {name!r}: {why}")
        if name in LOGIT_SCORES:
            if logits is None:
                logits = fitted.logits(query, regions)
            out[name] = logit_score(logits, name, temperature)
        elif name == "distance":
            out[name] = -fitted.nearest_distance(query, regions).detach().double()
        else:
            out[name] = mcm(fitted.text_similarities(query, regions))
    return out


def head_scores(head: Any) -> dict[str, str]:
    """The scores beyond the logit ones a fitted head offers: ``distance`` when it has
    ``nearest_distance`` and ``mcm`` when it has ``text_similarities`` (a head may refuse one with
    ``open_refusals() -> {score: why}``)."""
    out = logit_support()
    if callable(getattr(head, "nearest_distance", None)):
        out["distance"] = ""
    if callable(getattr(head, "text_similarities", None)):
        out["mcm"] = ""
    refusals: Callable[[], Mapping[str, str]] | None = getattr(head, "open_refusals", None)
    if refusals is not None:
        out.update(refusals())
    return out


class HeadScores:
    """The open-set scores of a fit that is a fitted head over features (a frozen-feature head, a
    region head): ``distance`` and ``mcm`` where the head offers them (:func:`head_scores`).

    A fit that computes its features from the query (a region head) overrides
    :meth:`head_features`.
    """

    head: FittedHead

    def head_features(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """The features ``(M, D)`` the head reads (the query itself for a frozen-feature head)."""
        return query

    def open_scores(self) -> dict[str, str]:
        """:func:`head_scores` of the head."""
        return head_scores(self.head)

    def nearest_distance(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """The head's distance ``(M,)`` to its nearest prototype or support feature."""
        return self._from_head("nearest_distance", _NO_DISTANCE, query, regions)

    def text_similarities(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        """The head's cosine similarities ``(M, C)`` to the class texts."""
        return self._from_head("text_similarities", _NO_TEXT, query, regions)

    def _from_head(self, what: str, why: str, query: Tensor, regions: Tensor | None) -> Tensor:
        fn = getattr(self.head, what, None)
        if fn is None:
            raise ValueError(why)
        out: Tensor = fn(self.head_features(query, regions))
        return out
