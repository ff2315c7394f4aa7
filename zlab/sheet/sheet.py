"""`contact_sheet`: results DataFrame in, labelled grid of thumbnails out (PNG pages, HTML, metadata).

The pipeline: `cells.assign` places rows on the (page, y, x) grid, `layout.plan_pages` decides every
pixel, `thumbs` decodes images at reduced size (cached on disk), `draw` paints, `meta` embeds what each
cell is. Pages are rendered one at a time, so memory holds one page and its thumbnails, never all images.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from zlab.errors import ValidationError
from zlab.sheet import draw, png, thumbs
from zlab.sheet.cells import (
    Grid,
    assign,
    fixed_parameters,
    footer_text,
    norm_value,
    parameter_columns,
    placeholder_reason,
    stack_caption,
)
from zlab.sheet.layout import WEBP_MAX_SIDE, Box, SheetText, Style, axis_label, plan_pages, style_for
from zlab.sheet.meta import FORMAT_VERSION, save_kwargs

DISPLAY_WIDTH = 1100  # px: a notebook's output at a common window size, where a sheet shows 1:1
MIN_DISPLAY_CELL = 48  # px: below this a thumbnail says too little; a wider grid is shown scaled
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True, repr=False)
class ContactSheet:
    """A drawn contact sheet: `.pages` (PIL images), `.df` (each result with its page, grid position
    and pixel box), `.save(path)`, `.to_html(path)`; shows inline in a notebook, every page captioned
    with its number and the page axis's value."""

    pages: list[Image.Image]
    df: pd.DataFrame
    meta: tuple[dict[str, Any], ...]
    grid: Grid
    root: Path | None
    style: Style
    title: str
    footer: str
    aspect: float = 1.0  # tallest height/width among the images: sets the cell height
    cache: Path | None = field(default=None)
    _shown: dict[int, ContactSheet] = field(default_factory=dict, compare=False)  # for_display's, by width

    def __repr__(self) -> str:
        sizes = ", ".join(f"{p.width}×{p.height}" for p in self.pages[:3]) + (" …" if len(self.pages) > 3 else "")
        grid = f"{len(self.grid.x)}×{len(self.grid.y)}" + (f"×{len(self.grid.page)}" if self.grid.page.column else "")
        return f"<ContactSheet {grid} cells, {len(self.pages)} page(s) {sizes}>"

    def for_display(self, width: int = DISPLAY_WIDTH) -> ContactSheet:
        """This sheet drawn again with cells small enough that each page is at most `width` pixels wide,
        so a notebook shows it 1:1 and its labels at their drawn size (≥ `min_font_size`), instead of
        shrinking a wide page until its labels are 5 px tall. Itself when it fits already."""
        if width in self._shown:
            return self._shown[width]
        shown, cell = self, self.style.cell_width
        for _ in range(4):  # the label column and margins do not shrink with the cells: converge in steps
            widest = max(page.width for page in shown.pages)
            if widest <= width or cell <= MIN_DISPLAY_CELL:
                break
            cell = max(MIN_DISPLAY_CELL, int(cell * (width - 8) / widest))
            shown = contact_sheet(
                self.df.drop(columns=[c for c in self.df.columns if c.startswith("sheet_")]),
                self.grid.x.column, self.grid.y.column, self.grid.page.column,
                root=self.root, cell_width=cell, stack=bool(self.grid.stacked), title=self.title,
                footer=bool(self.footer), min_font_size=self.style.min_size, cache=self.cache or False,
            )  # fmt: skip
        self._shown[width] = shown
        return shown

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.for_display().pages[0].save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def _repr_html_(self) -> str | None:
        """Every page with its caption ("page 2 of 3 · size 768x1344"), when there is more than one page
        (a single page shows as its PNG alone: the same picture, half the notebook's bytes). Wide pages
        are drawn again for the notebook's width (`for_display`); `.pages` and `save` keep full size."""
        if len(self.pages) < 2:
            return None
        shown = self.for_display()
        n = len(shown.pages)
        parts = [f"<div style='font:13px system-ui,sans-serif'><b>{html.escape(shown.title)}</b> · {n} pages"]
        for i, (page, meta) in enumerate(zip(shown.pages, shown.meta, strict=True)):
            buf = io.BytesIO()
            page.save(buf, format="PNG", compress_level=1)
            data = base64.b64encode(buf.getvalue()).decode("ascii")
            caption = f"page {i + 1} of {n}"
            if meta.get("page") and meta.get("page_value") is not None:
                caption += f" · {axis_label(meta['page'], meta['page_value'])}"
            if meta.get("parts", 1) > 1:
                caption += f" (part {meta['part']} of {meta['parts']})"
            parts.append(
                f"<figure style='margin:8px 0'><figcaption>{html.escape(caption)}</figcaption>"
                f"<img src='data:image/png;base64,{data}' width='{page.width}' height='{page.height}' "
                f"style='max-width:100%;height:auto' alt='{html.escape(caption, quote=True)}'></figure>"
            )
        return "".join(parts) + "</div>"

    def save(self, path: str | os.PathLike[str], **options: Any) -> list[Path]:
        """Write the pages as PNG, JPEG or WebP (by suffix); several pages become ``name-1.png``, ….

        Each PNG (and JPEG) page embeds its cells' keys and parameters (see `read_sheet`).
        Returns the paths written.
        """
        path = Path(path)
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValidationError("path", str(path), "a file ending in .png, .jpg, .jpeg or .webp")
        path.parent.mkdir(parents=True, exist_ok=True)
        # PNG level 1: a sheet of photos barely compresses further, and level 6 takes ~5x longer to write.
        defaults: dict[str, Any] = {"JPEG": {"quality": 92}, "WEBP": {"quality": 90}, "PNG": {"compress_level": 1}}
        out = []
        for i, (page, meta) in enumerate(zip(self.pages, self.meta, strict=True), start=1):
            target = path if len(self.pages) == 1 else path.with_name(f"{path.stem}-{i}{path.suffix}")
            if fmt == "PNG" and not options:  # deflate on every core: Pillow's encoder uses one
                png.save(page, target, save_kwargs(fmt, meta)["pnginfo"])
            else:
                page.save(target, format=fmt, **{**defaults[fmt], **save_kwargs(fmt, meta), **options})
            out.append(target)
        return out

    def to_html(self, path: str | os.PathLike[str], *, portable: bool = False) -> Path:
        """Write one self-contained HTML file: embedded thumbnails, hover for parameters, click for the
        full image (linked relative to the HTML file; `portable`: copied into ``<name>_files/`` beside it,
        so the two move together)."""
        from zlab.sheet.html import write_html

        return write_html(self, path, portable=portable)


