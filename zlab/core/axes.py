"""Sweep axes: their names, the range syntax, and checking each value against the model's schema.

Pure functions. An axis is a name (`lora1_scale`, `seed`, `size`, `prompt`, …) and a list of values,
written as a list, a scalar, or a range string:

    "0-1.5 [4]"    four evenly spaced values, both ends included  → 0, 0.5, 1, 1.5
    "0-1 (+0.25)"  from 0 in steps of 0.25, the end included when a step lands on it

`prompt_sr` (and `prompt_sr2`, `prompt_sr3`, … for several at once) is a search/replace over the prompt,
as in A1111's X/Y/Z plot: its first value is the text searched for (and its own cell keeps the prompt as
written), every other value replaces it, e.g. `prompt_sr: [TRIGGER, t3chnic4lly, ""]`.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from zlab.core.request import (
    MAX_LORAS,
    SEED_RANGE,
    SIZE_RANGE,
    SIZE_STEP,
    check_int,
    check_path,
    check_scale,
    check_size,
)
from zlab.errors import ValidationError

LORA_AXIS = re.compile(r"^lora([1-9])_(scale|path)$")
SR_AXIS = re.compile(r"^prompt_sr([2-9]?)$")
AXIS_NAMES = (
    "prompt",
    "seed",
    "size",
    "width",
    "height",
    *(f"lora{i}_{part}" for i in range(1, MAX_LORAS + 1) for part in ("scale", "path")),
    "prompt_sr",
)
_NUMBER = r"-?\d+(?:\.\d+)?"
_RANGE = re.compile(
    rf"^\s*(?P<a>{_NUMBER})\s*-\s*(?P<b>{_NUMBER})\s*"
    rf"(?:\[\s*(?P<n>\d+)\s*\]|\(\s*\+\s*(?P<step>{_NUMBER})\s*\))\s*$"
)
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
MAX_AXIS_VALUES = 10_000
RANGE_SYNTAX = 'a list, a number, "a-b [n]" (n evenly spaced) or "a-b (+s)" (step s)'


def check_axis_name(name: Any, lora_count: int) -> None:
    """Known axis, and for `loraN_*` a LoRA the base request actually has."""
    if not isinstance(name, str) or (name not in AXIS_NAMES and not LORA_AXIS.match(name) and not SR_AXIS.match(name)):
        close = difflib.get_close_matches(str(name), AXIS_NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else ""
        raise ValidationError("axes", name, "one of " + ", ".join(AXIS_NAMES), hint)
    match = LORA_AXIS.match(name)
    if match and int(match.group(1)) > lora_count:
        index = int(match.group(1))
        if index > MAX_LORAS:
            raise ValidationError("axes", name, f"lora1_… to lora{MAX_LORAS}_… (the model takes {MAX_LORAS} LoRAs)")
        have = f"{lora_count} LoRA" + ("" if lora_count == 1 else "s")
        raise ValidationError(
            name,
            f"LoRA #{index}",
            f"an axis on the base request's {have} (loraN_… with N ≤ {lora_count})",
            f"add a LoRA #{index} under 'loras:' to sweep it",
        )


def clean_number(value: float, digits: int = 6) -> float | int:
    """0.1 + 0.2 → 0.3: ranges must not produce 0.30000000000000004 as a label or a key."""
    rounded = round(value, digits) + 0.0
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


def parse_range(name: str, text: str) -> list[float | int]:
    """Expand "a-b [n]" or "a-b (+s)"; errors name the axis, the text and the accepted forms."""
    match = _RANGE.match(text)
    if not match:
        raise ValidationError(name, text, RANGE_SYNTAX)
    a, b = float(match["a"]), float(match["b"])
    if b < a:
        raise ValidationError(name, text, "a range whose end is not below its start")
    if match["n"] is not None:
        n = int(match["n"])
        if not 1 <= n <= MAX_AXIS_VALUES or (n == 1 and a != b):
            raise ValidationError(name, text, f"a count from 2 to {MAX_AXIS_VALUES} (or 1 when a = b)")
        return [clean_number(a + (b - a) * i / (n - 1)) if n > 1 else clean_number(a) for i in range(n)]
    step = float(match["step"])
    if step <= 0:
        raise ValidationError(name, text, "a positive step")
    count = math.floor((b - a) / step + 1e-9) + 1
    if count > MAX_AXIS_VALUES:
        raise ValidationError(name, text, f"at most {MAX_AXIS_VALUES} values")
    return [clean_number(a + i * step) for i in range(count)]


def parse_size(name: str, value: Any) -> tuple[int, int]:
    lo, hi = SIZE_RANGE
    allowed = f'"WxH" with W and H multiples of {SIZE_STEP} from {lo} to {hi}, e.g. "1024x1536"'
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValidationError(name, value, allowed)
    width, height = int(match[1]), int(match[2])
    if not (lo <= width <= hi and lo <= height <= hi):
        raise ValidationError(name, value, allowed)
    check_size(f"{name} {value!r}: width", width)
    check_size(f"{name} {value!r}: height", height)
    return width, height


def axis_values(name: str, raw: Any) -> list[Any]:
    """The checked values of one axis, from a list, a scalar or a range string."""
    numeric = name in ("seed", "width", "height") or name.endswith("_scale")
    if isinstance(raw, str) and numeric:
        values: list[Any] = parse_range(name, raw) if _RANGE.match(raw) or "-" in raw[1:] or "[" in raw else [raw]
    elif isinstance(raw, list | tuple):
        values = list(raw)
    else:
        values = [raw]
    if not values:
        raise ValidationError(name, raw, "at least one value")
    checked = [check_value(name, v) for v in values]
    if SR_AXIS.match(name) and not checked[0].strip():
        raise ValidationError(name, checked[0], "a first value to search the prompt for (not empty)")
    seen: set[Any] = set()
    for value in checked:
        if value in seen and not (name == "seed" and value == -1):
            raise ValidationError(name, value, "distinct values (each appears once)")
        seen.add(value)
    return checked


def check_value(name: str, value: Any) -> Any:
    """One axis value, checked against the schema under the axis's own name."""
    if name.endswith("_scale"):
        return clean_number(check_scale(name, value))
    if name.endswith("_path"):
        return check_path(name, value)
    if name == "seed":
        return check_int(name, value, *SEED_RANGE)
    if name in ("width", "height"):
        return check_size(name, value)
    if name == "size":
        width, height = parse_size(name, value)
        return f"{width}x{height}"
    if name == "prompt":
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(name, value, "a non-empty string")
        return value
    if SR_AXIS.match(name):
        if not isinstance(value, str):
            raise ValidationError(name, value, "a string (the first is searched for, the others replace it)")
        return value
    raise ValidationError("axes", name, "one of " + ", ".join(AXIS_NAMES))


