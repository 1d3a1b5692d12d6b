"""The fused path and the explicit (recording) path of Attention agree; the tap records shapes."""

import pytest
import torch

from focusshot.attention import Attention, RecordingError, record
from focusshot.backbones.vit import VisionTransformer, ViTConfig


def _bias(kind: str, b: int, h: int, n: int) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return None
    if kind == "float":
        return torch.randn(b, h, n, n, generator=g)
    if kind == "cls_row":  # FALIP-style: only the [CLS] row is biased, broadcast over heads
        bias = torch.zeros(b, 1, n, n)
        bias[:, :, 0] = torch.randn(b, 1, n, generator=g)
        return bias
    if kind == "causal_bool":
        return torch.ones(n, n, dtype=torch.bool).tril()
    raise AssertionError(kind)


@pytest.mark.parametrize("bias_kind", ["none", "float", "cls_row", "causal_bool"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_fast_path_equals_explicit_path(bias_kind: str, qkv_bias: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(32, 4, qkv_bias=qkv_bias).eval()
    x = torch.randn(3, 9, 32)
    bias = _bias(bias_kind, 3, 4, 9)
    fast = attn(x, bias)
    with record(attn, "probs", "logits", "head_out") as rec:
        slow = attn(x, bias)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert rec.get("probs").shape == (3, 4, 9, 9)
    assert rec.get("head_out").shape == (3, 4, 9, 8)
    torch.testing.assert_close(rec.get("probs").sum(-1), torch.ones(3, 4, 9))
    torch.testing.assert_close(rec.get("logits").softmax(-1), rec.get("probs"))


def test_bias_changes_the_cls_row_only() -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x = torch.randn(1, 5, 16)
    bias = _bias("cls_row", 1, 2, 5)
    with record(attn, "probs") as plain:
        attn(x)
    with record(attn, "probs") as biased:
        attn(x, bias)
    p, q = plain.get("probs"), biased.get("probs")
    torch.testing.assert_close(p[:, :, 1:], q[:, :, 1:])
    assert (p[:, :, 0] - q[:, :, 0]).abs().max() > 1e-3


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(32, 8, 32, 3, 4, 64)).eval()


def test_record_layers_and_block_inputs() -> None:
    model = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with record(model, "probs", "block_in", layers=[0, -1]) as rec:
        model.forward_features(x)
    assert rec.layers == [0, 2]
    assert rec.get("probs", 0).shape == (2, 4, 17, 17)
    # the block input of layer 0 is the embedded token sequence
    torch.testing.assert_close(rec.get("block_in", 0), model.embed(x))
    with pytest.raises(KeyError, match="layer 1 was not recorded"):
        rec.get("probs", 1)


def test_recording_restores_fast_path_and_calls_concatenate() -> None:
    model = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with record(model, "probs", layers=[-1]) as rec:
        model.forward_features(x[:1])
        model.forward_features(x[1:])
    assert len(rec.calls("probs")) == 2
    assert rec.get("probs").shape[0] == 2
    assert all(not a.tap.active for a in model.attention_modules())


def test_recording_nothing_raises() -> None:
    model = _tiny_vit()
    with pytest.raises(RecordingError, match="captured nothing"), record(model, "probs"):
        pass


def test_bad_kind_and_layer_raise() -> None:
    model = _tiny_vit()
    with pytest.raises(ValueError, match="unknown kind"), record(model, "attn"):
        pass
    with pytest.raises(ValueError, match="out of range"), record(model, "probs", layers=[5]):
        pass
    with (
        pytest.raises(RecordingError, match="no focusshot Attention"),
        record(torch.nn.Linear(2, 2), "probs"),
    ):
        pass


def test_gradients_reach_recorded_logits_and_block_inputs() -> None:
    model = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with record(model, "logits", "block_in", layers=[-1], grad=True) as rec:
        out = model.forward_features(x)
        loss = -rec.get("logits")[:, :, 0, 1:].logsumexp(-1).mean() + out.sum()
    loss.backward()
    assert rec.grad("logits").shape == (2, 4, 17, 17)
    assert rec.grad("block_in").shape == (2, 17, 32)
    assert rec.grad("logits").abs().sum() > 0
    # without grad=True, no gradient is kept
    with record(model, "probs", layers=[-1]) as plain:
        model.forward_features(x).sum().backward()
    with pytest.raises(RecordingError, match="no gradient"):
        plain.grad("probs")


def test_attention_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2, attn_drop=0.5)
    x = torch.randn(1, 6, 16)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    assert (attn(x) - attn(x)).abs().max() > 0


def test_fused_qkv_path_equals_separate_projections() -> None:
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        fused = attn(x)
    assert attn._fusable()
    torch.testing.assert_close(attn(x), fused, atol=1e-6, rtol=1e-6)  # with grad: separate GEMMs

    class Wrapped(torch.nn.Linear):  # stands in for an adapter around q: the fused path must step aside
        pass

    wrapped = Wrapped(32, 32)
    wrapped.load_state_dict(attn.q.state_dict())
    attn.q = wrapped
    assert not attn._fusable()
    torch.testing.assert_close(attn(x), fused, atol=1e-6, rtol=1e-6)
