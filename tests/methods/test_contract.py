"""The method contract: registry, options, frozen-feature heads as methods, save/load."""

import dataclasses

import pytest
import torch

import focusshot
from focusshot.backbones.prefix import Prefix
from focusshot.heads import create_head
from focusshot.methods.base import (
    FitContext,
    create_method,
    fitted_from_state,
    list_methods,
    method_class,
    options_from_dict,
)


def test_registry_lists_heads_and_tuning_methods() -> None:
    names = list_methods()
    for name in (
        "protonet",
        "logistic",
        "zeroshot",
        "tip_adapter_f",
        "ft",
        "last_block",
        "lora",
        "ssf",
        "vpt",
    ):
        assert name in names
    assert focusshot.list_methods() == names
    assert not method_class("protonet").trains and method_class("lora").trains
    assert method_class("zeroshot").needs_text and not method_class("lora").needs_text


def test_unknown_method_and_options_name_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid methods: .*protonet"):
        create_method("protonett")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rnak'\].*valid options: .*rank"):
        create_method("lora", {"rnak": 8})
    with pytest.raises(ValueError, match="init must be one of"):
        create_method("lora", {"init": "bogus"})
    assert create_method("lora", {"rank": 8}).options.rank == 8
    assert create_method("lora", rank=2).options.rank == 2
    # JSON lists become tuples
    opts = options_from_dict(method_class("lora").Options, {"targets": ["*.attn.q"]}, "lora")
    assert opts.targets == ("*.attn.q",)


def test_feature_method_equals_its_head() -> None:
    g = torch.Generator().manual_seed(0)
    x, y, q = torch.randn(12, 8, generator=g), torch.arange(3).repeat(4), torch.randn(5, 8, generator=g)
    backbone = focusshot.create_backbone("tiny-vit")
    for name in ("protonet", "r2d2", "logistic"):
        m = create_method(name)
        assert m.prefix(backbone) == Prefix.pooled()
        fitted = m.fit(x, y, FitContext(backbone, 3))
        head = create_head(name).fit(x, y, 3)
        assert torch.equal(fitted.logits(q), head.logits(q))
        again = fitted_from_state(fitted.state_dict(), fitted.config(), backbone)
        assert torch.equal(again.logits(q), fitted.logits(q))


def test_head_options_reach_the_head() -> None:
    g = torch.Generator().manual_seed(1)
    x, y, q = torch.randn(6, 4, generator=g), torch.arange(3).repeat(2), torch.randn(3, 4, generator=g)
    backbone = focusshot.create_backbone("tiny-vit")
    plain = create_method("protonet").fit(x, y, FitContext(backbone, 3)).logits(q)
    hot = create_method("protonet", {"temperature": 2.0}).fit(x, y, FitContext(backbone, 3)).logits(q)
    assert torch.allclose(hot, plain / 2.0)


def test_text_methods_need_text() -> None:
    backbone = focusshot.create_backbone("tiny-vit")
    with pytest.raises(ValueError, match="needs class text embeddings"):
        create_method("zeroshot").fit(torch.randn(3, 4), torch.arange(3), FitContext(backbone, 3))


def test_every_option_field_has_help() -> None:
    for name in list_methods():
        for f in dataclasses.fields(method_class(name).Options):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
