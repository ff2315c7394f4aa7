"""The HTML sheet: one self-contained file, thumbnails embedded as data URIs, full images linked.

Hovering a thumbnail shows its parameters (the ``title`` attribute, so it works with no script);
clicking opens the full-size image, linked relative to where the HTML file is written (or, portable,
copied into a folder beside it). There is one
table per value of the page axis, labelled like the PNG sheet; HTML has no size limit, so no paging.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from PIL import Image

from zlab.sheet import thumbs
from zlab.sheet.cells import norm_value, parameter_columns, placeholder_reason, stack_caption
from zlab.sheet.layout import axis_label, cell_image_height, format_value

if TYPE_CHECKING:
    from zlab.sheet.sheet import ContactSheet

_CSS = """
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:16px;color:#1c1c1c;background:#fff}
h1{font-size:20px;margin:0 0 4px}
.sub,.foot{color:#5f5f5f;font-size:13px;margin:4px 0 12px;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%%}
table{border-collapse:separate;border-spacing:4px;width:max-content}
table.stack{border-spacing:16px 6px}
th{font-weight:normal;font-size:14px;vertical-align:middle;overflow-wrap:anywhere}
thead th{text-align:center}
tbody th{text-align:left;min-width:%(label)dpx;max-width:20em;position:sticky;left:0;background:#fff;z-index:1}
td{padding:0;vertical-align:top;text-align:center}
.cell{display:flex;gap:8px}
.slot{width:%(w)dpx}
.slot a,.slot .ph{display:flex;align-items:center;justify-content:center;width:%(w)dpx;height:%(h)dpx;
 background:#ececec}
.slot img{max-width:100%%;max-height:100%%;display:block}
.ph{font-size:13px;padding:6px;box-sizing:border-box;border:2px solid #50505a;background:#e2e2e8;
 color:#50505a;overflow-wrap:anywhere}
.ph.failed{border-color:#aa1e1e;background:#fce2e2;color:#aa1e1e}
.cap{font-size:12px;color:#5f5f5f;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
"""


def data_uri(image: Image.Image, quality: int = 85) -> str:
    """`image` as an embedded JPEG ``data:`` URI."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def relative_href(target: Path, html_dir: Path) -> str:
    """A URL from the HTML file's folder to `target`, so the file and run directory move together."""
    rel = os.path.relpath(Path(target).resolve(), html_dir.resolve())
    return quote(Path(rel).as_posix())


def hover_text(row: Any, params: list[str]) -> str:
    """The tooltip of a cell: key, status, and every parameter that is set, one per line."""
    lines = [f"key: {row.get('key')}"] if row.get("key") is not None else []
    if row.get("status") is not None:
        lines.append(f"status: {row.get('status')}")
    for c in params:
        v = norm_value(row[c])
        if v is not None:
            lines.append(f"{c}: {format_value(v)}")
    return "\n".join(lines)


def _full_path(sheet: ContactSheet, i: int) -> Path | None:
    row = sheet.grid.placed.iloc[i]
    if placeholder_reason(row.get("status"), row.get("error"), row.get("image_path")) is not None:
        return None
    return (sheet.root or Path()) / str(row["image_path"])


def _href(full: Path, html_dir: Path, files: Path | None) -> str:
    """The full image's link: relative to the run directory, or (`files`, the portable form) to a copy in
    the folder beside the HTML file, which moves with it."""
    if files is None:
        return relative_href(full, html_dir)
    files.mkdir(parents=True, exist_ok=True)
    copy = files / full.name
    if not copy.is_file() or copy.stat().st_size != full.stat().st_size:
        shutil.copyfile(full, copy)
    return quote(f"{files.name}/{full.name}")


def _slot(
    sheet: ContactSheet,
    i: int,
    tile: Image.Image | thumbs.Missing,
    html_dir: Path,
    params: list[str],
    files: Path | None,
) -> str:
    row = sheet.grid.placed.iloc[i]
    tip = escape(hover_text(row, params), quote=True)
    caption = ""
    if sheet.grid.stacked:
        text = stack_caption({c: norm_value(row[c]) for c in sheet.grid.stacked})
        caption = f'<div class="cap" title="{escape(text)}">{escape(text)}</div>'
    if isinstance(tile, Image.Image):
        href = _href((sheet.root or Path()) / str(row["image_path"]), html_dir, files)
        img = f'<img src="{data_uri(tile)}" alt="{escape(str(row.get("key")))}" title="{tip}">'
        return f'<div class="slot"><a href="{href}" target="_blank">{img}</a>{caption}</div>'
    reason = placeholder_reason(row.get("status"), row.get("error"), row.get("image_path")) or tile.reason
    kind = "ph failed" if reason.startswith(("failed", "cancelled")) else "ph"
    return f'<div class="slot"><div class="{kind}" title="{tip}">{escape(reason)}</div>{caption}</div>'


def render_html(sheet: ContactSheet, html_dir: Path, files: Path | None = None) -> str:
    """The whole document as a string; thumbnails come from the sheet's thumbnail cache. With `files`, the
    full images are copied there and linked from it (see `write_html`)."""
    grid, style = sheet.grid, sheet.style
    params = parameter_columns(grid.placed)
    slot_h = cell_image_height(style.cell_width, [sheet.aspect])
    label_w = max(120, style.cell_width // 2)
    css = _CSS % {"w": style.cell_width, "h": slot_h, "label": label_w}
    # The table keeps its natural width (it scrolls sideways in a narrow window) and every column its own:
    # a long header wraps inside its column, and row labels never shrink to a letter per line.
    k = grid.n_stack
    cols = ([f'<col style="width:{label_w}px">'] if grid.y.column else []) + [
        f'<col style="width:{k * style.cell_width + (k - 1) * 8}px">'
    ] * len(grid.x)
    axes = " · ".join(f"{n}: {c}" for n, c in (("x", grid.x.column), ("y", grid.y.column)) if c)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(sheet.title[:120])}</title><style>{css}</style></head><body>",
        f"<h1>{escape(sheet.title)}</h1>",
    ]
    for g, gval in enumerate(grid.page.values):
        note = axes + (f" · {axis_label(grid.page.column, gval)}" if grid.page.column else "")
        stacked = ' class="stack"' if k > 1 else ""
        parts.append(f'<section><div class="sub">{escape(note)}</div><div class="scroll"><table{stacked}>')
        parts.append(f"<colgroup>{''.join(cols)}</colgroup>")
        parts.append("<thead><tr>")
        if grid.y.column:
            parts.append("<th></th>")
        parts += [f'<th scope="col">{escape(label)}</th>' for label in grid.x.labels]
        parts.append("</tr></thead><tbody>")
        cells = grid.cells(g)
        order = [i for rows in cells.values() for i in rows]
        # Decoded (or read from the cache) a page at a time, on the same worker threads as the PNG sheet.
        tiles = dict(
            zip(
                order,
                thumbs.load_many([_full_path(sheet, i) for i in order], style.cell_width, sheet.cache),
                strict=True,
            )
        )
        for r, ylabel in enumerate(grid.y.labels):
            parts.append("<tr>")
            if grid.y.column:
                parts.append(f'<th scope="row">{escape(ylabel)}</th>')
            for c in range(len(grid.x)):
                rows = cells.get((r, c), [])
                slots = [_slot(sheet, i, tiles[i], html_dir, params, files) for i in rows] or [
                    '<div class="slot"><div class="ph">no result</div></div>'
                ]
                parts.append(f'<td><div class="cell">{"".join(slots)}</div></td>')
            parts.append("</tr>")
        parts.append("</tbody></table></div></section>")
    if sheet.footer:
        parts.append(f'<div class="foot">{escape(sheet.footer)}</div>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(sheet: ContactSheet, path: str | os.PathLike[str], *, portable: bool = False) -> Path:
    """Write `sheet` as one HTML file at `path`; returns the path.

    The full images are linked where they are (relative to `path`: the page works while it stays put, or
    moves together with the run directory); `portable` copies them into ``<name>_files/`` beside the page
    instead, so the page and that folder can be moved or mailed anywhere together."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = path.parent / f"{path.stem}_files" if portable else None
    path.write_text(render_html(sheet, path.parent, files), encoding="utf-8")
    return path
