"""Contact-sheet layout as pure decisions: number formatting, label fitting, grid geometry, paging.

Nothing here touches Pillow or the disk. Text width is measured by a function passed in
(`measure(text, size) -> pixels`), so the same decisions are testable with a fake measure and drawn
with a real TrueType font.

A sheet page reads top to bottom: title, subtitle (axes and page value), column headers, the grid
(row labels on the left), a numbered legend for labels too long to fit, and a footer listing the
parameters held fixed.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from zlab.core.table import is_lora_column

NO_LORA = "no LoRA"  # what a LoRA axis says where a cell has no LoRA (the baseline)

Measure = Callable[[str, int], float]
"""Width in pixels of `text` drawn at font size `size`."""

Box = tuple[int, int, int, int]
"""(left, top, right, bottom) in pixels; right and bottom exclusive."""

WEBP_MAX_SIDE = 16383
"""Largest side WebP can encode; the tightest of the formats a sheet is saved in (JPEG: 65,535)."""

ELLIPSIS = "…"


def format_value(value: Any) -> str:
    """A parameter value as a short, clean label: 0.5 not 0.5000001, 2 not 2.0, "none" for missing.

    >>> format_value(0.30000000000000004), format_value(2.0), format_value(None)
    ('0.3', '2', 'none')
    """
    if value is None:
        return "none"
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with contextlib.suppress(ValueError, AttributeError):
            value = value.item()  # numpy scalar -> Python scalar
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "none"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if 1e-4 <= abs(value) < 1e15:
            # Rounding to 6 decimals hides float noise from range arithmetic (0.1 * 3 = 0.30000000000000004).
            text = repr(round(value, 6))
            return text[:-2] if text.endswith(".0") else text
        return f"{value:.4g}"
    return str(value)


def axis_label(column: str, value: Any) -> str:
    """The header text for one axis value, e.g. ``lora1_scale 0.5``; ``no LoRA`` where a LoRA axis has none."""
    if value is None and is_lora_column(column):
        return NO_LORA
    return f"{column} {format_value(value)}"


def line_height(size: int) -> int:
    """Vertical advance for one line of text at `size`."""
    return math.ceil(size * 1.25)


def _hard_break(token: str, width: float, size: int, measure: Measure) -> list[str]:
    """Split a token with no break opportunities into pieces that each fit `width` (at least 1 char)."""
    pieces, current = [], ""
    for ch in token:
        if current and measure(current + ch, size) > width:
            pieces.append(current)
            current = ch
        else:
            current += ch
    return [*pieces, current] if current else pieces


def _word_units(word: str, width: float, size: int, measure: Measure) -> list[str]:
    """A word as pieces that fit: whole if it fits, else split after / _ - (paths, repo ids), else by char."""
    if measure(word, size) <= width:
        return [word]
    units: list[str] = []
    for part in (p for p in re.findall(r"[^/_\-]*[/_\-]?", word) if p):
        units.extend([part] if measure(part, size) <= width else _hard_break(part, width, size, measure))
    return units


def wrap_text(text: str, width: float, size: int, measure: Measure, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap to `width` pixels; long words break after separators, then anywhere.

    With `max_lines`, the text is cut to that many lines and the last one ends in an ellipsis.
    """
    lines: list[str] = []
    current = ""
    for word in text.split():
        for i, unit in enumerate(_word_units(word, width, size, measure)):
            # A new word is joined with a space; a continuation piece of a split word is not.
            candidate = (current + (" " if i == 0 else "") + unit) if current else unit
            if current and measure(candidate, size) > width:
                lines.append(current)
                current = unit
            else:
                current = candidate
    if current:
        lines.append(current)
    if max_lines is not None and len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], truncate(" ".join(lines[max_lines - 1 :]), width, size, measure)]
    return lines


def truncate(text: str, width: float, size: int, measure: Measure) -> str:
    """`text` cut to fit `width` on one line, ending in an ellipsis when cut."""
    if measure(text, size) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if measure(text[:mid].rstrip() + ELLIPSIS, size) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ELLIPSIS


