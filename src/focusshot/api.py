"""The Python API a practitioner uses: ``evaluate``, ``fit``, ``Classifier.predict``.

Example::

    import focusshot
    clf = focusshot.fit("my_support_images/", backbone="efficientnet-lite0", method="logistic")
    clf.save("shoes.safetensors")
    for p in focusshot.Classifier.load("shoes.safetensors").predict(["new.jpg"]):
        print(p.path, p.label, p.confidence)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from focusshot.backbones.base import Backbone
from focusshot.backbones.registry import create_backbone
from focusshot.data.images import list_images
from focusshot.data.sources import LabelledImages, open_source
from focusshot.embedding import embed_images
from focusshot.evaluation.cache import FeatureCache
from focusshot.evaluation.protocols import EpisodicConfig, RunOutcome, SplitConfig, run_episodic, run_split
from focusshot.evaluation.results import versions
from focusshot.heads.base import FittedHead, fitted_from_state
from focusshot.methods.feature_heads import create_feature_method

CLASSIFIER_FORMAT = "focusshot.classifier/1"


def default_cache_dir() -> Path:
    """``$FOCUSSHOT_CACHE/features``, else ``~/.cache/focusshot/features``."""
    env = os.environ.get("FOCUSSHOT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "focusshot") / "features"


def _backbone(backbone: str | Backbone, pretrained: bool, seed: int) -> tuple[Backbone, dict[str, Any]]:
    if isinstance(backbone, Backbone):
        return backbone, {"source": backbone.identity.source, "pretrained": None, "seed": None}
    return create_backbone(backbone, pretrained=pretrained, seed=seed), {
        "source": backbone,
        "pretrained": pretrained,
        "seed": seed,
    }


def _pick_split(data: LabelledImages | dict[str, LabelledImages], split: str | None, default: str):
    if isinstance(data, LabelledImages):
        if split not in (None, data.split):
            raise ValueError(f"the data has no splits; cannot select split {split!r}")
        return data
    name = split or (default if default in data else next(iter(data)))
    if name not in data:
        raise ValueError(f"no split {name!r} in the data; found {sorted(data)}")
    return data[name]


def resolve_methods(methods: Sequence[str], backbone: Backbone) -> list[str]:
    """Expand ``"all"`` to every frozen-feature method the backbone supports (text ones need CLIP)."""
    from focusshot.methods.feature_heads import list_feature_methods

    out: list[str] = []
    for name in methods:
        if name == "all":
            for m in list_feature_methods():
                if (backbone.capabilities.text or not create_feature_method(m).needs_text) and m not in out:
                    out.append(m)
        elif name not in out:
            out.append(name)
    return out


def evaluate(
    backbone: str | Backbone,
    data: str | os.PathLike[str] | LabelledImages | dict[str, LabelledImages],
    methods: Sequence[str] = ("protonet",),
    protocol: str = "episodic",
    output: str | os.PathLike[str] = "runs/evaluate",
    *,
    ways: int = 5,
    shots: int | Sequence[int] = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    split: str | None = None,
    seeds: Sequence[int] = (1, 2, 3),
    cache_dir: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    progress: bool = False,
) -> RunOutcome:
    """Evaluate ``methods`` with ``backbone`` on ``data`` under ``protocol`` (``episodic`` or ``split``).

    ``methods`` may contain ``"all"``: every frozen-feature method the backbone supports.

    Episodic runs draw from ``split`` (default: ``test`` when the data has splits). The split
    protocol needs train and test (validation optional) and takes ``shots`` as a list.
    """
    model, _ = _backbone(backbone, pretrained, seed)
    methods = resolve_methods(methods, model)
    source = data if isinstance(data, (LabelledImages, dict)) else open_source(data)
    cache = FeatureCache(cache_dir or default_cache_dir())
    if protocol == "episodic":
        if not isinstance(shots, int):
            raise ValueError("the episodic protocol takes one shots value")
        pool = _pick_split(source, split, "test")
        cfg = EpisodicConfig(ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed)
        return run_episodic(model, pool, list(methods), cfg, output, cache, progress=progress)
    if protocol == "split":
        if not isinstance(source, dict):
            raise ValueError("the split protocol needs data with train and test splits")
        ks = (shots,) if isinstance(shots, int) else tuple(shots)
        return run_split(model, source, list(methods), SplitConfig(ks, tuple(seeds)), output, cache, progress)
    raise ValueError(f"unknown protocol {protocol!r}; valid: episodic, split")


@dataclass
class Prediction:
    """One image's prediction: the label, its probability, and the top-k (label, probability) pairs."""

    path: str
    label: str
    confidence: float
    top: list[tuple[str, float]] = field(default_factory=list)


