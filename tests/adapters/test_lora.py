"""LoRA (Hu et al., ICLR 2022): identity at init, merge == unmerged, frozen weights stay, == peft."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from focusshot.adapters import (
    LoRAConfig,
    LoRALinear,
    freeze,
    inject_lora,
    lora_layers,
    merge_lora,
    unmerge_lora,
)
from focusshot.attention.record import record
from tests.adapters.conftest import images, max_diff, randomise, tiny

BACKBONES = ["tiny-vit", "tiny-clip-vit", "tiny-dinov2"]


def _lora_b(model: nn.Module) -> list[nn.Parameter]:
    return [layer.lora_B for _, layer in lora_layers(model)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank": 0},
        {"rank": 2.5},
        {"rank": True},
        {"alpha": 0.0},
        {"alpha": float("nan")},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"targets": ()},
        {"targets": ("",)},
    ],
)
def test_bad_config_values_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="LoRAConfig"):
        LoRAConfig(**kwargs)


def test_config_defaults_and_scaling() -> None:
    cfg = LoRAConfig(rank=8, alpha=16.0, targets="*.q")  # type: ignore[arg-type]
    assert cfg.scaling == 2.0 and cfg.targets == ("*.q",)
    assert LoRAConfig().targets == ("*.attn.q", "*.attn.v")


@pytest.mark.parametrize("name", BACKBONES)
def test_zero_initialised_lora_leaves_outputs_unchanged(name: str) -> None:
    x = images()
    model = tiny(name)
    # grad mode: q, k, v run as three GEMMs with and without the adapter (inference fuses plain Linears)
    with torch.enable_grad():
        before = model.forward_features(x)
        names = inject_lora(model, LoRAConfig(rank=2))
        after = model.forward_features(x)
    assert len(names) == (8 if name == "tiny-clip-vit" else 4)  # CLIP: the text tower too
    assert torch.equal(before, after)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-clip-vit"])
def test_merged_equals_unmerged_and_unmerge_restores_weights(name: str) -> None:
    x = images()
    model = tiny(name)
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    inject_lora(model, LoRAConfig(rank=3, alpha=6.0, targets=("*.attn.q", "*.attn.v", "*.mlp.fc1")))
    randomise(_lora_b(model))
    with torch.no_grad():
        unmerged = model.forward_features(x)
        text = model.encode_text(["a red circle", "a dog"]) if name == "tiny-clip-vit" else None
        merged_names = merge_lora(model)
        assert all(layer.merged for _, layer in lora_layers(model))
        merged = model.forward_features(x)
        assert max_diff(merged, unmerged) <= 1e-5
        if text is not None:
            assert max_diff(model.encode_text(["a red circle", "a dog"]), text) <= 1e-5
        merge_lora(model)  # a second merge does nothing
        assert max_diff(model.forward_features(x), unmerged) <= 1e-5
        assert unmerge_lora(model) == merged_names
        unmerge_lora(model)  # a second unmerge does nothing
        assert max_diff(model.forward_features(x), unmerged) <= 1e-5
    for n, layer in lora_layers(model):
        assert max_diff(layer.base.weight, originals[f"{n}.weight"]) <= 1e-6


def test_lora_linear_forward_formula_and_pass_through_properties() -> None:
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=3.0)
    randomise([layer.lora_B])
    x = torch.randn(4, 7, 6)
    want = base(x) + 1.5 * (x @ layer.lora_A.t() @ layer.lora_B.t())
    assert max_diff(layer(x), want) <= 1e-6
    assert layer.weight is base.weight and layer.bias is base.bias
    assert (layer.in_features, layer.out_features) == (6, 5)
    assert layer.lora_A.shape == (2, 6) and layer.lora_B.shape == (5, 2)
    assert not base.weight.requires_grad and layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert max_diff(layer.delta_weight(), 1.5 * layer.lora_B @ layer.lora_A) <= 1e-7


def test_lora_a_init_matches_nn_linear_kaiming_bound() -> None:
    layer = LoRALinear(nn.Linear(64, 8), rank=16)
    bound = 1.0 / 64**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in=64
    assert float(layer.lora_A.detach().abs().max()) <= bound
    assert float(layer.lora_A.detach().abs().max()) > 0.8 * bound
    assert torch.count_nonzero(layer.lora_B) == 0


def test_dropout_only_acts_in_training() -> None:
    layer = LoRALinear(nn.Linear(8, 8), rank=2, dropout=0.5)
    randomise([layer.lora_B])
    x = torch.randn(16, 8)
    layer.eval()
    plain = layer.base(x) + layer.scaling * (x @ layer.lora_A.t() @ layer.lora_B.t())
    assert max_diff(layer(x), plain) <= 1e-6
    layer.train()
    assert max_diff(layer(x), plain) > 1e-4


def test_frozen_weights_stay_bit_identical_while_lora_trains() -> None:
    x = images(4)
    model = tiny("tiny-vit")
    freeze(model)
    inject_lora(model, LoRAConfig(rank=2, dropout=0.1))
    frozen = {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 8
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model.forward_features(x).pow(2).mean().backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())
    assert all(not torch.equal(model.get_parameter(n), t) for n, t in lora_before.items())


def test_init_is_deterministic_given_a_generator() -> None:
    def a_values(seed: int) -> list[torch.Tensor]:
        model = tiny("tiny-vit")
        torch.manual_seed(seed + 100)  # the global RNG must not matter
        inject_lora(model, LoRAConfig(rank=2), generator=torch.Generator().manual_seed(seed))
        return [layer.lora_A.detach() for _, layer in lora_layers(model)]

    first, again, other = a_values(5), a_values(5), a_values(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # one stream, layers get different values


def test_clip_patterns_choose_the_tower() -> None:
    clip = tiny("tiny-clip-vit")
    names = inject_lora(clip, LoRAConfig(targets=("visual.*.attn.q", "visual.*.attn.v")))
    assert names == [f"visual.blocks.{i}.attn.{p}" for i in range(2) for p in ("q", "v")]
    text_only = inject_lora(tiny("tiny-clip-vit").text, LoRAConfig())
    assert text_only == [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q", "v")]


def test_attention_recording_still_works_with_lora() -> None:
    model = tiny("tiny-vit")
    inject_lora(model, LoRAConfig())
    randomise(_lora_b(model))
    x = images()
    with torch.no_grad():
        fused = model.forward_features(x)
        with record(model, "probs", layers=[-1]) as rec:
            explicit = model.forward_features(x)
    assert rec.get("probs").shape == (2, 4, 17, 17)
    assert max_diff(fused, explicit) <= 1e-5


# --- the same numbers as peft, on a table of toy module layouts (peft's TEST_CASES idea) ---


class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.q(x) @ self.k(x).transpose(-1, -2)).softmax(-1)
        return self.out(w @ self.v(x))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(10, 12)
        self.layers = nn.ModuleList(_Attn(12) for _ in range(2))
        self.heads = nn.ModuleDict({"cls": nn.Linear(12, 3, bias=False), "aux": nn.Linear(12, 2)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = x + layer(x)
        return torch.cat([self.heads["cls"](x), self.heads["aux"](x)], dim=-1)


class _ConvMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(10, 10, 1)
        self.lin0 = nn.Linear(10, 20)
        self.lin1 = nn.Linear(20, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.lin1(torch.relu(self.lin0(x)))


TOY_CASES: list[tuple[str, Callable[[], nn.Module], tuple[str, ...], list[str]]] = [
    ("mlp-one", lambda: nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4)), ("0",), ["0"]),
    ("mlp-all", lambda: nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4)), ("*",), ["0", "2"]),
    ("attn-qv", _Net, ("*.q", "*.v"), ["layers.0.q", "layers.0.v", "layers.1.q", "layers.1.v"]),
    ("attn-layer1", _Net, ("layers.1.*",), ["layers.1.q", "layers.1.k", "layers.1.v", "layers.1.out"]),
    ("moduledict-nobias", _Net, ("heads.cls", "embed"), ["embed", "heads.cls"]),
    ("conv-skipped", _ConvMlp, ("*",), ["lin0", "lin1"]),
]


@pytest.mark.parametrize(
    ("factory", "targets", "expected"), [c[1:] for c in TOY_CASES], ids=[c[0] for c in TOY_CASES]
)
def test_toy_models_match_peft(
    factory: Callable[[], nn.Module], targets: tuple[str, ...], expected: list[str]
) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ours = factory().eval()
    theirs = copy.deepcopy(ours)
    x = torch.randn(3, 5, 10)
    before = ours(x)
    names = inject_lora(ours, LoRAConfig(rank=3, alpha=5.0, targets=targets))
    assert names == expected
    # B = 0: nothing changed yet (to rounding: the sum can hand the next layer other strides)
    assert max_diff(ours(x), before) <= 1e-6
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=3, lora_alpha=5.0, target_modules=names), theirs)
    randomise(_lora_b(ours), std=0.3)
    with torch.no_grad():
        for name, layer in lora_layers(ours):
            peft_layer = theirs.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            assert peft_layer.scaling["default"] == layer.scaling
        out_ours, out_theirs = ours(x), theirs(x)
        assert max_diff(out_ours, before) > 1e-3  # the adapters do something
        assert max_diff(out_ours, out_theirs) <= 1e-6
        merge_lora(ours)
        for name, layer in lora_layers(ours):
            peft_layer = theirs.get_submodule(name)
            peft_layer.merge()
            assert max_diff(layer.base.weight, peft_layer.base_layer.weight) <= 1e-6
        assert max_diff(ours(x), theirs(x)) <= 1e-6
