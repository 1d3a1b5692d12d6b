"""The contract every head keeps: registry, purity, serialisation round trip, clear errors on bad input."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import focusshot.heads as heads
from focusshot.heads import FittedHead, HeadInputError, create_head, list_heads, load_fitted, save_fitted

ALL_HEADS = [
    "logistic",
    "metaoptnet",
    "nearest_neighbour",
    "protonet",
    "r2d2",
    "ridge",
    "svm",
    "tip_adapter",
    "tip_adapter_f",
    "zeroshot",
]
DIM, WAY = 6, 3
TEXT = torch.randn(WAY, 2, DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
KWARGS = {
    "zeroshot": {"text_embeddings": TEXT},
    "tip_adapter": {"text_embeddings": TEXT},
    "tip_adapter_f": {"text_embeddings": TEXT, "epochs": 2},
}
# heads that accept a class without support examples (their classes come from text)
TEXT_HEADS = {"zeroshot", "tip_adapter", "tip_adapter_f"}


def make(name: str):
    return create_head(name, **KWARGS.get(name, {}))


def test_registry_lists_every_head() -> None:
    names = list_heads()
    assert names == sorted(names)
    assert set(ALL_HEADS) <= set(names)


def test_unknown_name_lists_valid_heads() -> None:
    with pytest.raises(ValueError, match="unknown head 'resnet'") as info:
        create_head("resnet")
    for name in ALL_HEADS:
        assert name in str(info.value)


def test_unknown_argument_lists_valid_arguments() -> None:
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['lambda'\] for head 'ridge'") as info:
        create_head("ridge", **{"lambda": 1.0})
    assert "lam" in str(info.value) and "fit_intercept" in str(info.value)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_every_setting_has_help_text(name: str) -> None:
    cls = type(make(name))
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text in its field metadata"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("protonet", {"distance": "manhattan"}),
        ("nearest_neighbour", {"metric": "dot"}),
        ("svm", {"loss": "log"}),
        ("svm", {"C": 0.0}),
        ("metaoptnet", {"C": -1.0}),
        ("logistic", {"C_grid": ()}),
        ("ridge", {"solver": "qr"}),
        ("zeroshot", {"text_embeddings": torch.zeros(3)}),
    ],
)
def test_invalid_values_fail_at_construction(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        create_head(name, **kwargs)


def test_heads_never_import_backbones() -> None:
    # a static check of every import statement, lazy ones included (the top-level package itself
    # imports backbones, so a sys.modules check cannot tell who pulled them in)
    root = Path(heads.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call):  # importlib.import_module("...") and the like
                names = [
                    a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ]
            assert not any("backbones" in n for n in names), f"{path.name} imports {names}"


@pytest.fixture(scope="module")
def episode():
    g = torch.Generator().manual_seed(0)
    means = 2 * torch.randn(WAY, DIM, generator=g, dtype=torch.float64)
    ys = torch.arange(WAY).repeat(3)
    xs = means[ys] + torch.randn(len(ys), DIM, generator=g, dtype=torch.float64)
    yq = torch.arange(WAY).repeat(2)
    xq = means[yq] + torch.randn(len(yq), DIM, generator=g, dtype=torch.float64)
    return xs, ys, xq, yq


@pytest.mark.parametrize("name", ALL_HEADS)
def test_fit_is_pure_and_shapes_hold(name: str, episode) -> None:
    xs, ys, xq, _ = episode
    head = make(name)
    before = repr(head)
    xs_copy, ys_copy = xs.clone(), ys.clone()
    a = head.fit(xs, ys)
    b = head.fit(xs, ys)
    assert repr(head) == before  # the head holds settings only
    assert torch.equal(xs, xs_copy) and torch.equal(ys, ys_copy)  # inputs untouched
    assert isinstance(a, FittedHead) and dataclasses.is_dataclass(a)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.__setattr__(dataclasses.fields(a)[0].name, None)
    logits = a.logits(xq)
    assert logits.shape == (len(xq), WAY) and a.num_classes == WAY and a.dim == DIM
    torch.testing.assert_close(logits, b.logits(xq))
    assert a.predict(xq).shape == (len(xq),)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_serialisation_round_trip(name: str, episode, tmp_path: Path) -> None:
    xs, ys, xq, _ = episode
    fitted = make(name).fit(xs, ys)
    state, config = fitted.state_dict(), fitted.config()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    json.dumps(config)  # JSON-able
    rebuilt = FittedHead.from_state(state, config)
    assert type(rebuilt) is type(fitted)
    torch.testing.assert_close(rebuilt.logits(xq), fitted.logits(xq), rtol=0, atol=0)

    path = tmp_path / f"{name}.safetensors"
    save_fitted(fitted, path)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    loaded = load_fitted(path)
    torch.testing.assert_close(loaded.logits(xq), fitted.logits(xq), rtol=0, atol=0)
    assert loaded.config() == config


def test_batched_metaoptnet_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(4, 6, DIM, generator=g, dtype=torch.float64)
    ys = torch.arange(WAY).repeat(2).expand(4, -1)
    xq = torch.randn(4, 5, DIM, generator=g, dtype=torch.float64)
    fitted = create_head("metaoptnet").fit(xs, ys)
    save_fitted(fitted, tmp_path / "m.safetensors")
    torch.testing.assert_close(load_fitted(tmp_path / "m.safetensors").logits(xq), fitted.logits(xq))


def test_from_state_rejects_mismatched_state(episode) -> None:
    xs, ys, _, _ = episode
    fitted = create_head("protonet").fit(xs, ys)
    with pytest.raises(ValueError, match="missing"):
        FittedHead.from_state({}, fitted.config())
    with pytest.raises(ValueError, match="unknown fitted head type"):
        FittedHead.from_state(fitted.state_dict(), {**fitted.config(), "type": "Nope"})


def test_load_rejects_foreign_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a fitted head"):
        load_fitted(tmp_path / "x.safetensors")


@pytest.mark.parametrize("name", ALL_HEADS)
def test_labels_out_of_range(name: str, episode) -> None:
    xs, ys, _, _ = episode
    bad = ys.clone()
    bad[0] = WAY + 2
    with pytest.raises(HeadInputError, match="out of range"):
        make(name).fit(xs, bad, num_classes=WAY)
    bad[0] = -1
    with pytest.raises(HeadInputError, match="label -1 is out of range"):
        make(name).fit(xs, bad)


@pytest.mark.parametrize("name", sorted(set(ALL_HEADS) - TEXT_HEADS))
def test_class_without_support_example(name: str, episode) -> None:
    xs, ys, _, _ = episode
    keep = ys != 1
    with pytest.raises(HeadInputError, match=r"class\(es\) \[1\] have no support example"):
        make(name).fit(xs[keep], ys[keep])


@pytest.mark.parametrize("name", ALL_HEADS)
def test_query_dimension_mismatch(name: str, episode) -> None:
    xs, ys, xq, _ = episode
    fitted = make(name).fit(xs, ys)
    with pytest.raises(HeadInputError, match=f"dimension {DIM + 1}, but the head was fitted on D={DIM}"):
        fitted.logits(torch.randn(2, DIM + 1, dtype=torch.float64))
    with pytest.raises(HeadInputError, match="shape"):
        fitted.logits(xq[0])


@pytest.mark.parametrize("name", ALL_HEADS)
def test_malformed_support(name: str, episode) -> None:
    xs, ys, _, _ = episode
    head = make(name)
    with pytest.raises(HeadInputError, match="integer"):
        head.fit(xs, ys.double())
    with pytest.raises(HeadInputError, match="to match features"):
        head.fit(xs, ys[:-1])
    with pytest.raises(HeadInputError, match="NaN"):
        head.fit(torch.full_like(xs, float("nan")), ys)
    with pytest.raises(HeadInputError, match="floating-point"):
        head.fit(xs.long(), ys)


def test_validation_split_must_be_complete(episode) -> None:
    xs, ys, xq, yq = episode
    with pytest.raises(HeadInputError, match="both val_features and val_labels"):
        create_head("logistic").fit(xs, ys, val_features=xq)
    with pytest.raises(HeadInputError, match="validation features have dimension"):
        create_head("logistic").fit(xs, ys, val_features=xq[:, :-1], val_labels=yq)
