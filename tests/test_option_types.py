"""Option values checked against their declared types (focusshot.option_types)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from focusshot.option_types import check_option_types, conforms
from focusshot.options import option


@dataclass(frozen=True)
class _Opts:
    lr: float = option(0.1, "a float")
    steps: int = option(3, "an int")
    on: bool = option(False, "a bool")
    region: str = option("box", "a str")
    grid: tuple[float, ...] = option((1.0, 2.0), "floats")
    pair: tuple[int, str] = option((1, "a"), "a pair")
    limit: int | None = option(None, "an int or None")
    mode: Literal["a", "b"] = option("a", "a literal")


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("lr", [1, 0.5, float("inf")], ["0.1", True, None]),
        ("steps", [0, -2], [1.5, "3", False]),
        ("on", [True, False], [1, "true"]),
        ("region", ["whole"], [3, None]),
        ("grid", [[1, 2.5], (), (3.0,)], ["1,2", [1, "x"], 2.0]),
        ("pair", [[2, "b"], (0, "")], [[1], [1, 2], ["a", "b"]]),
        ("limit", [None, 4], [4.0, "4"]),
        ("mode", ["a", "b"], ["c", 1]),
    ],
)
def test_values_of_each_type(key: str, good: list, bad: list) -> None:
    for value in good:
        check_option_types(_Opts, {key: value}, "m")
    for value in bad:
        with pytest.raises(ValueError, match=rf"option '{key}' of method 'm' must be"):
            check_option_types(_Opts, {key: value}, "m")


def test_unknown_names_are_left_to_the_caller() -> None:
    check_option_types(_Opts, {"nope": "x"})
    assert conforms({"a": 1}, dict[str, int]) and not conforms([1], dict[str, int])
