"""The results table's conventions, in one place: its columns, a request as a row and a row as a request,
values made comparable, which columns are parameters and which vary, and which axis a column prefers.

Everything that writes a results table (the ledger) or reads one to show it (sheets, the gallery, the builder,
reports, metrics) asks this module rather than guessing. Pure: no files, no network.

>>> from zlab import LoRA, Request
>>> row = request_row(Request("a fox", [LoRA("a/b", 0.5)], 512, 512, 7))
>>> row["lora1_scale"], request_from_row(row).key == row["key"]
(0.5, True)
>>> sheet_axes(["seed", "size", "lora1_scale"])
('lora1_scale', 'seed', 'size')
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from zlab.core.request import MAX_LORAS, LoRA, Request

RESULT_COLUMNS = (
    "key", "prompt", "width", "height", "seed",
    "lora1_path", "lora1_scale", "lora2_path", "lora2_scale", "lora3_path", "lora3_scale",
    "status", "error", "request_id", "image_path", "image_url",
    "submitted_at", "finished_at", "queue_s", "run_s", "cost_usd", "base_url",
)  # fmt: skip
# Added after the contract's columns (none is ever removed or renamed).
EXTRA_COLUMNS = ("cost_source", "image_width", "image_height", "note", "cached")
BOOKKEEPING = frozenset(
    {
        *("key", "status", "error", "request_id", "image_path", "image_url", "cost_usd", "base_url", "cached"),
        *("megapixels", "cost_source", "image_width", "image_height", "note", "reason", "favourite", "rating"),
    }
)


_NOT_AXES = ("cached", "favourite", "rating")  # how a cell ran or was judged, not what it shows
# Which varying axis goes where on a sheet: what a LoRA does is the question, so its scale goes
# across; seeds show how much is chance, so they go down; prompts, LoRA files and sizes page.
AXIS_PREFERENCE = (
    "lora1_scale", "lora2_scale", "lora3_scale", "seed", "prompt",
    "lora1_path", "lora2_path", "lora3_path", "size", "width", "height",
)  # fmt: skip


def is_bookkeeping(column: str) -> bool:
    """True for columns that describe how a cell ran rather than what it generated."""
    return column in BOOKKEEPING or column.endswith(("_at", "_s")) or column.startswith(("sheet_", "backend_"))


def is_lora_column(column: str | None) -> bool:
    """True for a LoRA slot's columns (`lora1_scale`, `lora2_path`, `lora1_label`): missing there means no LoRA."""
    return column is not None and re.fullmatch(r"lora\d+_(scale|path|label)", column) is not None


def parameter_columns(df: pd.DataFrame, exclude: Iterable[str | None] = ()) -> list[str]:
    """The columns whose values define an image, in DataFrame order, minus `exclude`."""
    skip = set(exclude)
    return [c for c in df.columns if isinstance(c, str) and not is_bookkeeping(c) and c not in skip]


def norm_value(value: Any) -> Hashable:
    """A value made hashable and comparable: NaN/None -> None, numpy -> Python, lists -> JSON text."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()  # numpy scalar or array
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, list | tuple | dict | set):
        return json.dumps(value, sort_keys=True, default=str)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def request_row(request: Request, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A request as result columns (`key`, the parameters, `loraN_path`/`loraN_scale`), plus axis `values`."""
    row: dict[str, Any] = {
        "key": request.key,
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "seed": request.seed,
    }
    for i in range(MAX_LORAS):
        lora = request.loras[i] if i < len(request.loras) else None
        row[f"lora{i + 1}_path"] = lora.path if lora else None
        row[f"lora{i + 1}_scale"] = lora.scale if lora else None
    row.update({k: v for k, v in (values or {}).items() if k not in row})
    return row


def request_from_row(row: Mapping[str, Any], **changes: Any) -> Request:
    """The `Request` a result row (or a ledger's params) was generated from, with `changes` (e.g. ``seed=7``).

    Raises `ValidationError` when the row does not hold a valid request (a hand-edited table)."""
    loras = []
    for n in range(1, MAX_LORAS + 1):
        path, scale = norm_value(row.get(f"lora{n}_path")), norm_value(row.get(f"lora{n}_scale"))
        if path:
            loras.append(LoRA(str(path), float(scale) if isinstance(scale, int | float) else 1.0))
    fields = {name: norm_value(row.get(name)) for name in ("prompt", "width", "height", "seed")}
    return Request(loras=loras, **{**fields, **changes})


def axis_rank(column: str) -> int:
    """Position in `AXIS_PREFERENCE`; other columns (extra axes) come after, in their own order."""
    return AXIS_PREFERENCE.index(column) if column in AXIS_PREFERENCE else len(AXIS_PREFERENCE)


def sheet_axes(columns: Sequence[str] | Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(x, y, page) for a contact sheet of these varying columns, by `AXIS_PREFERENCE`.

    >>> sheet_axes(["prompt", "seed"])
    ('seed', 'prompt', None)
    """
    names = list(columns)
    ranked = sorted(names, key=lambda c: (axis_rank(c), names.index(c)))
    picked = [*ranked[:3], None, None, None]
    return picked[0], picked[1], picked[2]


def varying_columns(df: pd.DataFrame) -> list[str]:
    """Parameter columns with more than one distinct value: the candidates for x, y and page, most
    useful first. A column that another candidate already decides is left out (width and height when
    `size` varies; the partner of a zipped axis): it needs no axis of its own."""
    columns = parameter_columns(df, exclude=_NOT_AXES)
    values = {c: [norm_value(v) for v in df[c]] for c in columns}
    varying = [c for c in columns if len(set(values[c])) > 1]
    ranked = sorted(varying, key=lambda c: (axis_rank(c), columns.index(c)))
    kept: list[str] = []
    for column in ranked:
        if not any(_decides(values[k], values[column]) for k in kept):
            kept.append(column)
    return kept


def _decides(a: list[Any], b: list[Any]) -> bool:
    """True when each value of `a` comes with a single value of `b` (b is a function of a)."""
    return len(set(zip(a, b, strict=True))) == len(set(a))
