"""Queue-time checks of widget values that ComfyUI 0.3.75 lets through.

ComfyUI range-checks a number only with ``value < min`` / ``value > max``, which NaN passes (JSON ``NaN`` or
the string "nan"), and skips the range check of every input a node's ``validate_inputs`` declares. So each
node declares its FLOAT inputs (and any it checks itself) and calls :func:`check_numbers`, which applies the
min/max of the node's own schema and refuses NaN, infinities and non-numbers, naming the input. Nor does it
check V3 combo values against their options; :func:`check_choices` does, for combos a node passes on to
ComfyUI code that would not complain itself (an unknown scheduler falls back silently).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from comfy_api.latest import io


@cache
def _bounds(node: type) -> dict[str, tuple[float | None, float | None]]:
    """input id -> (min, max) of every Int/Float input in ``node``'s schema."""
    schema = node.define_schema()
    return {item.id: (item.min, item.max) for item in schema.inputs
            if isinstance(item, (io.Int.Input, io.Float.Input))}


@cache
def _options(node: type) -> dict[str, list[Any]]:
    return {item.id: list(item.options) for item in node.define_schema().inputs if isinstance(item, io.Combo.Input)}


def check_choices(node: type, **values: Any) -> bool | str:
    """True, or the first value among ``values`` (input id -> value) that is not one of its combo's options."""
    options = _options(node)
    for name, value in values.items():
        if value is not None and value not in options[name]:
            shown = ", ".join(map(str, options[name][:12])) + (", ..." if len(options[name]) > 12 else "")
            return f"{name}: {value!r:.60} is not one of the choices; use one of {shown}."
    return True


def number_problem(name: str, value: Any, low: float | None, high: float | None) -> str | None:
    """Why ``value`` is not a usable number in [low, high] (naming ``name``), or None when it is."""
    if value is None:  # linked from another node: known only at execution
        return None
    span = f"[{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name}: {value!r:.60} is not a number; give a number in {span}."
    if not math.isfinite(value):
        return f"{name}: {value} is not a finite number; give a number in {span}."
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{name}: {value} is outside {span}; give a number in that range."
    return None


def check_numbers(node: type, **values: Any) -> bool | str:
    """True, or the first problem among ``values`` (input id -> value) against ``node``'s schema bounds."""
    bounds = _bounds(node)
    for name, value in values.items():
        low, high = bounds[name]
        problem = number_problem(name, value, low, high)
        if problem:
            return problem
    return True
