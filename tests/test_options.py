"""One declaration per option: ``option``/``takes`` compose a component's fields into a method's
options, with the component's validation run when the method is created (before any extraction)."""

from __future__ import annotations

import dataclasses

import pytest

from focusshot.adapters.lora import LoRAConfig
from focusshot.adapters.vpt import VPTConfig
from focusshot.cli import main
from focusshot.methods.base import create_method
from focusshot.methods.clip_lora import CLIPLoRAOptions
from focusshot.methods.finetune import FinetuneOptions
from focusshot.methods.tuning import LoRAOptions, VPTOptions
from focusshot.options import KEEP, Take, option, option_help, takes
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


def test_takes_keeps_renames_and_checks() -> None:
    @dataclasses.dataclass
    class Source:
        size: int = option(3, "how big")
        rate: float = option(0.5, "how fast")

        def __post_init__(self) -> None:
            if self.size < 1:
                raise ValueError("size must be >= 1")

    @dataclasses.dataclass(frozen=True)
    @takes(Source, size=KEEP, speed=Take(0.9, source="rate"))
    class Mine:
        own: str = option("x", "mine")

    m = Mine()
    assert (m.size, m.speed, m.own) == (3, 0.9, "x")
    assert _help(Mine) == {"size": "how big", "speed": "how fast", "own": "mine"}
    with pytest.raises(ValueError, match="size must be >= 1"):
        Mine(size=0)
    with pytest.raises(TypeError, match="no field"):
        takes(Source, nope=1)(type("X", (), {}))
