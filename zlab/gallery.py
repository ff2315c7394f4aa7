"""The gallery's state and decisions, without widgets: which columns can be axes, which sheet page is
shown, which cell is selected, and what the detail pane says about it.

`zlab.widgets.Gallery` is a thin view over `GalleryModel`: every widget event calls one method here and
copies the result into a widget. A notebook or a test can drive the model directly.

>>> model = GalleryModel("runs/tc")                       # doctest: +SKIP
>>> model.set_axes(x="lora1_scale", y="seed")             # doctest: +SKIP
>>> model.select(model.cells_on_page()[0][1]); model.detail().parameters[:2]   # doctest: +SKIP
[('prompt', 't3chnic4lly …'), ('width', '1024')]
"""

from __future__ import annotations

import dataclasses
import html
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

from zlab.errors import ValidationError, ZlabError
from zlab.frontend import axis_rank, sheet_axes
from zlab.sheet import ContactSheet, VaryingColumnsError, contact_sheet
from zlab.sheet.cells import is_bookkeeping, norm_value, parameter_columns
from zlab.sheet.layout import axis_label, format_value

HIGHLIGHT = (255, 128, 0)  # orange reads on the sheet's white and on most images
_NOT_AXES = ("cached",)  # a cache hit says how a cell ran, not what it shows
_RUN_FACTS = ("status", "error", "key", "request_id", "queue_s", "run_s", "image_path")


def open_results(source: Any) -> tuple[pd.DataFrame, Path | None]:
    """(results DataFrame, run directory) from a run directory, its results.parquet, a RunResult or a
    DataFrame (whose ``attrs["run_dir"]`` says where its images are)."""
    if isinstance(source, pd.DataFrame):
        root = source.attrs.get("run_dir")
        return source, Path(root) if root else None
    if hasattr(source, "df") and hasattr(source, "out"):  # a RunResult, without importing the runner
        return source.df, Path(source.out)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        parquet = path if path.suffix == ".parquet" else path / "results.parquet"
        if not parquet.is_file():
            raise ValidationError(
                "run_dir",
                str(path),
                "a run directory containing results.parquet",
                "run a sweep into it first (client.run(sweep, out=...) or `zlab run`)",
            )
        # The run directory is where the file is now, not where it was written (it may have moved).
        return pd.read_parquet(parquet), parquet.parent
    raise ValidationError("source", type(source).__name__, "a run directory, a RunResult or a results DataFrame")


def varying_columns(df: pd.DataFrame) -> list[str]:
    """Parameter columns with more than one distinct value: the candidates for x, y and page, most
    useful first (`zlab.frontend.AXIS_PREFERENCE`). A column that another candidate already decides is
    left out (width and height when `size` varies; the partner of a zipped axis): it needs no axis."""
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


