"""Helpers shared by the checkpoint converters (DESIGN principle 4: weights are converted, not forked)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

#: Key-renaming rules: ``(regex pattern, replacement)`` applied in order.
Rules = list[tuple[str, str]]


def rename(state_dict: Mapping[str, Tensor], rules: Rules) -> dict[str, Tensor]:
    """Apply every ``(pattern, replacement)`` rule to every key, in order; values are kept."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def strip_prefixes(state_dict: dict[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Remove any of ``prefixes`` (repeatedly) from the front of every key."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key = key[len(p) :]
                    changed = True
        out[key] = value
    return out


def load_checked(module: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """Load ``state_dict`` into ``module`` strictly; on mismatch raise listing the keys.

    Raises:
        ValueError: naming ``what`` with the missing and unexpected keys, and keys whose
            shapes differ.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong:
        parts = [f"{what} does not match the model"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if wrong:
            parts.append(f"shape mismatches ({len(wrong)}): {wrong}")
        raise ValueError("; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
