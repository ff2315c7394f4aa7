"""`Gallery`: compare and pick from a run in the notebook (an anywidget; its script and styles ship in
``zlab/_static``, nothing is loaded from the network).

What travels between the kernel and the browser, and when:

- once per gallery: the thumbnails (JPEG bytes, as binary buffers of the `thumbs` trait) and the cells'
  labels and parameters (`cells`); changing the axes resends only `cells` (positions), never images;
- on each click or key: nothing, or the selected key (`selected`) — the grid is drawn in the browser;
- on demand: a full-size image, asked for by the browser (message ``{"type": "full", "i": n}``) and
  answered with the file's bytes as a buffer, once per image;
- picks, reruns and exports are messages the kernel answers by updating `picks`, `cells` or `message`.

>>> g = Gallery("runs/tc"); g                     # doctest: +SKIP
>>> g.df[g.df["favourite"]]                       # the starred cells  # doctest: +SKIP
"""

from __future__ import annotations

import os
import traceback
from importlib import resources
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets as t

from zlab.errors import ZlabError
from zlab.views.fallback import LIVE_CLASS, show
from zlab.views.gallery_model import GalleryModel
from zlab.views.gallery_static import static_html

if TYPE_CHECKING:
    import pandas as pd

    from zlab.client import Client

__all__ = ["Gallery"]


def _asset(name: str) -> str:
    return resources.files("zlab").joinpath("_static", name).read_text(encoding="utf-8")


