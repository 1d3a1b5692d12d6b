"""Options are typed dataclasses whose fields are written out with ``option``; shared fields come
by inheritance (the tuning recipes', FORT's, LoRA's), and a component's validation (an adapter's,
the training loop's) runs when the method is created (before any extraction)."""

from __future__ import annotations

import dataclasses

import pytest

from focusshot.adapters.lora import LoRAConfig
from focusshot.adapters.vpt import VPTConfig
from focusshot.cli import main
from focusshot.methods.base import create_method
from focusshot.methods.clip_lora import CLIPLoRAOptions
from focusshot.methods.finetune import FinetuneOptions
from focusshot.methods.fort import FORTLoRAOptions
from focusshot.methods.tuning import LoRAOptions, VPTOptions
from focusshot.options import Checked, check_component, option, option_help
from focusshot.training.loop import TrainConfig


def _help(cls: type) -> dict[str, str]:
    return {name: text for name, _, text in option_help(cls)}


def test_lora_options_take_the_adapters_fields_and_checks() -> None:
    lora, clip = _help(LoRAOptions), _help(CLIPLoRAOptions)
    source = _help(LoRAConfig)
    for name in ("rank", "alpha", "dropout"):
        assert lora[name] == clip[name] == source[name]  # one help text, from the adapter
    assert LoRAOptions().rank == 4 and LoRAOptions().alpha == 1.0  # FORT's defaults
    assert CLIPLoRAOptions().rank == 2 and CLIPLoRAOptions().dropout == 0.25  # CLIP-LoRA's
    with pytest.raises(ValueError, match="rank"):
        create_method("lora", rank=0)
    with pytest.raises(ValueError, match="dropout"):
        create_method("clip_lora", dropout=1.5)
    with pytest.raises(ValueError, match="rank"):
        create_method("lora+fort", rank=0)


def test_tuning_options_take_the_training_loops_fields() -> None:
    train = _help(TrainConfig)
    mine = _help(FinetuneOptions)
    for name in ("lr", "warmup_steps", "label_smoothing"):
        assert mine[name] == train[name]
    assert "number of classes" in mine["batch_size"]  # its 0 means something else: own help
    with pytest.raises(ValueError, match="lr"):
        create_method("ft", lr=-1.0)  # TrainConfig's check, at creation
    assert _help(VPTOptions)["prompt_dropout"] == _help(VPTConfig)["dropout"]  # renamed, same help


def test_bad_option_fails_before_any_extraction(tmp_path, monkeypatch, capsys) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(cache))
    args = ["evaluate", "--backbone", "tiny-vit", "--random-weights", "--data", "world:clutter?per_class=2"]
    assert main([*args, "--method", "lora", "--set", "lora.rank=0", "--output", str(tmp_path / "r")]) == 2
    assert "rank" in capsys.readouterr().err
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))


def test_mixins_add_fields_in_order_and_chain_their_checks() -> None:
    @dataclasses.dataclass(frozen=True)
    class Source:
        size: int = option(3, "how big")

        def __post_init__(self) -> None:
            if self.size < 1:
                raise ValueError("size must be >= 1")

    @dataclasses.dataclass(frozen=True)
    class Base(Checked):
        own: str = option("x", "mine")

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.own:
                raise ValueError("own must not be empty")

    @dataclasses.dataclass(frozen=True)
    class Sized(Checked):
        size: int = option(3, "how big")

        def __post_init__(self) -> None:
            super().__post_init__()
            check_component(self, ("size",), lambda: Source(self.size))

    @dataclasses.dataclass(frozen=True)
    class Mine(Sized, Base):
        own: str = option("y", "mine, here")  # a new default keeps the field's place

    assert [name for name, _, _ in option_help(Mine)] == ["own", "size"]
    assert _help(Mine) == {"own": "mine, here", "size": "how big"}
    assert (Mine().own, Mine().size) == ("y", 3)
    with pytest.raises(ValueError, match=r"Mine \(size\): size must be >= 1"):
        Mine(size=0)
    with pytest.raises(ValueError, match="own must not be empty"):
        Mine(own="")


def test_fort_options_follow_the_recipes_and_keep_its_defaults() -> None:
    names = [name for name, _, _ in option_help(FORTLoRAOptions)]
    assert names == [name for name, _, _ in option_help(LoRAOptions)] + [
        "fort_alpha",
        "tau",
        "top",
        "lamb",
        "variant",
        "sign",
        "rows",
        "prompts",
    ]
    o = FORTLoRAOptions()
    assert (o.lr, o.temperature, o.rank, o.fort_alpha) == (5e-3, 20.0, 4, 0.5)
    with pytest.raises(ValueError, match="box"):
        FORTLoRAOptions(prompts="box", views=2)
