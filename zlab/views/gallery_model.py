"""The gallery's state and decisions, without widgets: which columns can be axes, where each result sits
on the (page, y, x) grid, its thumbnail and full image, its parameters, and the picks, reruns and exports
a person makes from it.

`zlab.views.gallery.Gallery` is a thin view over `GalleryModel`: the browser side lays out the grid and
handles the keyboard; every decision that needs the data (layout, images, picks, reruns, exports) is a
method here, so a script or a test can drive the model directly.

>>> model = GalleryModel("runs/tc")                          # doctest: +SKIP
>>> model.set_axes(x="lora1_scale", y="seed")                # doctest: +SKIP
>>> model.cells()[0]["label"], model.thumbnails()[0][:3]      # doctest: +SKIP
('seed 1 · lora1_scale 0', b'\\xff\\xd8\\xff')
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image

from zlab.core.request import Request
from zlab.core.table import is_bookkeeping, norm_value, request_from_row
from zlab.errors import ValidationError, ZlabError
from zlab.runs.tables import open_results, read_picks, set_pick, sheet_axes, varying_columns, with_picks
from zlab.sheet import VaryingColumnsError, thumbs
from zlab.sheet.cells import Grid, assign, placeholder_reason, stack_caption
from zlab.sheet.layout import axis_label, format_value

if TYPE_CHECKING:
    from zlab.client import Client

__all__ = ["Detail", "GalleryModel", "cell_parameters", "request_of"]

_RUN_FACTS = ("status", "error", "key", "request_id", "queue_s", "run_s", "image_path")
_NOT_SHOWN = ("cached", "favourite", "rating")
_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".png": "image/png"}


def cell_parameters(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the detail pane lists for one result: its parameters (unset LoRA slots left out), then how it ran."""
    pairs = []
    params = [c for c in row if isinstance(c, str) and not is_bookkeeping(c)]
    for column in [*params, *_RUN_FACTS]:
        if column in _NOT_SHOWN or column not in row:
            continue
        value = norm_value(row[column])
        if value is None or value == "":
            continue
        text = f"{value:.2f} s" if column.endswith("_s") and isinstance(value, float) else format_value(value)
        pairs.append((column, text))
    return pairs


def request_of(row: Mapping[str, Any], **changes: Any) -> Request:
    """The `zlab.Request` a result row was generated from (with `changes`, e.g. ``seed=7``)."""
    return request_from_row(row, **changes)


@dataclasses.dataclass(frozen=True)
class Detail:
    """One cell: its full image (file bytes and MIME type; None when there is none) and parameters."""

    title: str
    image: bytes | None
    mime: str
    parameters: list[tuple[str, str]]
    note: str | None = None