class Gallery(anywidget.AnyWidget):
    """Browse, compare and pick the images of a run.

    `source`: a run directory, a `RunResult` or a results DataFrame (images relative to `root`, default
    the run directory). The grid's rows, columns and pages are the sweep's axes (change them in the bar).
    Click a cell (or Enter) to see it full size, ←/→/↑/↓ to move, PageUp/PageDown for pages, F to star,
    1–5 to rate, A/B to pick two cells and C to compare them (side by side, swipe or flicker). Stars and
    ratings are written to ``DIR/picks.json`` at once and appear as `favourite`/`rating` columns of `.df`.
    "rerun" generates the cell again with another seed through `client` (or a new `zlab.Client`);
    "export" copies the chosen cells' images, a sheet of them and their rows to ``DIR/exports/<time>``.
    """

    _esm = t.Unicode(_asset("gallery.js")).tag(sync=True)
    _css = t.Unicode(_asset("gallery.css")).tag(sync=True)
    live_class = t.Unicode(LIVE_CLASS).tag(sync=True)
    static_id = t.Unicode("").tag(sync=True)  # the id of the static copy shown before the widget
    columns = t.List(t.Unicode()).tag(sync=True)
    x = t.Unicode("").tag(sync=True)
    y = t.Unicode("").tag(sync=True)
    page = t.Unicode("").tag(sync=True)
    x_labels = t.List(t.Unicode()).tag(sync=True)
    y_labels = t.List(t.Unicode()).tag(sync=True)
    page_labels = t.List(t.Unicode()).tag(sync=True)
    cells = t.List(t.Dict()).tag(sync=True)
    thumbs = t.List(t.Bytes()).tag(sync=True)
    cell_width = t.Int(192).tag(sync=True)
    aspect = t.Float(1.0).tag(sync=True)
    selected = t.Unicode("").tag(sync=True)  # the key of the selected cell
    page_index = t.Int(0).tag(sync=True)
    picks = t.Dict().tag(sync=True)
    note = t.Unicode("").tag(sync=True)
    message = t.Unicode("").tag(sync=True)
    can_write = t.Bool(True).tag(sync=True)

    def __init__(
        self,
        source: Any,
        *,
        root: str | os.PathLike[str] | None = None,
        cell_width: int = 192,
        client: Client | None = None,
    ) -> None:
        self.model = GalleryModel(source, root=root, cell_width=cell_width, client=client)
        super().__init__(cell_width=cell_width, can_write=self.model.root is not None)
        self.static_id = str(self.model_id)
        self.thumbs = self.model.thumbnails()
        self._publish()
        self.observe(self._on_axes, names=["x", "y", "page"])
        self.on_msg(self._on_msg)

    # ------------------------------------------------------------ model → traits

    def _publish(self) -> None:
        m = self.model
        with self.hold_sync():
            self.columns = list(m.columns)
            self.x, self.y, self.page = m.x or "", m.y or "", m.page or ""
            self.x_labels, self.y_labels = list(m.grid.x.labels), list(m.grid.y.labels)
            self.page_labels = m.page_labels()
            self.aspect = m.aspect()
            self.cells = m.cells()
            self.picks = m.picks
            self.note = m.note
            self.page_index = min(self.page_index, m.page_count - 1)
            if not self.selected and self.cells:
                self.selected = self.cells[0]["key"]

    def _on_axes(self, change: dict[str, Any]) -> None:
        m = self.model
        if (self.x or None, self.y or None, self.page or None) == (m.x, m.y, m.page):
            return  # our own _publish echoing back
        m.choose(change["name"], change["new"] or None)  # a column already on another axis swaps with it
        self._publish()

    # ------------------------------------------------------------ browser → kernel

    def _on_msg(self, _widget: Any, content: dict[str, Any], _buffers: list[bytes]) -> None:
        kind = content.get("type")
        try:
            if kind == "full":
                self._send_full(int(content["i"]))
            elif kind == "pick":
                self.pick(content["key"], favourite=content.get("favourite"), rating=content.get("rating"))
                self.send({"type": "picked", "key": content["key"]})  # the browser stops waiting for an answer
            elif kind == "rerun":
                seed = content.get("seed")
                self.rerun(content["key"], int(seed) if seed not in (None, "") else None)
            elif kind == "export":
                self.export(content.get("keys") or None)
        except ZlabError as exc:
            self.message = f"⚠ {exc}"
        except Exception as exc:  # a handler's traceback would reach no one: show it in the widget
            self.message = f"⚠ {type(exc).__name__}: {exc}"
            traceback.print_exc()

    def _send_full(self, i: int) -> None:
        detail = self.model.detail(i)
        head = {"type": "full", "i": i, "mime": detail.mime, "note": detail.note}
        self.send(head, [detail.image] if detail.image else [])

    # ------------------------------------------------------------ actions (also callable from Python)

    @property
    def df(self) -> pd.DataFrame:
        """The results with `favourite` and `rating` columns from ``DIR/picks.json``."""
        return self.model.df

    def pick(self, key: str, *, favourite: bool | None = None, rating: int | None = None) -> None:
        """Star (`favourite`) or rate (0–5) the cell with `key`; saved to picks.json at once."""
        self.model.pick(key, favourite=favourite, rating=rating)
        self.picks = self.model.picks

    def rerun(self, key: str, seed: int | None = None) -> str:
        """Generate the cell `key` again with `seed` (random when None); it joins the grid. Returns its key."""
        self.message = f"rerunning {key[:10]} with seed {seed if seed is not None else '(random)'} …"
        new = self.model.rerun(key, seed)
        thumbs = self.model.thumbnails()
        with self.hold_sync():
            self.thumbs = thumbs  # the table grew: one more thumbnail (sent with the others, once)
            self._publish()
            self.selected = new
        self.message = f"rerun done: {new[:10]}"
        return new

    def export(self, keys: list[str] | None = None, out: str | os.PathLike[str] | None = None) -> str:
        """Export the chosen cells (default: the starred ones) and return the folder."""
        if keys is None:
            keys = [k for k, p in self.model.picks.items() if p.get("favourite")]
        folder = self.model.export(keys, out)
        self.message = f"exported {len(keys)} cell(s) to {folder}"
        return str(folder)

    # ------------------------------------------------------------ display

    def static_html(self) -> str:
        """The static view (every page, thumbnails embedded): what a saved notebook or report shows."""
        return static_html(self.model)

    def _ipython_display_(self) -> None:
        show(self, self.static_html(), repr(self))

    def __repr__(self) -> str:
        m = self.model
        return f"<Gallery x={m.x} y={m.y} page={m.page}: {m.page_count} page(s), {len(m.rows)} results>"