@dataclass(frozen=True)
class LabelFit:
    """How one label is drawn: its lines at a font size, or a legend reference like ``[3]``."""

    lines: tuple[str, ...]
    size: int
    legend: int | None = None  # legend number when the full text moved below the grid


def fit_label(text: str, width: float, max_lines: int, size: int, min_size: int, measure: Measure) -> LabelFit | None:
    """Wrap `text` into `max_lines` lines of `width`, shrinking from `size` down to `min_size`.

    Returns None when it does not fit even at `min_size`: the caller moves it to the legend.
    """
    for s in range(size, min_size - 1, -1):
        lines = wrap_text(text, width, s, measure)
        if len(lines) <= max_lines and all(measure(line, s) <= width for line in lines):
            return LabelFit(tuple(lines), s)
    return None


def fit_labels(
    labels: Sequence[str],
    width: float,
    max_lines: int,
    size: int,
    min_size: int,
    measure: Measure,
    first_legend: int = 1,
) -> list[LabelFit]:
    """Fit each label; those that cannot fit get consecutive legend numbers from `first_legend`."""
    fits, n = [], first_legend
    for text in labels:
        fit = fit_label(text, width, max_lines, size, min_size, measure)
        if fit is None:
            fit = LabelFit((f"[{n}]",), size, legend=n)
            n += 1
        fits.append(fit)
    return fits


@dataclass(frozen=True)
class Style:
    """Sizes and spacing of a sheet, derived from the cell width (see `style_for`)."""

    cell_width: int = 256
    label_size: int = 18
    title_size: int = 24
    small_size: int = 14
    min_size: int = 10
    margin: int = 16
    gap: int = 4
    pad: int = 6
    header_lines: int = 2
    row_label_lines: int = 4
    title_lines: int = 2
    subtitle_lines: int = 2
    footer_lines: int = 6
    min_width: int = 400


def style_for(cell_width: int, min_font_size: int = 10) -> Style:
    """Font sizes that scale with the cell (18 px labels at 256 px cells), never below `min_font_size`."""
    label = max(min_font_size, min(22, max(12, round(cell_width * 0.07))))
    return Style(
        cell_width=cell_width,
        label_size=label,
        title_size=label + 6,
        small_size=max(min_font_size, label - 4),
        min_size=min(min_font_size, label),
    )


def cell_image_height(cell_width: int, aspects: Sequence[float]) -> int:
    """Height of a cell's image area: the tallest aspect (height/width) at `cell_width`, so all fit."""
    tallest = max((a for a in aspects if a and a > 0 and math.isfinite(a)), default=1.0)
    return max(1, math.ceil(cell_width * tallest))


def letterbox(box: Box, width: int, height: int) -> Box:
    """The largest box of the image's aspect ratio centred inside `box` (true aspect, bars around)."""
    left, top, right, bottom = box
    bw, bh = right - left, bottom - top
    scale = min(bw / width, bh / height)
    w, h = max(1, min(bw, round(width * scale))), max(1, min(bh, round(height * scale)))
    x, y = left + (bw - w) // 2, top + (bh - h) // 2
    return (x, y, x + w, y + h)


def _balanced(n: int, most: int) -> list[range]:
    """Split range(n) into the fewest chunks of at most `most`, as even as possible (8+8, not 15+1)."""
    chunks = math.ceil(n / most)
    size = math.ceil(n / chunks)
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def span(count: int, size: int, gap: int) -> int:
    """Pixels taken by `count` items of `size` separated by `gap`."""
    return count * size + max(0, count - 1) * gap


