"""Pillow rendering of a planned page: text blocks, thumbnails letterboxed in their slots, placeholders.

All positions come from `layout.plan_pages`; this module only paints them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from zlab.sheet.layout import Box, PagePlan, Style, letterbox, line_height, truncate, wrap_text
from zlab.sheet.thumbs import Missing

BACKGROUND = (255, 255, 255)
INK = (28, 28, 28)
MUTED = (95, 95, 95)
LETTERBOX = (236, 236, 236)
"""Bars around an image whose aspect ratio is not the cell's."""
FAILED_FILL, FAILED_INK = (252, 226, 226), (170, 30, 30)
MISSING_FILL, MISSING_INK = (226, 226, 232), (80, 80, 90)
"""Placeholders: red for failed/cancelled cells, grey for cells with no image (missing, pending, empty)."""

Tile = Image.Image | Missing
Slot = tuple[int, int, int]
"""(row, col, slot index inside a stacked cell)."""


@lru_cache(maxsize=1)
def font_path() -> str | None:
    """A scalable TrueType font: DejaVu Sans from the system, else the copy matplotlib ships."""
    candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/Library/Fonts/DejaVuSans.ttf",
    ]
    try:
        import matplotlib

        candidates.append(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    return next((p for p in candidates if Path(p).is_file()), None)


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The sheet font at `size` px; Pillow's own scalable default when no DejaVu file is found."""
    path = font_path()
    if path:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def measure(text: str, size: int) -> float:
    """Width in pixels of `text` at `size`: the `Measure` the layout is planned with."""
    return float(font(size).getlength(text))


def _lines(
    draw: ImageDraw.ImageDraw,
    x: int,
    y: int,
    width: int,
    lines: Sequence[str],
    size: int,
    fill: tuple[int, int, int],
    center: bool,
) -> None:
    f, lh = font(size), line_height(size)
    for i, line in enumerate(lines):
        dx = (width - measure(line, size)) / 2 if center else 0
        draw.text((x + max(0.0, dx), y + i * lh), line, font=f, fill=fill)


def draw_placeholder(draw: ImageDraw.ImageDraw, box: Box, reason: str, style: Style) -> None:
    """A tile that says why there is no image: e.g. ``failed: out of memory``, ``file missing: a.png``."""
    failed = reason.startswith(("failed", "cancelled"))
    fill, ink = (FAILED_FILL, FAILED_INK) if failed else (MISSING_FILL, MISSING_INK)
    left, top, right, bottom = box
    draw.rectangle((left, top, right - 1, bottom - 1), fill=fill, outline=ink, width=2)
    size = max(style.min_size, style.small_size)
    inner = right - left - 2 * style.pad
    room = max(1, (bottom - top - 2 * style.pad) // line_height(size))
    lines = wrap_text(reason, inner, size, measure, max_lines=room)
    y = top + (bottom - top - len(lines) * line_height(size)) // 2
    _lines(draw, left + style.pad, y, inner, lines, size, ink, center=True)


def paste_thumbnail(page: Image.Image, box: Box, thumb: Image.Image) -> Box:
    """Paste `thumb` letterboxed in `box` (true aspect ratio); returns where the image landed."""
    page.paste(LETTERBOX, box)
    target = letterbox(box, thumb.width, thumb.height)
    size = (target[2] - target[0], target[3] - target[1])
    if thumb.size != size:
        thumb = thumb.resize(size, Image.Resampling.LANCZOS)
    page.paste(thumb, target[:2])
    return target


def render_page(
    plan: PagePlan,
    tiles: Iterable[tuple[Slot, Tile]],
    captions: Mapping[Slot, str],
    style: Style,
) -> tuple[Image.Image, dict[Slot, Box]]:
    """Paint one page. `tiles` yields ((row, col, slot), thumbnail or why there is none), and is
    consumed as it comes, so only the thumbnails not yet pasted are in memory.

    Returns the page and, per (row, col, slot), the box its image (or placeholder) occupies.
    Grid positions that get no tile are marked "no result".
    """
    page = Image.new("RGB", (plan.width, plan.height), BACKGROUND)
    draw = ImageDraw.Draw(page)
    for t in plan.texts:
        ink = MUTED if t.role in ("subtitle", "legend", "footer") else INK
        _lines(draw, t.x, t.y, t.width, t.lines, t.size, ink, center=t.align == "center")
    where = {(c.row, c.col, k): (c, k) for c in plan.cells for k in range(len(c.slots))}
    placed: dict[Slot, Box] = {}
    for pos, tile in tiles:
        cell, k = where[pos]
        slot = cell.slots[k]
        if isinstance(tile, Missing):
            draw_placeholder(draw, slot, tile.reason, style)
            placed[pos] = slot
        else:
            placed[pos] = paste_thumbnail(page, slot, tile)
        if cell.captions and pos in captions:
            cap = cell.captions[k]
            width = cap[2] - cap[0]
            text = truncate(captions[pos], width, style.small_size, measure)
            _lines(draw, cap[0], cap[1] + style.pad // 2, width, [text], style.small_size, MUTED, True)
    for cell in plan.cells:
        if (cell.row, cell.col, 0) not in placed:  # a grid position no result landed on
            draw_placeholder(draw, cell.slots[0], "no result", style)
    return page, placed
