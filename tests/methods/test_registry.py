"""Adding a method is one new file plus its registration: a throwaway method registered here shows
up in ``focusshot methods``, in the groups it declares (and in ``all`` when it trains nothing),
in auto's candidates, and runs through ``evaluate``; no list elsewhere needs editing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from focusshot import create_backbone
from focusshot.api import evaluate, resolve_methods
from focusshot.backbones.prefix import Prefix
from focusshot.cli import main
from focusshot.methods.base import (
    FitContext,
    Fitted,
    Method,
    auto_candidates,
    auto_fallback,
    method_groups,
    methods_in_group,
    register_method,
    unregister_method,
)


@dataclass(frozen=True)
class _Options:
    scale: float = field(default=2.0, metadata={"help": "logit scale"})


class _MeanFitted(Fitted):
    def __init__(self, means: Tensor, scale: float) -> None:
        self.means, self.scale = means, scale

    def logits(self, query: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.scale * torch.nn.functional.normalize(query, dim=-1) @ self.means.T

    @property
    def num_classes(self) -> int:
        return len(self.means)

    def state_dict(self) -> dict[str, Tensor]:
        return {"means": self.means}

    def config(self) -> dict[str, Any]:
        return {"method": "throwaway", "scale": self.scale}


class _Throwaway(Method):
    """Cosine to normalised class means (a test's method)."""

    Options = _Options
    summary = "a throwaway method registered by a test"

    def prefix(self, backbone) -> Prefix:
        return Prefix.pooled()

    def fit(self, support: Tensor, labels: Tensor, ctx: FitContext) -> Fitted:
        f = torch.nn.functional.normalize(support, dim=-1)
        means = torch.stack([f[labels == c].mean(0) for c in range(ctx.num_classes)])
        return _MeanFitted(torch.nn.functional.normalize(means, dim=-1), self.options.scale)


@pytest.fixture
def throwaway():
    register_method("throwaway", groups=("mine",), auto_order=1.5)(_Throwaway)
    yield "throwaway"
    unregister_method("throwaway")


def test_a_registered_method_appears_everywhere(throwaway, tmp_path, monkeypatch, capsys) -> None:
    vit = create_backbone("tiny-vit", pretrained=False)
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "throwaway" in out and "throwaway.scale = 2.0: logit scale" in out
    assert "mine" in method_groups() and methods_in_group("mine", vit) == ["throwaway"]
    assert "throwaway" in resolve_methods(["all"], vit)  # trains nothing, runs on any backbone
    assert resolve_methods(["mine", "protonet"], vit) == ["throwaway", "protonet"]
    assert "throwaway" not in resolve_methods(["tuning"], vit)
    cands = auto_candidates()
    assert cands.index("protonet") < cands.index("throwaway") < cands.index("ridge")  # 1 < 1.5 < 3
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    run = evaluate(
        vit, "world:clutter?per_class=4", ["mine"], output=tmp_path / "r", ways=3, queries=2, episodes=2,
        report=False, figures=False,
    )  # fmt: skip
    assert [r["method"] for r in run.rows] == ["throwaway", "throwaway"]
    unregister_method("throwaway")
    assert "throwaway" not in auto_candidates() and "mine" not in method_groups()


def test_groups_and_auto_are_registry_queries() -> None:
    vit = create_backbone("tiny-vit", pretrained=False)
    clip = create_backbone("tiny-clip-vit", pretrained=False)
    assert methods_in_group("tuning", vit) == ["ft", "last_block", "lora", "ssf", "vpt"]
    assert methods_in_group("fort", vit) == ["ft+fort", "lora+fort", "ssf+fort", "vpt+fort"]
    assert auto_candidates() == [
        "protonet", "nearest_neighbour", "ridge", "logistic", "metaoptnet", "zeroshot", "tip_adapter",
        "lp_pp", "tip_adapter_f", "coop", "safe", "apt", "lora", "clip_lora",
    ]  # fmt: skip
    assert auto_fallback(vit) == "protonet" and auto_fallback(clip) == "tip_adapter"
    with pytest.raises(ValueError, match="groups"):
        methods_in_group("nope", vit)
    with pytest.raises(ValueError, match="computed"):
        register_method("x", groups=("all",))