def cell_parameters(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the detail pane lists for one result: its parameters (unset LoRA slots left out), then how it ran."""
    pairs = []
    params = [c for c in row if isinstance(c, str) and not is_bookkeeping(c)]
    for column in [*params, *_RUN_FACTS]:
        if column in _NOT_AXES or column not in row:
            continue
        value = norm_value(row[column])
        if value is None or value == "":
            continue
        text = f"{value:.2f} s" if column.endswith("_s") and isinstance(value, float) else format_value(value)
        pairs.append((column, text))
    return pairs


def parameters_html(pairs: list[tuple[str, str]]) -> str:
    """A two-column HTML table of (name, value), every value escaped."""
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:12px'>{html.escape(k)}</th>"
        f"<td style='text-align:left;overflow-wrap:anywhere'>{html.escape(v)}</td></tr>"
        for k, v in pairs
    )
    return f"<table style='font-size:13px'>{rows}</table>"


def png_bytes(image: Image.Image, compress_level: int = 1) -> bytes:
    """PNG bytes for an image widget; fast compression, since they are sent once and dropped."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def highlighted(page: Image.Image, box: tuple[int, int, int, int], width: int = 4) -> Image.Image:
    """A copy of `page` with an outline around `box`, so the selected cell is visible on the sheet."""
    out = page.copy()
    left, top, right, bottom = box
    ImageDraw.Draw(out).rectangle(
        (left - width, top - width, right + width - 1, bottom + width - 1), outline=HIGHLIGHT, width=width
    )
    return out


@dataclasses.dataclass(frozen=True)
class Detail:
    """The selected cell: its full image (file bytes and format, None when there is none) and parameters."""

    title: str
    image: bytes | None
    format: str
    parameters: list[tuple[str, str]]
    note: str | None = None

    @property
    def html(self) -> str:
        note = f"<p style='color:#aa1e1e'>{html.escape(self.note)}</p>" if self.note else ""
        return f"<b>{html.escape(self.title)}</b>{note}{parameters_html(self.parameters)}"


class GalleryModel:
    """A results table seen as contact sheet pages, with one selected cell.

    `x`, `y`, `page` name the sheet's axes (default: the varying columns by `zlab.frontend.AXIS_PREFERENCE`);
    `page_index` is the sheet page shown; `selected` is a row of `sheet.df`. When other columns vary
    inside a cell, the sheet is drawn stacked and `note` says which ones.
    """

    def __init__(self, source: Any, *, root: str | os.PathLike[str] | None = None, cell_width: int = 192) -> None:
        self.df, found = open_results(source)
        self.root = Path(root) if root is not None else found
        self.cell_width = cell_width
        self.columns = varying_columns(self.df)
        self.x, self.y, self.page = sheet_axes(self.columns)
        self.sheet: ContactSheet | None = None
        self.note = ""
        self.page_index = 0
        self.selected: int | None = None
        self._draw()

    # ------------------------------------------------------------ decisions driven by the view

    def set_axes(self, x: str | None, y: str | None = None, page: str | None = None) -> str:
        """Redraw with new axes and return `note`: why a choice was refused (the current sheet stays), a
        remark that the sheet is stacked, or "" when all is well."""
        chosen = [c for c in (x, y, page) if c]
        if len(set(chosen)) < len(chosen):
            return self._fail("x, y and page must be different columns")
        unknown = [c for c in chosen if c not in self.df.columns]
        if unknown:
            return self._fail(f"no column {unknown[0]!r}; choose from {', '.join(self.columns)}")
        before = (self.x, self.y, self.page)
        self.x, self.y, self.page = x, y, page
        try:
            self._draw()
        except ZlabError as exc:
            self.x, self.y, self.page = before
            return self._fail(str(exc))
        return self.note

    def choose(self, axis: str, column: str | None) -> str:
        """Put `column` on one axis ("x", "y" or "page"); if another axis holds it, the two swap, so a
        dropdown can move a column without first clearing where it was. Returns `note` as `set_axes`."""
        names = ("x", "y", "page")
        if axis not in names:
            raise ValidationError("axis", axis, "'x', 'y' or 'page'")
        current = dict(zip(names, (self.x, self.y, self.page), strict=True))
        for other, held in current.items():
            if column is not None and held == column and other != axis:
                current[other] = current[axis]
        current[axis] = column
        return self.set_axes(current["x"], current["y"], current["page"])

    def set_page(self, index: int) -> None:
        """Show sheet page `index` (clamped to the pages there are) and select its first cell."""
        self.page_index = max(0, min(int(index), self.page_count - 1))
        cells = self.cells_on_page()
        self.selected = cells[0][1] if cells else None

    def select(self, row: int | None) -> None:
        """Select a row of `sheet.df` (as listed by `cells_on_page`); None clears the selection."""
        if row is not None and (self.sheet is None or row not in range(len(self.sheet.df))):
            last = len(self.sheet.df) - 1 if self.sheet else -1
            raise ValidationError("cell", row, f"a row of the sheet, 0 to {last}")
        self.selected = row

    # ------------------------------------------------------------ what the view shows

    @property
    def page_count(self) -> int:
        return len(self.sheet.pages) if self.sheet else 0

    def cells_on_page(self) -> list[tuple[str, int]]:
        """(label, row of sheet.df) for each cell on the current page, in reading order."""
        if self.sheet is None:
            return []
        df = self.sheet.df
        on = df[df["sheet_page"] == self.page_index].sort_values(["sheet_row", "sheet_col", "sheet_slot"])
        return [(self._label(df.iloc[i]), int(i)) for i in on.index]

    def page_label(self) -> str:
        """'page 2 of 3 · size 768x1344' (what the page axis holds on this page)."""
        if not self.sheet:
            return "no sheet"
        text = f"page {self.page_index + 1} of {self.page_count}"
        meta = self.sheet.meta[self.page_index]
        if self.page and meta.get("page_value") is not None:
            text += f" · {axis_label(self.page, meta['page_value'])}"
        if meta.get("parts", 1) > 1:
            text += f" (part {meta['part']} of {meta['parts']})"
        return text

    def page_png(self) -> bytes:
        """The current page as PNG, the selected cell outlined."""
        if self.sheet is None:
            return b""
        image = self.sheet.pages[self.page_index]
        if self.selected is not None:
            row = self.sheet.df.iloc[self.selected]
            if int(row["sheet_page"]) == self.page_index:
                box = (int(row["sheet_left"]), int(row["sheet_top"]), int(row["sheet_right"]), int(row["sheet_bottom"]))
                image = highlighted(image, box)
        return png_bytes(image)

    def detail(self) -> Detail | None:
        """The selected cell's full image and parameters (None when nothing is selected)."""
        if self.sheet is None or self.selected is None:
            return None
        row = self.sheet.df.iloc[self.selected]
        params = cell_parameters(row.to_dict())
        path = row.get("image_path")
        if not isinstance(path, str) or not path:
            return Detail(self._label(row), None, "png", params, f"no image ({row.get('status')})")
        full = (self.root or Path()) / path
        try:
            data = full.read_bytes()
        except OSError as exc:
            return Detail(self._label(row), None, "png", params, f"cannot read {full}: {exc.strerror or exc}")
        fmt = {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}.get(full.suffix.lower(), "png")
        return Detail(self._label(row), data, fmt, params)

    # ------------------------------------------------------------ internals

    def _fail(self, reason: str) -> str:
        self.note = reason
        return reason

    def _draw(self) -> None:
        self.note = ""
        try:
            sheet = contact_sheet(self.df, self.x, self.y, self.page, root=self.root, cell_width=self.cell_width)
        except VaryingColumnsError as exc:
            # Show every image anyway (side by side in its cell) and say which columns to move to an axis.
            sheet = contact_sheet(
                self.df, self.x, self.y, self.page, root=self.root, cell_width=self.cell_width, stack=True
            )
            cols, one = ", ".join(exc.columns), len(exc.columns) == 1
            self.note = (
                f"stacked: {cols} {'varies' if one else 'vary'} inside a cell too; "
                f"put {'it' if one else 'them'} on y or page to give each image its own cell"
            )
        self.sheet = sheet
        self.set_page(0)

    def _label(self, row: pd.Series) -> str:
        stacked = self.sheet.grid.stacked if self.sheet else ()
        parts = [axis_label(c, norm_value(row[c])) for c in (self.page, self.y, self.x, *stacked) if c]
        return " · ".join(parts) or str(row.get("key"))