class GalleryModel:
    """A results table laid out as pages of a (y, x) grid, with the picks stored beside it.

    `source`: a run directory, a `RunResult` or a results DataFrame (images relative to `root`, default
    the run directory). `x`, `y`, `page` name the axes (default: the varying columns by
    `zlab.runs.tables.AXIS_PREFERENCE`). `rows` is the table the gallery shows (one row per distinct request;
    row numbers index `thumbnails()` and never change when the axes do). When other columns vary inside
    a cell, the cell holds several images side by side and `note` says which columns.
    """

    def __init__(
        self,
        source: Any,
        *,
        root: str | os.PathLike[str] | None = None,
        cell_width: int = 192,
        client: Client | None = None,
    ) -> None:
        df, found = open_results(source)
        self.root = Path(root) if root is not None else found
        self.cell_width = cell_width
        self.client = client
        self.note = ""
        self._load(df)
        self.x, self.y, self.page = sheet_axes(self.columns)
        self._layout()

    # ------------------------------------------------------------ the table

    def _load(self, df: pd.DataFrame) -> None:
        if df.empty:
            raise ValidationError("results", "an empty table", "at least one result row")
        # One row per request (a resumed run may list a key twice): the grid's own choice of the best row.
        self.rows = assign(df, None, stack=True).placed.drop(columns=["sheet_group", "sheet_row", "sheet_col"])
        self.rows = self.rows.drop(columns=["sheet_slot"]).reset_index(drop=True)
        self.rows.attrs = dict(df.attrs)
        self.columns = varying_columns(self.rows)
        self._thumbs: list[bytes] | None = None

    @property
    def df(self) -> pd.DataFrame:
        """The rows with `favourite` and `rating` from the run directory's picks.json."""
        return with_picks(self.rows, self.root)

    @property
    def picks(self) -> dict[str, dict[str, Any]]:
        return read_picks(self.root)

    # ------------------------------------------------------------ axes and layout

    def set_axes(self, x: str | None, y: str | None = None, page: str | None = None) -> str:
        """Lay out with new axes and return `note`: why a choice was refused (the layout stays), a remark
        that cells are stacked, or "" when all is well."""
        chosen = [c for c in (x, y, page) if c]
        if len(set(chosen)) < len(chosen):
            return self._fail("x, y and page must be different columns")
        unknown = [c for c in chosen if c not in self.rows.columns]
        if unknown:
            return self._fail(f"no column {unknown[0]!r}; choose from {', '.join(self.columns)}")
        before = (self.x, self.y, self.page)
        self.x, self.y, self.page = x, y, page
        try:
            self._layout()
        except ZlabError as exc:
            self.x, self.y, self.page = before
            self._layout()
            return self._fail(str(exc))
        return self.note

    def choose(self, axis: str, column: str | None) -> str:
        """Put `column` on one axis ("x", "y" or "page"); if another axis holds it, the two swap."""
        names = ("x", "y", "page")
        if axis not in names:
            raise ValidationError("axis", axis, "'x', 'y' or 'page'")
        current = dict(zip(names, (self.x, self.y, self.page), strict=True))
        for other, held in current.items():
            if column is not None and held == column and other != axis:
                current[other] = current[axis]
        current[axis] = column
        return self.set_axes(current["x"], current["y"], current["page"])

    def _fail(self, reason: str) -> str:
        self.note = reason
        return reason

    def _layout(self) -> None:
        self.note = ""
        try:
            self.grid: Grid = assign(self.rows, self.x, self.y, self.page)
        except VaryingColumnsError as exc:
            self.grid = assign(self.rows, self.x, self.y, self.page, stack=True)
            cols, one = ", ".join(exc.columns), len(exc.columns) == 1
            self.note = (
                f"stacked: {cols} {'varies' if one else 'vary'} inside a cell too; "
                f"put {'it' if one else 'them'} on y or page to give each image its own cell"
            )

    @property
    def page_count(self) -> int:
        return len(self.grid.page)

    def page_labels(self) -> list[str]:
        """'page 2 of 3 · size 768x1344' for each page."""
        n = self.page_count
        return [
            f"page {g + 1} of {n}" + (f" · {axis_label(self.page, v)}" if self.page else "")
            for g, v in enumerate(self.grid.page.values)
        ]

    def aspect(self) -> float:
        """The tallest height/width among the images: every cell gets this box (no image is stretched)."""
        ratios = [
            float(h) / float(w)
            for w, h in zip(self.rows.get("width", []), self.rows.get("height", []), strict=False)
            if isinstance(norm_value(w), int | float) and isinstance(norm_value(h), int | float) and float(w) > 0
        ]
        return max(ratios, default=1.0)

    def cells(self) -> list[dict[str, Any]]:
        """One entry per row (in row order): where it sits and what it is, as plain JSON for the view."""
        placed = self.grid.placed
        out = []
        for i in range(len(placed)):
            row = placed.iloc[i]
            record = row.to_dict()
            reason = placeholder_reason(record.get("status"), record.get("error"), record.get("image_path"))
            out.append(
                {
                    "i": i,
                    "key": str(record.get("key")),
                    "label": self.label(record),
                    "caption": stack_caption({c: norm_value(record[c]) for c in self.grid.stacked}),
                    "page": int(row["sheet_group"]),
                    "row": int(row["sheet_row"]),
                    "col": int(row["sheet_col"]),
                    "slot": int(row["sheet_slot"]),
                    "status": str(record.get("status")),
                    "note": reason,
                    "params": [list(p) for p in cell_parameters(record)],
                    "request": self._request_fields(record),
                }
            )
        return out

    def label(self, record: Mapping[str, Any]) -> str:
        stacked = self.grid.stacked
        parts = [axis_label(c, norm_value(record[c])) for c in (self.page, self.y, self.x, *stacked) if c]
        return " · ".join(parts) or str(record.get("key"))

    @staticmethod
    def _request_fields(record: Mapping[str, Any]) -> dict[str, Any] | None:
        """What "copy parameters" copies: the request as the API's input JSON (None if it cannot be rebuilt)."""
        try:
            return dict(request_of(record).to_input())
        except (ZlabError, TypeError, ValueError):
            return None

    # ------------------------------------------------------------ images

    def thumbnails(self) -> list[bytes]:
        """A JPEG thumbnail per row (b"" where there is no image), decoded once through the sheet's cache."""
        if self._thumbs is None:
            cache = thumbs.cache_dir(self.root) if self.root is not None else None
            tiles = thumbs.load_many(self._paths(), self.cell_width, cache)
            self._thumbs = [b"" if isinstance(t, thumbs.Missing) else _jpeg(t) for t in tiles]
        return self._thumbs

    def _paths(self) -> list[Path | None]:
        out: list[Path | None] = []
        for record in self.rows.to_dict("records"):
            reason = placeholder_reason(record.get("status"), record.get("error"), record.get("image_path"))
            out.append(None if reason else (self.root or Path()) / str(record["image_path"]))
        return out

    def detail(self, i: int) -> Detail:
        """Row `i`'s full image (the file's bytes, as written by the run) and its parameters."""
        if not 0 <= i < len(self.rows):
            raise ValidationError("cell", i, f"a row number from 0 to {len(self.rows) - 1}")
        record = self.grid.placed.iloc[i].to_dict()
        params = cell_parameters(record)
        path = self._paths()[i]
        if path is None:
            reason = placeholder_reason(record.get("status"), record.get("error"), record.get("image_path"))
            return Detail(self.label(record), None, "", params, reason or "no image")
        try:
            data = path.read_bytes()
        except OSError as exc:
            return Detail(self.label(record), None, "", params, f"cannot read {path.name}: {exc.strerror or exc}")
        return Detail(self.label(record), data, _MIME.get(path.suffix.lower(), "image/png"), params)

    def index_of(self, key: str) -> int:
        hits = [i for i, k in enumerate(self.rows["key"]) if k == key]
        if not hits:
            raise ValidationError("key", key, "the key of a result in this gallery")
        return hits[0]

    # ------------------------------------------------------------ picks, reruns, exports

    def pick(self, key: str, *, favourite: bool | None = None, rating: int | None = None) -> dict[str, Any]:
        """Star or rate one cell; written to ``root/picks.json`` at once. Returns that cell's pick."""
        if self.root is None:
            raise ValidationError("root", None, "a run directory to keep picks in", "pass root=… to the gallery")
        self.index_of(key)
        picks = set_pick(self.root, key, favourite=favourite, rating=rating)
        return picks.get(key, {"favourite": False, "rating": 0})

    def rerun(self, key: str, seed: int | None = None) -> str:
        """Generate cell `key` again with another seed (random when None) into the same run directory, add
        it to the table and return its key. Uses the gallery's client, else a new one (closed after)."""
        from zlab.runs.sweep import Sweep

        if self.root is None:
            raise ValidationError("root", None, "a run directory to run into", "pass root=… to the gallery")
        record = self.rows.iloc[self.index_of(key)].to_dict()
        seed = random.randrange(1, 2**31) if seed is None else seed
        request = request_of(record, seed=seed)
        extra = {c: record[c] for c in self.rows.columns if c == "size"}
        client = self.client
        own = client is None
        if client is None:
            from zlab.client import Client

            client = Client()
        try:
            quiet = {"progress": False, "sheet": False, "echo": lambda _line: None}  # the widget says what happened
            res = client.run(Sweep(request, name="gallery-rerun"), self.root, **quiet)
        finally:
            if own:
                client.close()
        new = res.df.assign(**extra) if extra else res.df
        merged = pd.concat([self.rows, new], ignore_index=True)
        merged = merged.drop_duplicates("key", keep="last").reset_index(drop=True)
        merged.attrs = dict(self.rows.attrs)  # (the run itself added the cell to results.parquet)
        self._load(merged)
        self.set_axes(self.x, self.y, self.page)
        return str(new["key"].iat[0])

    def export(self, keys: Sequence[str], out: str | os.PathLike[str] | None = None) -> Path:
        """Copy the chosen cells' images, a contact sheet of them and their rows (CSV and Parquet) to `out`
        (default ``root/exports/<UTC time>``); returns the folder."""
        from zlab.sheet import contact_sheet

        if not keys:
            raise ValidationError("keys", [], "at least one cell (star some, or pick A and B)")
        index = [self.index_of(k) for k in keys]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        folder = Path(out) if out is not None else (self.root or Path()) / "exports" / stamp
        (folder / "images").mkdir(parents=True, exist_ok=True)
        chosen = self.df.iloc[index].reset_index(drop=True)
        for path in self._paths():
            if path is not None and path in {self._paths()[i] for i in index}:
                shutil.copy2(path, folder / "images" / path.name)
        chosen.to_csv(folder / "rows.csv", index=False)
        chosen.to_parquet(folder / "rows.parquet", index=False)
        if (chosen["status"] == "succeeded").any():
            axes = [a for a in (self.x, self.y, self.page) if a and chosen[a].nunique() > 1]
            x, y, page = (*axes, None, None, None)[:3]
            sheet = contact_sheet(chosen, x, y, page, root=self.root, cell_width=self.cell_width, stack=True)
            sheet.save(folder / "sheet.png")
        return folder


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
