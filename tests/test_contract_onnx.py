"""ONNX export through the contract's registry loop (issue 34): a method added to the registry is
covered without editing this file.

Families, chosen to keep the suite fast (an export costs ~5 s of tracing on the tiny models):

* ``tiny-clip-vit``: every registered method (every method runs on a CLIP ViT);
* ``tiny-clip-rn``, the non-ViT family (a CNN tower with attention pooling): the first method of
  each kind of inference, (prefix kind, trains), so that every prefix path and both frozen and
  tuned towers export on a CNN too. The DINO-style ViT and Swin run the same
  ``compute_prefix`` -> ``export_logits`` path and are left out for time.

For each fitted case (:func:`tests.test_contract.fitted_case`, shared with the contract test):

* a method that exports: onnxruntime's probabilities of the query images, at the query batch and
  at batch 1 (the batch is dynamic), equal ``predict_proba``'s within 1e-4; the metadata holds the
  class names, the input size and the normalisation. APT's ``predict`` averages MC-dropout samples
  and its graph is one pass with dropout off, so its reference is ``predict`` with dropout 0;
* a method that declares it cannot export (:meth:`~focusshot.methods.base.Method.export_refusal`):
  ``export_onnx`` raises a ``ValueError`` naming the method and the reason, and writes nothing.

A method that refused the backbone at fit time is the contract test's business and is skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from focusshot.backbones.prefix import Prefix
from focusshot.backbones.registry import create_backbone
from focusshot.classifier import Classifier
from focusshot.methods.base import create_method, list_methods
from tests.test_contract import CLASSES, contract_root, fitted_case

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

from focusshot.export_onnx import export_onnx, export_refusal, read_metadata  # noqa: E402

__all__ = ["contract_root"]  # the session fixture, imported for pytest
#: torch.export's own deprecation notice, raised inside torch on every export
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

#: the family every method is exported on, and the non-ViT one
VIT, CNN = "tiny-clip-vit", "tiny-clip-rn"


def _one_per_kind(family: str) -> list[str]:
    """The first method (registry order) of each (prefix kind, trains) pair that runs on ``family``."""
    backbone = create_backbone(family)
    seen: set[tuple[str, bool]] = set()
    out = []
    for name in list_methods():
        method = create_method(name)
        try:
            kind = method.prefix(backbone).resolve(backbone).kind
        except ValueError:
            continue
        if (kind, method.trains) not in seen:
            seen.add((kind, method.trains))
            out.append(name)
    return out


CASES = [pytest.param(name, VIT, id=f"{name}-{VIT}") for name in list_methods()] + [
    pytest.param(name, CNN, id=f"{name}-{CNN}") for name in _one_per_kind(CNN)
]


def _reference(clf: Classifier, features: torch.Tensor) -> Classifier:
    """``clf``, or for a fit that predicts by MC-dropout sampling (APT) the same fit with dropout 0:
    the one pass its graph computes."""
    if "mutual_information" not in clf.uncertainty(features):
        return clf
    fitted = copy.copy(clf.fitted)
    fitted.options = dataclasses.replace(fitted.options, dropout=0.0)  # type: ignore[attr-defined]
    return Classifier(clf.backbone, fitted, clf.class_names, clf.method, clf.backbone_spec, clf.info)


@pytest.mark.parametrize(("name", "family"), CASES)
def test_onnx_export_equals_predict(name: str, family: str, contract_root: Path, tmp_path: Path) -> None:
    case = fitted_case(name, False, family, contract_root)
    clf = case.clf
    if clf is None:
        pytest.skip(f"{name} refused {family} at fit time (the contract test checks why)")
    out = tmp_path / "clf.onnx"
    why = export_refusal(clf)
    if why:
        assert len(why) > 20, f"{name}: say why it cannot export, got {why!r}"
        with pytest.raises(ValueError, match=re.escape(f"method '{name}' cannot be exported to ONNX: ")):
            export_onnx(clf, out)
        assert not list(tmp_path.iterdir()), "a refused export left a file"
        return
    export_onnx(clf, out, check=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    assert inputs == (["images", "regions"] if clf.needs_regions else ["images"])
    assert isinstance(session.get_inputs()[0].shape[0], str), "the batch must be dynamic"
    paths = case.query.paths
    images = clf.embed(paths, prefix=Prefix.images()).features.numpy()
    feeds = {"images": images}
    if clf.needs_regions:
        assert case.regions is not None
        feeds["regions"] = case.regions.numpy()
    ref = _reference(clf, clf.embed(paths).features)
    want = ref.predict_proba(paths, boxes=case.query.boxes)[0]
    logits, probs = session.run(["logits", "probabilities"], feeds)
    assert logits.shape == probs.shape == (len(paths), len(CLASSES))
    torch.testing.assert_close(torch.from_numpy(probs), want, atol=1e-4, rtol=0)
    one = session.run(["probabilities"], {k: v[:1] for k, v in feeds.items()})[0]
    torch.testing.assert_close(torch.from_numpy(one), want[:1], atol=1e-4, rtol=0)
    meta = read_metadata(out)
    pre = clf.backbone.preprocess
    assert meta["class_names"] == CLASSES and meta["method"] == clf.method
    assert meta["input_size"] == [pre.crop, pre.crop]
    assert meta["mean"] == list(pre.mean) and meta["std"] == list(pre.std)
    assert meta["temperature"] == clf.temperature