_SEPARATORS = "-_. /"


def path_labels(paths: list[str]) -> list[str]:
    """Short, distinct labels for LoRA paths, e.g. training checkpoints: the file names without extension
    and without what they all share (cut at a separator), so `me/style-e10.safetensors`,
    `me/style-e20.safetensors` read `e10`, `e20`. Falls back to the file names, then to the paths.

    >>> path_labels(["me/style-e10.safetensors", "me/style-e20.safetensors"])
    ['e10', 'e20']
    >>> path_labels(["owner/a", "owner/b", "other/a"])
    ['owner/a', 'owner/b', 'other/a']
    """
    names = [re.sub(r"\.(safetensors|ckpt|pt|bin)$", "", p.rstrip("/").rsplit("/", 1)[-1]) for p in paths]
    if len(set(names)) != len(names):
        return list(paths)
    if len(names) < 2:
        return names
    head = len(_common(names))
    while head and names[0][head - 1] not in _SEPARATORS:
        head -= 1
    tail = len(_common([n[head:][::-1] for n in names]))
    while tail and names[0][len(names[0]) - tail] not in _SEPARATORS:
        tail -= 1
    short = [n[head : len(n) - tail].strip(_SEPARATORS) for n in names]
    return short if all(short) and len(set(short)) == len(short) else names


def _common(texts: list[str]) -> str:
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]