def _aspects(placed: pd.DataFrame, paths: Sequence[Path | None]) -> list[float]:
    """height/width per row: from the width/height columns, else the image header (no full decode)."""
    out = []
    cols = "width" in placed.columns and "height" in placed.columns
    for i, p in enumerate(paths):
        w = norm_value(placed["width"].iat[i]) if cols else None
        h = norm_value(placed["height"].iat[i]) if cols else None
        if isinstance(w, int | float) and isinstance(h, int | float) and w > 0 and h > 0:
            out.append(h / w)
        elif p is not None:
            try:
                with Image.open(p) as im:
                    out.append(im.height / im.width)
            except OSError:
                pass
    return out


def _resolve(df: pd.DataFrame, root: str | os.PathLike[str] | None) -> Path | None:
    run_dir = root if root is not None else df.attrs.get("run_dir")
    return Path(run_dir) if run_dir is not None else None


def contact_sheet(
    df: pd.DataFrame,
    x: str | None,
    y: str | None = None,
    page: str | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    cell_width: int = 256,
    stack: bool = False,
    title: str | None = None,
    footer: bool = True,
    min_font_size: int = 10,
    max_side: int = WEBP_MAX_SIDE,
    max_pixels: int | None = None,
    cache: bool | str | os.PathLike[str] = True,
    workers: int | None = None,
) -> ContactSheet:
    """Draw results as a labelled grid: one column per value of `x`, one row per value of `y`, one
    page per value of `page` (any column can be any axis).

    If another parameter column varies inside a cell, raises `VaryingColumnsError` naming it (put it
    on `y=`/`page=`, or pass `stack=True` to show those images side by side in the cell). Images are
    read relative to `root` (default ``df.attrs["run_dir"]``) at reduced size and cached under
    ``root/.zlab/thumbs``. Large grids split into several pages, each within `max_side` pixels a side
    (WebP's 16,383) and `max_pixels` (default Pillow's `MAX_IMAGE_PIXELS`).

    >>> sheet = contact_sheet(res.df, x="lora1_scale", y="seed")   # doctest: +SKIP
    >>> sheet.save("runs/tc/sheet.png")                             # doctest: +SKIP
    """
    if not isinstance(cell_width, int) or not 16 <= cell_width <= 4096:
        raise ValidationError("cell_width", cell_width, "an integer from 16 to 4096")
    grid = assign(df, x, y, page, stack=stack)
    placed = grid.placed
    run_dir = _resolve(df, root)
    cache_dir = (
        (thumbs.cache_dir(run_dir) if run_dir is not None else None)
        if cache is True
        else (Path(cache) if cache else None)
    )
    reasons = [
        placeholder_reason(
            *(placed[c].iat[i] if c in placed.columns else None for c in ("status", "error", "image_path"))
        )
        for i in range(len(placed))
    ]
    paths = [
        None if reasons[i] is not None else (run_dir or Path()) / str(placed["image_path"].iat[i])
        for i in range(len(placed))
    ]
    style = style_for(cell_width, min_font_size)
    axes = (grid.x.column, grid.y.column, grid.page.column)
    fixed = fixed_parameters(df, exclude=axes)
    prompt = dict(fixed).get("prompt")
    sheet_title = title if title is not None else (str(prompt) if prompt else "zlab contact sheet")
    foot = footer_text(fixed) if footer else ""
    aspect = max(_aspects(placed, paths), default=1.0)
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    params = parameter_columns(placed)

    pages: list[Image.Image] = []
    metas: list[dict[str, Any]] = []
    boxes: dict[int, tuple[int, Box]] = {}
    notes: list[str | None] = list(reasons)
    axis_note = " · ".join(f"{n}: {c}" for n, c in zip(("x", "y"), axes[:2], strict=True) if c)
    for g, gval in enumerate(grid.page.values):
        subtitle = axis_note + (f" · {axis_label(grid.page.column, gval)}" if grid.page.column else "")
        text = SheetText(sheet_title, subtitle, grid.x.labels, grid.y.labels if grid.y.column else (), foot)
        try:
            plans = plan_pages(
                text,
                aspect=aspect,
                n_stack=grid.n_stack,
                style=style,
                measure=draw.measure,
                max_side=max_side,
                max_pixels=limit,
            )
        except ValueError as exc:
            raise ValidationError("cell_width", cell_width, "a size whose cell fits on one page", str(exc)) from exc
        cells = grid.cells(g)
        for plan in plans:
            on_page = [
                (r, c, k, i)
                for (r, c), rows in cells.items()
                if r in plan.rows and c in plan.cols
                for k, i in enumerate(rows)
            ]
            order = [i for *_, i in on_page]
            loaded = thumbs.load_many((None if reasons[i] else paths[i] for i in order), cell_width, cache_dir, workers)
            captions = {(r, c, k): _caption(placed, i, grid.stacked) for r, c, k, i in on_page} if grid.stacked else {}
            image, drawn = draw.render_page(plan, _tiles(on_page, loaded, reasons, notes), captions, style)
            for r, c, k, i in on_page:
                boxes[i] = (len(pages), drawn[(r, c, k)])
            pages.append(image)
            metas.append(_page_meta(grid, g, plan, placed, order, boxes, notes, params, sheet_title))

    result = placed.drop(columns=["sheet_group"])
    result.insert(result.columns.get_loc("sheet_row"), "sheet_page", [boxes[i][0] for i in range(len(placed))])
    for j, name in enumerate(("sheet_left", "sheet_top", "sheet_right", "sheet_bottom")):
        result[name] = [boxes[i][1][j] for i in range(len(placed))]
    result["sheet_note"] = notes
    result.attrs = {**df.attrs, "x": axes[0], "y": axes[1], "page": axes[2]}
    return ContactSheet(pages, result, tuple(metas), grid, run_dir, style, sheet_title, foot, aspect, cache_dir)