def split_grid(
    n_rows: int,
    n_cols: int,
    *,
    cell_w: int,
    cell_h: int,
    gap: int,
    chrome_w: int,
    chrome_h: Callable[[int], int],
    min_width: int = 0,
    max_side: int = WEBP_MAX_SIDE,
    max_pixels: int | None = None,
) -> list[tuple[range, range]]:
    """Split a grid into pages that each stay within `max_side` per side and `max_pixels` in area.

    `chrome_w` is the width around the cells (margins, row labels); `chrome_h(width)` the height
    around them for a page of that width (titles, headers, legend, footer wrap narrower pages taller).
    Returns (rows, cols) per page, row-major. Raises ValueError if not even one cell fits a page.
    """

    def width(c: int) -> int:
        return max(min_width, chrome_w + span(c, cell_w, gap))

    def height(r: int, w: int) -> int:
        return chrome_h(w) + span(r, cell_h, gap)

    def fits(r: int, c: int) -> bool:
        w = width(c)
        h = height(r, w)
        return w <= max_side and h <= max_side and (max_pixels is None or w * h <= max_pixels)

    if not fits(1, 1):
        raise ValueError("one cell with its labels is larger than a page may be; use a smaller cell_width")
    cols = 1
    while cols < n_cols and fits(1, cols + 1):
        cols += 1
    col_chunks = _balanced(n_cols, cols)
    widest = max(len(c) for c in col_chunks)
    rows = 1
    while rows < n_rows and fits(rows + 1, widest):
        rows += 1
    return [(r, c) for r in _balanced(n_rows, rows) for c in col_chunks]


@dataclass(frozen=True)
class Text:
    """A block of text to draw: lines from (x, y), each `line_height` apart, aligned within `width`."""

    x: int
    y: int
    width: int
    lines: tuple[str, ...]
    size: int
    role: Literal["title", "subtitle", "header", "row", "legend", "footer"]
    align: Literal["left", "center"] = "left"

    @property
    def height(self) -> int:
        return len(self.lines) * line_height(self.size)


@dataclass(frozen=True)
class CellPlan:
    """Where one grid cell goes on a page: its grid position, whole box, and one box per stacked slot."""

    row: int
    col: int
    box: Box
    slots: tuple[Box, ...]
    captions: tuple[Box, ...]  # caption strip under each slot; empty when not stacked


@dataclass(frozen=True)
class PagePlan:
    """Everything needed to draw one page, in pixels."""

    width: int
    height: int
    rows: range
    cols: range
    texts: tuple[Text, ...]
    cells: tuple[CellPlan, ...]
    number: int = 1  # 1-based among the pages this logical page was split into
    of: int = 1


@dataclass(frozen=True)
class SheetText:
    """The words on one logical page: title, subtitle, axis labels, fixed parameters."""

    title: str
    subtitle: str
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...] = ()  # empty when there is no y axis
    footer: str = ""


