"""Which result goes in which cell: axes, their values, and the check that no image is silently dropped.

Pure decisions over a results DataFrame; no images are opened here. A "parameter column" is one whose
variation puts a different image in a cell (prompt, size, seed, LoRAs, extra sweep axes); bookkeeping
columns (key, status, timings, cost, urls) never count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from zlab.core.table import is_lora_column, norm_value, parameter_columns
from zlab.errors import ValidationError
from zlab.sheet.layout import axis_label, format_value


class VaryingColumnsError(ValidationError):
    """Several images would share one cell because other parameter columns vary there.

    `.columns` names them; put them on `page=` or `y=`, or pass `stack=True`.
    """

    def __init__(self, axes: dict[str, str | None], columns: Sequence[str], cells: int, hint: str) -> None:
        self.columns = tuple(columns)
        what = ", ".join(self.columns) if self.columns else "nothing (duplicate rows with different keys)"
        super().__init__(
            "axes",
            {k: v for k, v in axes.items() if v},
            f"one image per cell, but {cells} cell(s) hold several images; varying inside a cell: {what}",
            hint,
        )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def sort_key(value: Any, missing_first: bool = False) -> tuple[int, Any]:
    """Numbers first in numeric order, then text, then missing (or missing first: no LoRA on a LoRA axis)."""
    if value is None:
        return (-1, "") if missing_first else (2, "")
    return (0, value) if _is_number(value) else (1, str(value))


def ordered_values(values: Iterable[Any], missing_first: bool = False) -> tuple[Any, ...]:
    """Distinct values for an axis: sorted when all numeric, else in order of first appearance; None last
    (or first: on a LoRA axis it is the no-LoRA baseline, the reference the rest is read against)."""
    seen = list(dict.fromkeys(values))
    present = [v for v in seen if v is not None]
    if present and all(_is_number(v) for v in present):
        present.sort()
    missing = (None,) if None in seen else ()
    return missing + tuple(present) if missing_first else tuple(present) + missing


@dataclass(frozen=True)
class Axis:
    """One sheet axis: the column it reads (None: a single unnamed position) and its ordered values."""

    column: str | None
    values: tuple[Any, ...] = (None,)

    @property
    def labels(self) -> tuple[str, ...]:
        """Header text for each value, e.g. ``lora1_scale 0.5``."""
        return tuple(axis_label(self.column, v) if self.column else "" for v in self.values)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Grid:
    """Results placed on a grid.

    `placed` is the input rows (duplicates of one key reduced to the best) plus `sheet_group` (index
    of the page-axis value), `sheet_row`, `sheet_col` and `sheet_slot` (position inside a stacked cell).
    """

    x: Axis
    y: Axis
    page: Axis
    stacked: tuple[str, ...]  # columns that vary inside a cell (only with stack=True)
    n_stack: int
    placed: pd.DataFrame

    def cells(self, page: int) -> dict[tuple[int, int], list[int]]:
        """(row, col) -> row numbers of `placed` (its index is 0..n-1), in slot order, on one logical page."""
        out: dict[tuple[int, int], list[int]] = defaultdict(list)
        sub = self.placed[self.placed["sheet_group"] == page].sort_values("sheet_slot", kind="stable")
        for i, r, c in zip(sub.index, sub["sheet_row"], sub["sheet_col"], strict=True):
            out[(int(r), int(c))].append(int(i))
        return dict(out)


def _prefer(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with the same key are the same request (e.g. a resumed run): keep the one with an image."""
    if "key" not in df.columns or not df["key"].notna().any():
        return df
    score = pd.Series(0, index=df.index)
    if "status" in df.columns:
        score += (df["status"] == "succeeded").astype(int) * 2
    if "image_path" in df.columns:
        score += df["image_path"].notna().astype(int)
    keyed = df.loc[score.sort_values(kind="stable").index]  # best last, ties keep the later row
    dup = keyed["key"].notna() & keyed.duplicated("key", keep="last")
    return df.loc[df.index.isin(keyed.index[~dup])]


_SIZE_COLUMNS = ("size", "width", "height")


def _by_interest(columns: Iterable[str]) -> list[str]:
    """Columns a user would name first: width/height last, as they usually follow from `size`."""
    return sorted(columns, key=lambda c: _SIZE_COLUMNS.index(c) if c in _SIZE_COLUMNS else -1)


def _hint(axes: dict[str, str | None], columns: Sequence[str]) -> str:
    free = [a for a in ("y", "page") if axes.get(a) is None]
    if not columns or not free:
        return "choose other axes, filter the DataFrame, or pass stack=True to put them side by side in the cell"
    first = columns[0]
    rest = [c for c in columns[1:] if not (first == "size" and c in _SIZE_COLUMNS)]
    also = f" (and likewise for {', '.join(rest)})" if rest else ""
    options = " or ".join(f"{a}={first!r}" for a in free)
    return f"Pass {options}{also}, filter the DataFrame, or pass stack=True to put them side by side in the cell"


