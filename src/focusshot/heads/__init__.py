"""Classifier heads over features (DESIGN principle 7: heads are pure).

``create_head(name, **kwargs).fit(features, labels) -> FittedHead``; ``fitted.logits(query)``.
Heads see features only and never import :mod:`focusshot.backbones`. The iterative ones (the
logistic probe, SVM, MetaOptNet, LP++, Tip-Adapter-F) check an enclosing deadline
(:mod:`focusshot.deadlines`) in their loops: under one a fit either returns what it returns
without one or raises :class:`~focusshot.deadlines.DeadlineExceeded`.
"""

from focusshot.heads.base import (
    FittedHead,
    Head,
    HeadInputError,
    create_head,
    fitted_from_state,
    head_arguments,
    list_heads,
    load_fitted,
    register_head,
    save_fitted,
)
from focusshot.heads.linear import LinearClassifier
from focusshot.heads.logistic import LogisticRegression
from focusshot.heads.lp_pp import LPPlusPlus
from focusshot.heads.metaoptnet import MetaOptNet
from focusshot.heads.nearest_neighbour import NearestNeighbour, NearestNeighbourClassifier
from focusshot.heads.protonet import ProtoNet, PrototypeClassifier
from focusshot.heads.ridge import R2D2, Ridge
from focusshot.heads.svm import SVM
from focusshot.heads.tip_adapter import TipAdapter, TipAdapterClassifier, TipAdapterF
from focusshot.heads.zeroshot import ZeroShot

__all__ = [
    "R2D2",
    "SVM",
    "FittedHead",
    "Head",
    "HeadInputError",
    "LPPlusPlus",
    "LinearClassifier",
    "LogisticRegression",
    "MetaOptNet",
    "NearestNeighbour",
    "NearestNeighbourClassifier",
    "ProtoNet",
    "PrototypeClassifier",
    "Ridge",
    "TipAdapter",
    "TipAdapterClassifier",
    "TipAdapterF",
    "ZeroShot",
    "create_head",
    "fitted_from_state",
    "head_arguments",
    "list_heads",
    "load_fitted",
    "register_head",
    "save_fitted",
]
