"""Zero-shot CLIP accuracy over every class of a labelled set (Radford et al., 2021).

Each image is classified among *all* of the set's class names (not N-way episodes): the
classifier is the template-averaged, normalised text embedding of each class name.
"""

from __future__ import annotations

import torch

from focusshot.backbones.base import Backbone
from focusshot.data.sources import LabelledImages
from focusshot.embedding import embed_images
from focusshot.evaluation.metrics import accuracy
from focusshot.methods.text import class_text_embeddings


@torch.inference_mode()
def zero_shot_accuracy(clip: Backbone, data: LabelledImages, batch_size: int = 64) -> dict[str, float]:
    """Top-1 and top-5 accuracy of zero-shot classification over all ``len(data.class_names)`` classes."""
    emb = embed_images(clip, data.paths, batch_size=batch_size)
    if emb.bad:
        raise emb.bad[0]
    text = class_text_embeddings(clip, data.class_names).mean(1)
    text = text / text.norm(dim=-1, keepdim=True)
    img = emb.features / emb.features.norm(dim=-1, keepdim=True)
    logits = img @ text.t()
    labels = torch.tensor(data.labels)
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).float().mean()
    return {
        "top1": accuracy(logits, labels),
        "top5": float(top5),
        "classes": len(data.class_names),
        "chance": 1.0 / len(data.class_names),
        "images": len(data.paths),
    }