def _tiles(
    on_page: Sequence[tuple[int, int, int, int]],
    loaded: Iterator[Image.Image | thumbs.Missing],
    reasons: Sequence[str | None],
    notes: list[str | None],
) -> Iterator[tuple[tuple[int, int, int], Image.Image | thumbs.Missing]]:
    """Pair each (row, col, slot, row-number) with its thumbnail as it decodes, noting unreadable files."""
    for (r, c, k, i), tile in zip(on_page, loaded, strict=True):
        if why := reasons[i]:
            tile = thumbs.Missing(why)
        elif isinstance(tile, thumbs.Missing):
            notes[i] = tile.reason
        yield (r, c, k), tile


def _caption(placed: pd.DataFrame, i: int, columns: Sequence[str]) -> str:
    """Caption under a stacked slot: the values that differ inside the cell."""
    return stack_caption({c: norm_value(placed[c].iat[i]) for c in columns})


def _page_meta(
    grid: Grid,
    g: int,
    plan: Any,
    placed: pd.DataFrame,
    order: Sequence[int],
    boxes: dict[int, tuple[int, Box]],
    notes: Sequence[str | None],
    params: Sequence[str],
    title: str,
) -> dict[str, Any]:
    """The JSON a page carries: axes, their values, and each cell's key, position and parameters."""
    cells = []
    for i in order:
        row = placed.iloc[i]
        box = boxes[i][1]
        cell = {
            "key": row.get("key"),
            "status": row.get("status"),
            "image_path": row.get("image_path"),
            "sheet_row": int(row["sheet_row"]),
            "sheet_col": int(row["sheet_col"]),
            "sheet_slot": int(row["sheet_slot"]),
            "left": box[0],
            "top": box[1],
            "right": box[2],
            "bottom": box[3],
            "note": notes[i],
        }
        cell.update({c: norm_value(row[c]) for c in params})
        cells.append(cell)
    return {
        "zlab_sheet": FORMAT_VERSION,
        "title": title,
        "x": grid.x.column,
        "y": grid.y.column,
        "page": grid.page.column,
        "x_values": list(grid.x.values),
        "y_values": list(grid.y.values),
        "page_value": grid.page.values[g] if grid.page.column else None,
        "rows": [plan.rows.start, plan.rows.stop],
        "cols": [plan.cols.start, plan.cols.stop],
        "part": plan.number,
        "parts": plan.of,
        "cells": cells,
    }


