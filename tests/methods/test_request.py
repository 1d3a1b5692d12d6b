"""One method request resolved once (focusshot.methods.request)."""

import pytest

import focusshot
from focusshot.backbones.prefix import Prefix
from focusshot.methods.request import AUTO, fit_options, resolve, settings_for


def test_settings_reach_the_methods_that_extend_them() -> None:
    got = settings_for(["lora+fort", "protonet"], {"lora": {"rank": 8}, "lora+fort": {"rank": 2}})
    assert got == {"lora+fort": {"rank": 2}, "protonet": {}}
    assert fit_options("lora+fort", {"lora": {"rank": 8}}) == {"rank": 8}


def test_one_unknown_option_rule_and_auto_takes_none() -> None:
    with pytest.raises(ValueError, match=r"options given for method\(s\) \['svm'\] that are not being run"):
        fit_options("protonet", {"svm": {"C": 2.0}})
    with pytest.raises(ValueError, match="'auto' takes no options"):
        fit_options(AUTO, {"protonet": {"temperature": 2.0}})
    assert fit_options(AUTO, None) == {}


def test_resolve_checks_the_backbone_once_and_names_the_method() -> None:
    vit = focusshot.create_backbone("tiny-vit")
    req = resolve("lora@r8", {"rank": 8}, vit)
    assert req.name == "lora@r8" and req.method.options.rank == 8
    assert req.prefix == Prefix.images()
    swin = focusshot.create_backbone("tiny-swin")
    with pytest.raises(ValueError, match=r"method 'vpt' cannot run on .*VPT needs a ViT"):
        resolve("vpt", None, swin)
    with pytest.raises(ValueError, match="chooses a method"):
        resolve(AUTO, None, vit)


def test_the_request_carries_its_prefix_resolved_and_as_declared() -> None:
    clip = focusshot.create_backbone("tiny-clip-vit")
    req = resolve("apt", None, clip)  # APT reads head_in: on a ViT, the tokens after the last block
    assert req.declared == Prefix.head_in()
    assert req.prefix == Prefix.tokens(clip.token_blocks()) == req.declared.resolve(clip)
    sav = resolve("sav", {"layers": [-1]}, clip)
    assert sav.prefix == Prefix.head_out([len(clip.attention_modules()) - 1])
