"""Results as an HTML table with a thumbnail per row, for notebooks and papermill reports.

Thumbnails are embedded as JPEG data URIs, so the table survives nbconvert and works in a report
opened anywhere; they are read through the contact sheet's thumbnail cache, so showing a table
after a sheet costs almost nothing.

>>> thumbnail_table(res.df)   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image

from zlab.errors import ValidationError
from zlab.runs.tables import varying_columns
from zlab.sheet import thumbs
from zlab.sheet.cells import norm_value
from zlab.sheet.layout import format_value

MAX_ROWS = 200  # every row embeds an image: a report with thousands would be tens of megabytes


@dataclasses.dataclass(frozen=True)
class ThumbnailTable:
    """An HTML table (`.html`) that a notebook shows inline; `.save(path)` writes it as a page."""

    html: str
    rows: int
    shown: int

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<!doctype html><meta charset='utf-8'><body>{self.html}</body>", encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"<ThumbnailTable {self.shown} of {self.rows} rows>"


def default_columns(df: pd.DataFrame) -> list[str]:
    """What varies, then how each cell ran; `error` only when some cell has one."""
    facts = ["status", "error", "run_s", "key"]
    if "error" not in df.columns or not df["error"].notna().any():
        facts.remove("error")
    return [*varying_columns(df), *(c for c in facts if c in df.columns)]


def data_uri(image: Image.Image, quality: int = 85) -> str:
    """`image` as an embedded JPEG ``data:`` URI (thumbnails are photos: JPEG is a fraction of PNG)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(column: str, value: object) -> str:
    value = norm_value(value)
    if value is None:
        return ""
    if column.endswith("_s") and isinstance(value, float):
        return f"{value:.2f}"
    return html.escape(format_value(value))


def thumbnail_table(
    df: pd.DataFrame,
    root: str | os.PathLike[str] | None = None,
    width: int = 96,
    *,
    columns: Sequence[str] | None = None,
    max_rows: int = MAX_ROWS,
) -> ThumbnailTable:
    """One row per result: a `width`-px thumbnail, then `columns` (default: the varying parameters,
    status, run time and key). Images are read relative to `root` (default ``df.attrs["run_dir"]``);
    a row without a readable image shows why instead. At most `max_rows` rows are drawn."""
    if not isinstance(width, int) or not 16 <= width <= 1024:
        raise ValidationError("width", width, "an integer from 16 to 1024")
    columns = list(columns) if columns is not None else default_columns(df)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValidationError("columns", missing[0], f"a column of: {', '.join(map(str, df.columns))}")
    run_dir = Path(root) if root is not None else (Path(df.attrs["run_dir"]) if df.attrs.get("run_dir") else None)
    shown = df.head(max_rows)
    paths = [
        (run_dir or Path()) / p if isinstance(p, str) and p else None
        for p in (shown["image_path"] if "image_path" in shown.columns else [None] * len(shown))
    ]
    cache = thumbs.cache_dir(run_dir) if run_dir is not None else None
    tiles = thumbs.load_many(paths, width, cache)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["image", *columns])
    body = []
    for (_, row), tile in zip(shown.iterrows(), tiles, strict=True):
        if isinstance(tile, thumbs.Missing):
            image = f"<span style='color:#777'>{html.escape(tile.reason)}</span>"
        else:
            alt = html.escape(str(row.get("key", "")), quote=True)
            image = f"<img src='{data_uri(tile)}' width='{tile.width}' height='{tile.height}' alt='{alt}'>"
        cells = "".join(f"<td>{_cell(c, row[c])}</td>" for c in columns)
        body.append(f"<tr><td>{image}</td>{cells}</tr>")
    more = (
        f"<p>showing the first {len(shown)} of {len(df)} rows (max_rows={max_rows})</p>" if len(df) > len(shown) else ""
    )
    table = f"<table class='zlab-thumbs'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"
    return ThumbnailTable(table, len(df), len(shown))
