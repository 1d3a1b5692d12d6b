"""A fitted classifier as one ONNX graph (``focusshot export clf.safetensors --format onnx``).

The graph maps a preprocessed image batch ``images`` ``(N, 3, S, S)`` (float32 RGB, resized and
centre-cropped to ``S`` and normalised with the backbone's mean and std, as ``focusshot predict``
does) to ``logits`` ``(N, C)`` and ``probabilities`` ``(N, C)`` (the softmax of the logits divided
by the classifier's temperature). The batch is dynamic. A method that reads a region per image
(FALIP; the drawn prompts refuse) takes ``regions`` ``(N, 4)`` as a second input:
``x0, y0, x1, y1`` in ``[0, 1]`` coordinates of the crop. The model's ``metadata_props`` hold the
class names, the input size, the normalisation and the rest of the preprocessing, the temperature
and the method, so a runtime needs no focusshot to use it (docs/howto/deploy.md).

What is exported is the classifier's own inference: the backbone's prefix the method reads
(:func:`~focusshot.backbones.prefix.compute_prefix`) then the fit's
:meth:`~focusshot.methods.base.Fitted.export_logits`, traced by ``torch.export`` (non-strict, the
batch a symbolic dimension) and translated by torch's dynamo ONNX exporter (it needs
``onnxscript``; the TorchScript exporter cannot trace the backbones' shape arithmetic). Adapters
are merged into the weights they adapt where the maths allows (LoRA, SSF; VPT's prompts stay
tokens), dropout is off. A method whose inference is not one fixed graph says why
(:meth:`~focusshot.methods.base.Method.export_refusal`). The written graph is run once with
onnxruntime on random input against the eager classifier before the file appears.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from focusshot.adapters.base import AdapterError, AdapterModule
from focusshot.backbones.prefix import compute_prefix
from focusshot.classifier import Classifier
from focusshot.methods.base import Fitted, create_method
from focusshot.versions import versions

__all__ = ["ONNX_FORMAT", "ONNX_OPSET", "ExportGraph", "export_onnx", "export_refusal", "read_metadata"]

#: the ``focusshot.format`` metadata of an exported graph
ONNX_FORMAT = "focusshot.onnx/1"
#: the ONNX opset written (onnxruntime 1.17 and later run it)
ONNX_OPSET = 18
#: largest difference allowed between onnxruntime's and torch's probabilities on the check batch
CHECK_TOLERANCE = 1e-4

_EXTRA = 'pip install "focusshot[onnx]"  (onnx, onnxruntime, onnxscript)'


def export_refusal(clf: Classifier) -> str:
    """Why ``clf`` cannot be exported as one ONNX graph (``""`` when it can): its method says so
    (:meth:`~focusshot.methods.base.Method.export_refusal`)."""
    return create_method(clf.method, clf.fitted.config().get("options")).export_refusal()


def _modules(fitted: Fitted) -> list[nn.Module]:
    return [v for v in vars(fitted).values() if isinstance(v, nn.Module)]


def _merge_adapters(fitted: Fitted) -> int:
    """Fold every adapter of the (copied) fit into the layer it adapts where the maths allows;
    returns how many were merged (the others stay as they are, still exact)."""
    merged = 0
    for module in _modules(fitted):
        for sub in module.modules():
            if isinstance(sub, AdapterModule) and not sub.merged:
                try:
                    sub.merge()
                except AdapterError:
                    continue
                merged += 1
    return merged


class ExportGraph(nn.Module):
    """``images (N, 3, S, S)[, regions (N, 4)] -> (logits (N, C), probabilities (N, C))``: the
    classifier's prefix and its fit's :meth:`~focusshot.methods.base.Fitted.export_logits`."""

    def __init__(self, clf: Classifier, fitted: Fitted | None = None) -> None:
        super().__init__()
        self.backbone = clf.backbone
        self.fitted = clf.fitted if fitted is None else fitted
        #: the fit's modules, registered so that their weights are the graph's parameters
        self.parts = nn.ModuleList(_modules(self.fitted))
        self.prefix = clf.prefix  # resolved when the classifier's method was
        self.temperature = float(clf.temperature)
        self.reads_regions = bool(clf.needs_regions)

    def forward(self, images: Tensor, regions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        features = compute_prefix(self.backbone, self.prefix, images)
        logits = self.fitted.export_logits(features, regions if self.reads_regions else None).float()
        return logits, (logits / self.temperature).softmax(-1)


def _example(clf: Classifier, batch: int = 2, seed: int = 0) -> tuple[Tensor, ...]:
    """Random preprocessed images (and boxes, for a method that reads regions) to trace and check with."""
    g = torch.Generator().manual_seed(seed)
    crop = int(clf.backbone.preprocess.crop)
    images = torch.randn(batch, 3, crop, crop, generator=g)
    if not clf.needs_regions:
        return (images,)
    lo = torch.rand(batch, 2, generator=g) * 0.4
    hi = lo + 0.3 + torch.rand(batch, 2, generator=g) * 0.3
    return images, torch.cat([lo, hi.clamp(max=1.0)], dim=1)


def _metadata(clf: Classifier, merged: int) -> dict[str, str]:
    pre = clf.backbone.preprocess
    crop = int(pre.crop)
    inputs = {
        "images": (
            f"(N, 3, {crop}, {crop}) float32 RGB: the image (EXIF orientation applied) resized "
            f"({pre.interpolation}) so its shorter side is {pre.resize} (the longer: int({pre.resize} * "
            f"long / short)), centre-cropped to {crop} x {crop} (offsets round((side - {crop}) / 2)), "
            "scaled to [0, 1], then (x - mean) / std per channel"
        )
    }
    if clf.needs_regions:
        inputs["regions"] = "(N, 4) float32: x0, y0, x1, y1 of each image's box in [0, 1] of the crop"
    return {
        "focusshot.format": ONNX_FORMAT,
        "class_names": json.dumps(clf.class_names),
        "method": clf.method,
        "input_size": json.dumps([crop, crop]),
        "resize": str(int(pre.resize)),
        "interpolation": str(pre.interpolation),
        "mean": json.dumps([float(v) for v in pre.mean]),
        "std": json.dumps([float(v) for v in pre.std]),
        "preprocess": json.dumps({**pre.to_dict(), "crop_rounding": "round"}),
        "temperature": repr(float(clf.temperature)),
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(
            {
                "logits": "(N, C) float32 class scores",
                "probabilities": "(N, C) float32: softmax(logits / temperature)",
            }
        ),
        "adapters_merged": str(merged),
        "dropout": "off (the graph is deterministic)",
        "backbone": json.dumps(clf.backbone.identity.to_dict()),
        "backbone_spec": json.dumps(clf.backbone_spec),
        "versions": json.dumps(versions()),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's notes that are no user's business (optional torchvision operators not
    registered; torch.export's own deprecation warnings)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            yield
    finally:
        registration.setLevel(level)


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError as exc:
        raise ValueError(f"ONNX export needs the onnx extra ({exc.name} is missing): {_EXTRA}") from None
    return onnx, onnxruntime


def export_onnx(
    clf: Classifier | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    check: bool = True,
) -> Path:
    """Write ``clf`` (a :class:`~focusshot.classifier.Classifier` or its file) as one ONNX graph.

    Args:
        clf: the classifier, or the path of a file ``focusshot fit`` wrote.
        output: the ``.onnx`` file to write (written to a temporary name, checked, then renamed:
            nothing half-written is left).
        check: run the written graph with onnxruntime on a random batch and compare its
            probabilities with the classifier's (within :data:`CHECK_TOLERANCE`).

    Returns:
        The path written.

    Raises:
        ValueError: the method cannot be exported (the reason), the classifier file cannot be
            loaded (its backbone weights cannot be found: the error names the source), the onnx
            extra is missing, or the check fails.
        FileNotFoundError: no such classifier file.
    """
    onnx, ort = _require_onnx()
    if not isinstance(clf, Classifier):
        path = Path(clf)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such classifier file")
        try:
            clf = Classifier.load(path)
        except (OSError, RuntimeError) as exc:  # the backbone's weights are missing or unreadable
            raise ValueError(f"{path}: cannot export: the backbone does not load: {exc}") from exc
    why = export_refusal(clf)
    if why:
        raise ValueError(f"method {clf.method!r} cannot be exported to ONNX: {why}")
    fitted = copy.deepcopy(clf.fitted)
    merged = _merge_adapters(fitted)
    graph = ExportGraph(clf, fitted).eval()
    example = _example(clf)
    names = ["images", "regions"][: len(example)]
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in example)
    with torch.no_grad(), _quiet():
        try:
            program = torch.export.export(graph, example, dynamic_shapes=dynamic, strict=False)
            onnx_program = torch.onnx.export(
                program,
                example,
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=names,
                output_names=["logits", "probabilities"],
                optimize=True,
                verify=False,
                verbose=False,
            )
        except Exception as exc:  # torch.export / the translator: say which method and why
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"method {clf.method!r} did not export to ONNX ({type(exc).__name__}: {first})"
            ) from exc
    assert onnx_program is not None
    model = onnx_program.model_proto
    for key, value in _metadata(clf, merged).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        onnx.save_model(model, str(tmp))
        if check:
            _check(ort, tmp, ExportGraph(clf).eval(), clf, names)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def _check(ort: Any, path: Path, graph: ExportGraph, clf: Classifier, names: list[str]) -> None:
    """onnxruntime's probabilities of a random batch of 3 equal the eager classifier's (its fit as it
    is: adapters not merged)."""
    example = _example(clf, batch=3, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {n: t.numpy() for n, t in zip(names, example, strict=True)})[0]
    with torch.no_grad():
        want = graph(*example)[1]
    err = float((torch.from_numpy(got) - want).abs().max())
    if not err <= CHECK_TOLERANCE:
        raise ValueError(
            f"method {clf.method!r}: the exported graph's probabilities differ from the classifier's by "
            f"{err:.2e} (> {CHECK_TOLERANCE:g}); nothing was written"
        )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a graph :func:`export_onnx` wrote, JSON values decoded."""
    onnx, _ = _require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for entry in model.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except ValueError:
            out[entry.key] = entry.value
    return out