def plan_pages(
    text: SheetText,
    *,
    aspect: float,
    n_stack: int,
    style: Style,
    measure: Measure,
    max_side: int = WEBP_MAX_SIDE,
    max_pixels: int | None = None,
) -> list[PagePlan]:
    """Lay out one logical page (one value of the page axis), split into as many pages as the limits need.

    `aspect` is the tallest height/width among the images; `n_stack` how many images share a cell.
    """
    s = style
    lh, small_lh = line_height(s.label_size), line_height(s.small_size)
    slot_w, img_h = s.cell_width, cell_image_height(s.cell_width, [aspect])
    caption_h = small_lh + s.pad if n_stack > 1 else 0
    # Stacked cells: images inside a cell sit close together, cells further apart, so cells read as units.
    slot_gap, gap = (s.gap // 2, s.gap * 4) if n_stack > 1 else (0, s.gap)
    cell_w = span(n_stack, slot_w, slot_gap)
    cell_h = img_h + caption_h

    x_fits = fit_labels(text.x_labels, cell_w - 2 * s.pad, s.header_lines, s.label_size, s.min_size, measure)
    row_w = 0
    if text.y_labels:
        widest = max(measure(label, s.label_size) for label in text.y_labels)
        row_w = int(min(max(cell_w, 160), max(72, math.ceil(widest) + 2 * s.pad)))
    y_fits = fit_labels(
        text.y_labels,
        row_w - 2 * s.pad,
        s.row_label_lines,
        s.label_size,
        s.min_size,
        measure,
        first_legend=1 + sum(f.legend is not None for f in x_fits),
    )
    legend_of = {
        f.legend: label
        for f, label in zip(x_fits + y_fits, text.x_labels + text.y_labels, strict=True)
        if f.legend is not None
    }
    header_h = s.header_lines * lh + 2 * s.pad
    grid_left = s.margin + (row_w + s.gap if row_w else 0)

    def blocks(width: int, legend: Sequence[int], page_note: str) -> tuple[list[Text], int]:
        """Title and subtitle texts (from the top) and the height of everything that is not cells."""
        inner = width - 2 * s.margin
        title = wrap_text(text.title, inner, s.title_size, measure, s.title_lines)
        subtitle = wrap_text(text.subtitle + page_note, inner, s.small_size, measure, s.subtitle_lines)
        top = [Text(s.margin, s.margin, inner, tuple(title), s.title_size, "title")]
        y = s.margin + top[0].height + s.pad
        top.append(Text(s.margin, y, inner, tuple(subtitle), s.small_size, "subtitle"))
        y += top[1].height + s.pad
        legend_lines = [ln for n in legend for ln in wrap_text(f"[{n}] {legend_of[n]}", inner, s.small_size, measure)]
        footer = wrap_text(text.footer, inner, s.small_size, measure, s.footer_lines) if text.footer else []
        # Mirrors the drawing below exactly: pad, legend + pad, footer, pad.
        bottom = s.pad + (len(legend_lines) * small_lh + s.pad if legend_lines else 0) + len(footer) * small_lh + s.pad
        return top, y + header_h + s.gap + bottom + s.margin

    def chrome_h(width: int) -> int:
        return blocks(width, sorted(legend_of), " · page 99/99")[1]

    chunks = split_grid(
        max(1, len(text.y_labels)),
        len(text.x_labels),
        cell_w=cell_w,
        cell_h=cell_h,
        gap=gap,
        chrome_w=grid_left + s.margin,
        chrome_h=chrome_h,
        min_width=s.min_width,
        max_side=max_side,
        max_pixels=max_pixels,
    )
    pages = []
    for number, (rows, cols) in enumerate(chunks, start=1):
        width = max(s.min_width, grid_left + span(len(cols), cell_w, gap) + s.margin)
        legend = [f.legend for i in cols if (f := x_fits[i]).legend is not None]
        if y_fits:
            legend += [f.legend for i in rows if (f := y_fits[i]).legend is not None]
        note = f" · page {number}/{len(chunks)}" if len(chunks) > 1 else ""
        texts, _ = blocks(width, legend, note)
        y = texts[-1].y + texts[-1].height + s.pad
        for j, i in enumerate(cols):
            fit = x_fits[i]
            left = grid_left + j * (cell_w + gap)
            top = y + (header_h - len(fit.lines) * line_height(fit.size)) // 2
            texts.append(Text(left + s.pad, top, cell_w - 2 * s.pad, fit.lines, fit.size, "header", "center"))
        y += header_h + s.gap
        cells = []
        for rj, r in enumerate(rows):
            top = y + rj * (cell_h + gap)
            if y_fits:
                fit = y_fits[r]
                ty = top + max(0, (img_h - len(fit.lines) * line_height(fit.size)) // 2)
                texts.append(Text(s.margin, ty, row_w - s.pad, fit.lines, fit.size, "row"))
            for cj, c in enumerate(cols):
                left = grid_left + cj * (cell_w + gap)
                slots = tuple(
                    (x0, top, x0 + slot_w, top + img_h)
                    for x0 in (left + k * (slot_w + slot_gap) for k in range(n_stack))
                )
                captions = tuple((b[0], b[3], b[2], b[3] + caption_h) for b in slots) if caption_h else ()
                cells.append(CellPlan(r, c, (left, top, left + cell_w, top + cell_h), slots, captions))
        y += span(len(rows), cell_h, gap) + s.pad
        inner = width - 2 * s.margin
        legend_lines = [ln for n in legend for ln in wrap_text(f"[{n}] {legend_of[n]}", inner, s.small_size, measure)]
        if legend_lines:
            texts.append(Text(s.margin, y, inner, tuple(legend_lines), s.small_size, "legend"))
            y += texts[-1].height + s.pad
        if text.footer:
            lines = wrap_text(text.footer, inner, s.small_size, measure, s.footer_lines)
            texts.append(Text(s.margin, y, inner, tuple(lines), s.small_size, "footer"))
            y += texts[-1].height
        height = y + s.pad + s.margin
        pages.append(PagePlan(width, height, rows, cols, tuple(texts), tuple(cells), number, len(chunks)))
    return pages