def assign(
    df: pd.DataFrame, x: str | None, y: str | None = None, page: str | None = None, *, stack: bool = False
) -> Grid:
    """Place each result row on the (page, y, x) grid.

    Raises `VaryingColumnsError` when another parameter column varies inside one cell (and `stack` is
    False), naming those columns: no image is ever dropped silently.
    """
    axes = {"x": x, "y": y, "page": page}
    named = [a for a in axes.values() if a is not None]
    for name, col in axes.items():
        if col is not None and col not in df.columns:
            allowed = ", ".join(parameter_columns(df)) or "a column of the DataFrame"
            raise ValidationError(name, col, f"one of the columns: {allowed}")
    if len(set(named)) != len(named):
        raise ValidationError("axes", axes, "different columns for x, y and page")
    if df.empty:
        raise ValidationError("df", "an empty DataFrame", "at least one result row")
    df = _prefer(df.reset_index(drop=True)).reset_index(drop=True)

    norms = {c: [norm_value(v) for v in df[c]] for c in named}
    built = {
        name: Axis(col, ordered_values(norms[col], missing_first=is_lora_column(col))) if col else Axis(None)
        for name, col in axes.items()
    }
    index = {name: {v: i for i, v in enumerate(ax.values)} for name, ax in built.items()}
    coords = [
        tuple(index[name][norms[col][i]] if col else 0 for name, col in (("page", page), ("y", y), ("x", x)))
        for i in range(len(df))
    ]
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, cell in enumerate(coords):
        groups[cell].append(i)

    params = parameter_columns(df, exclude=named)
    crowded = [rows for rows in groups.values() if len(rows) > 1]
    varying: list[str] = []
    if crowded:
        values = {c: [norm_value(v) for v in df[c]] for c in params}
        found = {c for rows in crowded for c in params if len({values[c][i] for i in rows}) > 1}
        varying = _by_interest(c for c in params if c in found)
        if not stack:
            raise VaryingColumnsError(axes, varying, len(crowded), _hint(axes, varying))
        for rows in crowded:
            rows.sort(key=lambda i: tuple(sort_key(values[c][i]) for c in varying))

    slot = [0] * len(df)
    for rows in groups.values():
        for k, i in enumerate(rows):
            slot[i] = k
    placed = df.copy()
    placed["sheet_group"] = [c[0] for c in coords]
    placed["sheet_row"] = [c[1] for c in coords]
    placed["sheet_col"] = [c[2] for c in coords]
    placed["sheet_slot"] = slot
    n_stack = max((len(r) for r in groups.values()), default=1)
    return Grid(built["x"], built["y"], built["page"], tuple(varying), n_stack, placed)


def fixed_parameters(df: pd.DataFrame, exclude: Iterable[str | None] = ()) -> list[tuple[str, Any]]:
    """Parameters with one value across the whole sheet (missing ones left out), footer order:
    LoRAs, size, other parameters, prompt last (it is the longest)."""
    fixed = {}
    for c in parameter_columns(df, exclude):
        vals = {norm_value(v) for v in df[c]}
        if len(vals) == 1 and (v := next(iter(vals))) is not None:
            fixed[c] = v
    items: list[tuple[str, Any]] = [(c, fixed.pop(c)) for c in list(fixed) if c.startswith("lora")]
    if "width" in fixed and "height" in fixed:
        size = f"{format_value(fixed.pop('width'))}x{format_value(fixed.pop('height'))}"
        fixed.pop("size", None)
        items.append(("size", size))
    prompt = fixed.pop("prompt", None)
    items += list(fixed.items())
    if prompt is not None:
        items.append(("prompt", prompt))
    return items


def footer_text(items: Sequence[tuple[str, Any]]) -> str:
    """The footer line: ``fixed: lora1_path: a/b  ·  size: 1024x1024  ·  prompt: …``."""
    if not items:
        return ""
    return "fixed: " + "  ·  ".join(f"{k}: {format_value(v)}" for k, v in items)


def placeholder_reason(status: Any, error: Any, image_path: Any) -> str | None:
    """Why a result has no image to show (``failed: <first line of error>``, ``no image``), or None."""
    status, error, image_path = norm_value(status), norm_value(error), norm_value(image_path)
    if status in ("failed", "cancelled") or (status not in (None, "succeeded") and image_path is None):
        first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), "") if error else ""
        return f"{status}: {first}" if first else str(status)
    return "no image" if image_path is None else None


def stack_caption(values: dict[str, Any]) -> str:
    """Caption under a stacked image from the values that differ inside its cell, e.g. ``seed 2 · 64x96``:
    width and height shown together as one size."""
    parts = [axis_label(c, v) for c, v in values.items() if c not in _SIZE_COLUMNS]
    if "width" in values and "height" in values:
        parts.append(f"{format_value(values['width'])}x{format_value(values['height'])}")
    elif "size" in values:
        parts.append(format_value(values["size"]))
    else:
        parts += [axis_label(c, values[c]) for c in ("width", "height") if c in values]
    return " · ".join(parts)
