"""Finding, swapping, freezing and saving parameters by module name; errors that name the model."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from focusshot.adapters import (
    AdapterError,
    LoRAConfig,
    SSFConfig,
    VPTConfig,
    describe_model,
    find_modules,
    freeze,
    inject_lora,
    inject_ssf,
    inject_vpt,
    load_trainable_state,
    merge_lora,
    merge_ssf,
    replace_module,
    trainable_state,
    unfreeze,
    unmerge_ssf,
)
from tests.adapters.conftest import images, tiny


def test_find_modules_matches_names_in_model_order_and_filters_by_type() -> None:
    vit = tiny("tiny-vit")
    found = find_modules(vit, ["*.attn.v", "*.attn.q"], nn.Linear)
    assert [n for n, _ in found] == [
        "blocks.0.attn.q",
        "blocks.0.attn.v",
        "blocks.1.attn.q",
        "blocks.1.attn.v",
    ]
    block1 = [n for n, _ in find_modules(vit, "blocks.1.*", nn.LayerNorm)]
    assert block1 == ["blocks.1.norm1", "blocks.1.norm2"]
    assert find_modules(vit, ["*"], nn.Module)[0] == ("", vit)  # the root has the empty name
    assert find_modules(vit, ["*.attn.qq"]) == []


def test_replace_module_swaps_by_qualified_name_and_refuses_root_or_unknown() -> None:
    vit = tiny("tiny-vit")
    new = nn.Linear(32, 32)
    replace_module(vit, "blocks.1.attn.k", new)
    assert vit.blocks[1].attn.k is new
    with pytest.raises(AdapterError, match="root"):
        replace_module(vit, "", new)
    with pytest.raises(AdapterError, match=r"no module 'blocks\.7\.attn'"):
        replace_module(vit, "blocks.7.attn", new)


def test_freeze_and_unfreeze_last_block_and_everything() -> None:
    vit = tiny("tiny-vit")
    freeze(vit)
    assert not any(p.requires_grad for p in vit.parameters())
    names = unfreeze(vit, ["blocks.1", "norm"])
    assert names[0] == "blocks.1.norm1.weight" and names[-2:] == ["norm.weight", "norm.bias"]
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    assert all(n.startswith(("blocks.1.", "norm.")) for n in trainable)
    everything = unfreeze(vit, ["*"])
    assert set(everything) == {n for n, _ in vit.named_parameters()}
    assert all(p.requires_grad for p in vit.parameters())


def test_unfreeze_without_match_names_the_model_and_patterns() -> None:
    vit = tiny("tiny-vit")
    with pytest.raises(AdapterError, match=r"\['head\.\*'\] in VisionTransformer \(tiny-vit\)"):
        unfreeze(vit, ["head.*"])


def test_describe_model_uses_identity_name_when_there_is_one() -> None:
    assert describe_model(tiny("tiny-clip-vit")) == "CLIP (tiny-clip-vit)"
    assert describe_model(nn.Linear(2, 2)) == "Linear"


def test_trainable_state_round_trip_restores_adapter_outputs() -> None:
    x = images()
    gen = torch.Generator().manual_seed(3)
    src = tiny("tiny-vit")
    freeze(src)
    inject_lora(src, LoRAConfig(rank=2), generator=gen)
    with torch.no_grad():
        for name, p in src.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    state = trainable_state(src)
    assert set(state) == {n for n, _ in src.named_parameters() if "lora_" in n}
    assert all(not t.requires_grad for t in state.values())
    # clones, not views of the parameters
    assert all(t.data_ptr() != src.get_parameter(n).data_ptr() for n, t in state.items())
    dst = tiny("tiny-vit")
    freeze(dst)
    inject_lora(dst, LoRAConfig(rank=2))  # different random A
    with torch.enable_grad():
        assert not torch.equal(dst.forward_features(x), src.forward_features(x))
        load_trainable_state(dst, state)
        assert torch.equal(dst.forward_features(x), src.forward_features(x))


def test_load_trainable_state_is_strict_about_keys_and_shapes() -> None:
    vit = tiny("tiny-vit")
    freeze(vit)
    inject_lora(vit, LoRAConfig(rank=2))
    state = trainable_state(vit)
    missing = dict(state)
    gone = missing.pop("blocks.0.attn.q.lora_A")
    missing["blocks.0.attn.q.lora_C"] = gone
    with pytest.raises(AdapterError) as err:
        load_trainable_state(vit, missing)
    msg = str(err.value)
    assert "missing keys ['blocks.0.attn.q.lora_A']" in msg
    assert "unexpected keys ['blocks.0.attn.q.lora_C']" in msg
    assert "VisionTransformer (tiny-vit)" in msg
    wrong = dict(state)
    wrong["blocks.1.attn.v.lora_B"] = torch.zeros(3, 3)
    with pytest.raises(AdapterError, match=r"blocks\.1\.attn\.v\.lora_B: \(3, 3\) vs \(32, 2\)"):
        load_trainable_state(vit, wrong)


@pytest.mark.parametrize(
    ("inject", "needs"),
    [
        (
            lambda m: inject_lora(m, LoRAConfig()),
            r"no nn\.Linear modules matching \['\*\.attn\.q', '\*\.attn\.v'\]",
        ),
        (
            lambda m: inject_ssf(m, SSFConfig()),
            r"no nn\.Linear/nn\.LayerNorm modules matching \['\*\.attn\.q'",
        ),
        (lambda m: inject_vpt(m, VPTConfig()), r"VPT needs a ViT"),
    ],
    ids=["lora", "ssf", "vpt"],
)
def test_adapters_on_a_cnn_name_the_backbone(inject: Callable[[nn.Module], list[str]], needs: str) -> None:
    cnn = tiny("tiny-efficientnet")
    with pytest.raises(AdapterError, match=needs) as err:
        inject(cnn)
    assert "EfficientNetLite0 (tiny-efficientnet)" in str(err.value)


def test_lora_error_message_reads_as_documented() -> None:
    with pytest.raises(AdapterError) as err:
        inject_lora(tiny("tiny-efficientnet"), LoRAConfig())
    assert str(err.value) == (
        "no nn.Linear modules matching ['*.attn.q', '*.attn.v'] in EfficientNetLite0 (tiny-efficientnet); "
        "LoRA needs attention q/v projections"
    )


def test_injecting_twice_is_refused_and_wrapped_bases_are_not_targets() -> None:
    vit = tiny("tiny-vit")
    inject_lora(vit, LoRAConfig())
    with pytest.raises(AdapterError, match="already has LoRA"):
        inject_lora(vit, LoRAConfig())
    # "*.q.base" names the Linear inside a LoRA wrapper: never a target
    with pytest.raises(AdapterError, match="no nn.Linear modules matching"):
        inject_lora(vit, LoRAConfig(targets=("*.q.base",)))
    names = inject_ssf(vit, SSFConfig(targets=("*.attn.q*", "*.norm1")))
    assert names == ["blocks.0.norm1", "blocks.1.norm1"]  # q is a LoRA wrapper now, not an nn.Linear


def test_injected_modules_follow_the_models_training_mode() -> None:
    model = tiny("tiny-vit")  # create_backbone returns eval mode
    inject_lora(model, LoRAConfig(dropout=0.2))
    inject_ssf(model, SSFConfig(targets=("*.norm1",)))
    inject_vpt(model, VPTConfig(dropout=0.2))
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_merging_never_writes_storage_shared_with_another_model() -> None:
    x = images()
    original = tiny("tiny-vit")
    reference = {n: t.clone() for n, t in original.state_dict().items()}
    shared = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in original.parameters()}
    twin = copy.deepcopy(original, memo=dict(shared))  # same storage, as a cheap frozen copy
    assert twin.blocks[0].attn.q.weight.data_ptr() == original.blocks[0].attn.q.weight.data_ptr()
    inject_lora(twin, LoRAConfig(targets=("*.attn.q",)))
    inject_ssf(twin, SSFConfig(targets=("*.attn.v", "*.norm1"), init_std=0.1))
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
        unmerged = twin.forward_features(x)
        merge_lora(twin)
        merge_ssf(twin)
        assert (twin.forward_features(x) - unmerged).abs().max() <= 1e-5
        unmerge_ssf(twin)
    assert all(torch.equal(t, reference[n]) for n, t in original.state_dict().items())
    assert twin.blocks[0].norm1.base.weight.data_ptr() == original.blocks[0].norm1.weight.data_ptr()
