"""``world:<suite>?key=value&...`` specs: a FocusWorld suite as a data source, optionally split
into train/val/test (``split``) and with the distractors' boxes (``box=distractor``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from focusshot.data.labelled import LabelledImages
from focusshot.data.splitting import (
    WORLD_SPLIT_FRACTIONS,
    _split_counts,
    _too_few_message,
    check_fractions,
    split_per_class,
)

__all__ = ["open_world_source"]

_SPLIT_ON: frozenset[str] = frozenset({"1", "true", "yes", "on"})
_SPLIT_OFF: frozenset[str] = frozenset({"0", "false", "no", "off"})


def _parse_split_option(value: str, spec: str) -> tuple[float, float, float] | None:
    """The ``split`` option of a world spec: ``None`` (no split) or the train/val/test fractions."""
    text = value.strip().lower()
    if text in _SPLIT_ON:
        return WORLD_SPLIT_FRACTIONS
    if text in _SPLIT_OFF:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(parts) != 3 or not numbers:
        raise ValueError(
            f"{spec}: option 'split' takes 1 (train/val/test fractions "
            f"{'/'.join(f'{f:g}' for f in WORLD_SPLIT_FRACTIONS)} of each class), 0 (no split) or three "
            f"fractions train,val,test summing to 1 such as split=0.6,0.2,0.2; got {value!r}"
        )
    return check_fractions(numbers, f"{spec}: option 'split'")


def open_world_source(spec: str) -> LabelledImages | dict[str, LabelledImages]:
    """Open a ``world:`` spec: the suite itself, or with ``split`` its train/val/test splits."""
    from focusshot.data.world import (
        SPEC_OPTIONS,
        open_world,
        parse_world_spec,
        suite_classes,
        with_distractor_boxes,
    )

    name, _, query = spec.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(
            f"{spec}: malformed options {query!r}; write world:<suite>?key=value&key=value"
        ) from None
    valid = (*SPEC_OPTIONS, "split", "box")
    unknown = [key for key, _ in pairs if key not in valid]
    if unknown:
        raise ValueError(f"{spec}: unknown option {unknown[0]!r}; valid options: {', '.join(valid)}")
    split_values = [value for key, value in pairs if key == "split"]
    if len(split_values) > 1:
        raise ValueError(f"{spec}: option 'split' is given {len(split_values)} times; give it once")
    fractions = _parse_split_option(split_values[0], spec) if split_values else None
    box_values = [value for key, value in pairs if key == "box"]
    if len(box_values) > 1 or (box_values and box_values[0] not in ("target", "distractor")):
        raise ValueError(f"{spec}: option 'box' is target (default) or distractor, given once")
    rest = [(key, value) for key, value in pairs if key not in ("split", "box")]
    base = f"{name}?{urlencode(rest)}" if rest else name
    if fractions is not None:  # fail before generating a suite that cannot be split
        suite, options = parse_world_spec(base)
        per_class = options["per_class"]
        if per_class >= 1 and min(_split_counts(per_class, fractions)) < 1:
            raise ValueError(_too_few_message(spec, suite_classes(suite)[0].name, per_class, fractions))
    data = open_world(base)
    if box_values and box_values[0] == "distractor":
        data = with_distractor_boxes(data)
    if fractions is None:
        return data
    return split_per_class(data, fractions, where=spec)
