"""SSF (Lian et al., NeurIPS 2022): identity at std 0, merged == unmerged, exact unmerge, frozen base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from focusshot.adapters import (
    SSF,
    AdapterError,
    SSFConfig,
    freeze,
    inject_ssf,
    merge_ssf,
    ssf_layers,
    unmerge_ssf,
)
from focusshot.attention.record import record
from tests.adapters.conftest import images, max_diff, randomise, tiny

VIT_TARGETS = [
    f"blocks.{i}.{m}"
    for i in range(2)
    for m in ("norm1", "attn.q", "attn.k", "attn.v", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
] + ["norm"]


@pytest.mark.parametrize(
    "kwargs", [{"init_std": -0.1}, {"init_std": float("inf")}, {"targets": ()}, {"targets": (3,)}]
)
def test_bad_config_values_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="SSFConfig"):
        SSFConfig(**kwargs)


def test_default_targets_cover_every_linear_and_norm_of_the_blocks() -> None:
    assert inject_ssf(tiny("tiny-vit")) == VIT_TARGETS
    assert inject_ssf(tiny("tiny-clip-vit").visual) == VIT_TARGETS  # ln_pre (norm_pre) and proj stay plain
    clip_names = inject_ssf(tiny("tiny-clip-vit"))
    assert "visual.norm" in clip_names and "text.norm" in clip_names and "visual.norm_pre" not in clip_names


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-clip-vit", "tiny-dinov2"])
def test_identity_at_zero_std_leaves_outputs_unchanged(name: str) -> None:
    x = images()
    model = tiny(name)
    with torch.enable_grad():  # three q/k/v GEMMs with and without the wrappers
        before = model.forward_features(x)
        inject_ssf(model, SSFConfig(init_std=0.0))
        after = model.forward_features(x)
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    "targets",
    [("*.attn.*", "*.mlp.fc*"), ("*.norm1", "*.norm2", "*norm"), SSFConfig().targets],
    ids=["linear", "layernorm", "default"],
)
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-clip-vit"])
def test_merged_equals_unmerged_and_unmerge_is_exact(name: str, targets: tuple[str, ...]) -> None:
    x = images()
    model = tiny(name)
    originals = {n: t.clone() for n, t in model.state_dict().items()}
    names = inject_ssf(model, SSFConfig(targets=targets, init_std=0.2))
    with torch.no_grad():
        unmerged = model.forward_features(x)
        assert merge_ssf(model) == names
        merge_ssf(model)  # merging twice does nothing
        assert max_diff(model.forward_features(x), unmerged) <= 1e-5
        unmerge_ssf(model)
        unmerge_ssf(model)  # so does unmerging twice
        assert max_diff(model.forward_features(x), unmerged) <= 1e-6
    for n, layer in ssf_layers(model):
        assert torch.equal(layer.base.weight, originals[f"{n}.weight"])
        assert torch.equal(layer.base.bias, originals[f"{n}.bias"])


def test_ssf_forward_formula_and_shapes() -> None:
    lin = SSF(nn.Linear(6, 4), init_std=0.1)
    norm = SSF(nn.LayerNorm(6), init_std=0.1)
    x = torch.randn(2, 3, 6)
    assert lin.scale.shape == (4,) and norm.shift.shape == (6,)
    assert max_diff(lin(x), lin.base(x) * lin.scale + lin.shift) == 0.0
    assert max_diff(norm(x), norm.base(x) * norm.scale + norm.shift) == 0.0
    assert (lin.in_features, lin.out_features, norm.normalized_shape) == (6, 4, (6,))
    assert lin.weight is lin.base.weight and norm.bias is norm.base.bias
    with pytest.raises(AttributeError):
        _ = norm.in_features


def test_merge_into_a_linear_without_bias_adds_one_and_unmerge_removes_it() -> None:
    layer = SSF(nn.Linear(5, 3, bias=False), init_std=0.3)
    x = torch.randn(4, 5)
    with torch.no_grad():
        want = layer(x)
        layer.merge()
        assert isinstance(layer.base.bias, nn.Parameter)
        assert max_diff(layer(x), want) <= 1e-6
        layer.unmerge()
    assert layer.base.bias is None
    assert max_diff(layer(x), want) <= 1e-6


def test_layernorm_without_affine_runs_but_cannot_merge() -> None:
    layer = SSF(nn.LayerNorm(6, elementwise_affine=False), init_std=0.1)
    x = torch.randn(2, 6)
    assert max_diff(layer(x), nn.functional.layer_norm(x, (6,)) * layer.scale + layer.shift) <= 1e-6
    with pytest.raises(AdapterError, match="without elementwise_affine"):
        layer.merge()
    assert not layer.merged


def test_frozen_weights_stay_bit_identical_while_ssf_trains() -> None:
    x = images(4)
    model = tiny("tiny-dinov2")
    freeze(model)
    inject_ssf(model)
    frozen = {n: t.clone() for n, t in model.state_dict().items() if not n.endswith(("scale", "shift"))}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".scale", ".shift")) for n in trainable)
    start = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model.forward_features(x).pow(2).mean().backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())
    assert all(not torch.equal(p, start[n]) for n, p in trainable.items())


def test_init_is_deterministic_given_a_generator() -> None:
    def values(seed: int) -> list[torch.Tensor]:
        model = tiny("tiny-vit")
        torch.manual_seed(seed + 100)
        inject_ssf(model, SSFConfig(init_std=0.02), generator=torch.Generator().manual_seed(seed))
        return [t.detach() for _, layer in ssf_layers(model) for t in (layer.scale, layer.shift)]

    first, again, other = values(1), values(1), values(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    scales = torch.cat(first[0::2])
    assert abs(float(scales.mean()) - 1.0) < 0.01 and 0.01 < float(scales.std()) < 0.03


def test_recording_sees_the_ssf_adapted_attention() -> None:
    model = tiny("tiny-vit")
    inject_ssf(model, SSFConfig(init_std=0.0))
    layers = ssf_layers(model)
    randomise([layer.shift for _, layer in layers], std=0.5)
    x = images()
    with torch.no_grad():
        with record(model, "logits", layers=[0]) as rec:
            model.forward_features(x)
        merge_ssf(model)
        with record(model, "logits", layers=[0]) as rec_merged:
            model.forward_features(x)
    assert max_diff(rec.get("logits", 0), rec_merged.get("logits", 0)) <= 1e-5