def sheet_from_run_dir(
    run_dir: str | os.PathLike[str],
    x: str,
    y: str | None = None,
    page: str | None = None,
    out: str | os.PathLike[str] | None = None,
    html: bool = False,
    portable: bool = False,
    **kw: Any,
) -> list[Path]:
    """`zlab sheet DIR --x COL [--y COL] [--page COL] [--out FILE] [--html [--portable]]`: draw DIR/results.parquet.

    Writes ``DIR/sheet.png`` by default (``sheet-1.png``, … when it pages) and, with `html`, an HTML
    sheet beside it. Returns the paths written.
    """
    run_dir = Path(run_dir)
    results = run_dir / "results.parquet"
    if not results.is_file():
        raise ValidationError(
            "run_dir",
            str(run_dir),
            "a run directory containing results.parquet",
            "run `zlab run SPEC.yaml --out DIR` first",
        )
    df = pd.read_parquet(results)
    sheet = contact_sheet(df, x, y, page, root=run_dir, **kw)
    target = Path(out) if out is not None else run_dir / "sheet.png"
    if target.suffix.lower() == ".html":
        return [sheet.to_html(target, portable=portable)]
    written = sheet.save(target)
    if html:
        written.append(sheet.to_html(target.with_suffix(".html"), portable=portable))
    return written


__all__ = ["ContactSheet", "contact_sheet", "sheet_from_run_dir"]