class Classifier:
    """A backbone plus a fitted head plus class names; saved as one safetensors file."""

    def __init__(
        self,
        backbone: Backbone,
        head: FittedHead,
        class_names: list[str],
        method: str,
        backbone_spec: dict[str, Any],
        info: dict[str, Any] | None = None,
    ) -> None:
        if head.num_classes != len(class_names):
            raise ValueError(f"head has {head.num_classes} classes but {len(class_names)} class names")
        self.backbone = backbone
        self.head = head
        self.class_names = list(class_names)
        self.method = method
        self.backbone_spec = backbone_spec
        self.info = info or {}

    @torch.inference_mode()
    def predict_proba(
        self, images: Sequence[str | os.PathLike[str]], batch_size: int = 32, progress: bool = False
    ) -> tuple[torch.Tensor, list[str], list]:
        """Class probabilities ``(N, C)`` of the images that decode, their paths, and the bad files."""
        emb = embed_images(self.backbone, [str(p) for p in images], batch_size=batch_size, progress=progress)
        probs = self.head.logits(emb.features).float().softmax(-1)
        return probs, emb.paths, emb.bad

    def predict(
        self,
        images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        top_k: int = 5,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[Prediction]:
        """Predictions for image files or folders (undecodable files raise :class:`ImageError`)."""
        paths = list_images(images)
        if not paths:
            raise ValueError(f"no image files in {images}")
        probs, kept, bad = self.predict_proba(paths, batch_size, progress)
        if bad:
            raise bad[0]
        k = min(top_k, len(self.class_names))
        values, idx = probs.topk(k, dim=-1)
        return [
            Prediction(
                p,
                self.class_names[int(i[0])],
                float(v[0]),
                [(self.class_names[int(c)], float(pv)) for c, pv in zip(i, v, strict=True)],
            )
            for p, v, i in zip(kept, values, idx, strict=True)
        ]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write head tensors and everything needed to rebuild the classifier (JSON metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CLASSIFIER_FORMAT,
            "method": self.method,
            "class_names": self.class_names,
            "backbone_spec": self.backbone_spec,
            "backbone": self.backbone.identity.to_dict(),
            "preprocess": self.backbone.preprocess.to_dict(),
            "head": self.head.config(),
            "versions": versions(),
            **self.info,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp), metadata={"focusshot": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], backbone: Backbone | None = None) -> Classifier:
        """Read a classifier; the backbone is rebuilt from its recorded source and its weights checked."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such classifier file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("focusshot", "{}"))
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ValueError(f"{path}: not a readable classifier file ({exc})") from exc
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise ValueError(f"{path}: not a focusshot classifier (format {meta.get('format')!r})")
        spec = meta["backbone_spec"]
        if backbone is None:
            if spec.get("pretrained") is None:
                raise ValueError(f"{path}: fitted with an in-memory backbone; pass backbone= to load it")
            backbone = create_backbone(spec["source"], pretrained=spec["pretrained"], seed=spec["seed"])
        want = meta["backbone"]["weights_sha256"]
        if backbone.identity.weights_sha256 != want:
            raise ValueError(
                f"{path}: the backbone's weights ({backbone.identity.weights_sha256[:12]}) differ from those "
                f"the classifier was fitted with ({want[:12]}, source {spec['source']!r})"
            )
        head = fitted_from_state(state, meta["head"])
        return cls(
            backbone,
            head,
            meta["class_names"],
            meta["method"],
            spec,
            {k: v for k, v in meta.items() if k in ("fitted_on",)},
        )


def fit(
    support: str | os.PathLike[str] | LabelledImages,
    backbone: str | Backbone = "efficientnet-lite0",
    method: str = "protonet",
    *,
    pretrained: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> Classifier:
    """Fit ``method`` on a support set (a folder with one sub-folder per class, or a manifest).

    When the data has train/validation splits, the head fits on train and selects its
    hyper-parameters (if any) on validation.
    """
    model, spec = _backbone(backbone, pretrained, seed)
    data = support if isinstance(support, LabelledImages) else open_source(support)
    val = data.get("val") if isinstance(data, dict) else None
    train = _pick_split(data, None, "train")
    m = create_feature_method(method)
    text = None
    if m.needs_text:
        from focusshot.methods.text import class_text_embeddings

        text = class_text_embeddings(model, train.class_names)

    def feats(d: LabelledImages) -> torch.Tensor:
        emb = embed_images(model, d.paths, batch_size=batch_size, progress=progress)
        if emb.bad:
            raise emb.bad[0]
        return emb.features

    vf = vl = None
    if val is not None:
        vf, vl = feats(val), torch.tensor(val.labels)
    head = m.fit(
        feats(train),
        torch.tensor(train.labels),
        len(train.class_names),
        text_embeddings=text,
        val_features=vf,
        val_labels=vl,
    )
    info = {
        "fitted_on": {
            "support": str(support) if not isinstance(support, LabelledImages) else "memory",
            "images": len(train.paths),
            "validation_images": 0 if val is None else len(val.paths),
        }
    }
    return Classifier(model, head, train.class_names, method, spec, info)
