"""Notebook front ends (ipywidgets 8): `SweepBuilder` to design and run a sweep, `Gallery` to browse one.

Both are thin: each widget event copies values into the pure layer (`zlab.frontend` for the builder,
`zlab.gallery.GalleryModel` for the gallery) and shows what comes back. Widget children are public
attributes, so a test (or a script) can set `.value`s and call `.click()` without a browser.

>>> from zlab.widgets import SweepBuilder, Gallery    # doctest: +SKIP
>>> builder = SweepBuilder(); builder                 # doctest: +SKIP
>>> Gallery("runs/tc")                                # doctest: +SKIP

This module is imported only when asked for (`import zlab` does not load ipywidgets). Widgets render
only in a live kernel: papermill reports show them blank, so the report notebooks draw sheets as images.
"""

from __future__ import annotations

import html
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from zlab.config import DEFAULT_PRICE_PER_MP, resolve_settings
from zlab.errors import ZlabError
from zlab.frontend import Form, LoraRow, default_out_dir, plan_summary
from zlab.gallery import GalleryModel
from zlab.request import DEFAULT_LORA_PATH, MAX_LORAS

if TYPE_CHECKING:
    from zlab.client import Client
    from zlab.runner import RunResult
    from zlab.sheet import ContactSheet
    from zlab.sweep import Sweep

__all__ = ["Gallery", "SweepBuilder"]

NONE = "(none)"  # the dropdown entry for "no y / page axis"
_WIDE = {"width": "640px"}
_LABEL = {"description_width": "90px"}


def _sync(widget: Any, **values: Any) -> None:
    """Set several traits at once (one message to the front end, one round of observers)."""
    with widget.hold_trait_notifications():
        for name, value in values.items():
            setattr(widget, name, value)


class SweepBuilder:
    """A form for a sweep: prompt, up to three LoRAs (each a scale range), seeds and sizes.

    The plan line (cells, megapixels, estimated cost and time) updates as you type and shows what is
    wrong instead of raising. **Run** runs the sweep into `out_dir` with a progress bar, then shows a
    `Gallery` of the results. `.sweep` is the sweep the form describes (None while it is invalid),
    `.results` the last `RunResult`, `.sheet` its contact sheet.

    `client`: a `zlab.Client`; by default one is made at the first run (the built-in local server when
    no RUNCOMFY_TOKEN is set). `out_dir`: where runs go; by default ``runs/builder-<fingerprint>``, so
    the same sweep resumes and a changed one gets its own directory.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        prompt: str = "t3chnic4lly vibrant 1960s close-up portrait",
        lora: str = DEFAULT_LORA_PATH,
        out_dir: str | os.PathLike[str] | None = None,
        cell_width: int = 192,
    ) -> None:
        self._client = client
        self.cell_width = cell_width
        self.sweep: Sweep | None = None
        self.results: RunResult | None = None
        self.gallery: Gallery | None = None
        self.price_per_mp = self._price(client)

        self.prompt = w.Textarea(
            prompt, description="prompt", layout=w.Layout(width="640px", height="64px"), style=_LABEL
        )
        self.lora_rows: list[tuple[w.Text, w.BoundedFloatText, w.BoundedFloatText, w.BoundedIntText]] = []
        for i in range(MAX_LORAS):
            first = i == 0
            self.lora_rows.append(
                (
                    w.Text(
                        lora if first else "",
                        description=f"LoRA {i + 1}",
                        placeholder="owner/name or https://…",
                        layout=w.Layout(width="330px"),
                        style=_LABEL,
                    ),
                    w.BoundedFloatText(
                        0.0 if first else 1.0,
                        min=0,
                        max=4,
                        step=0.05,
                        description="from",
                        layout=w.Layout(width="120px"),
                        style={"description_width": "36px"},
                    ),
                    w.BoundedFloatText(
                        1.5 if first else 1.0,
                        min=0,
                        max=4,
                        step=0.05,
                        description="to",
                        layout=w.Layout(width="110px"),
                        style={"description_width": "26px"},
                    ),
                    w.BoundedIntText(
                        4 if first else 1,
                        min=1,
                        max=50,
                        description="steps",
                        layout=w.Layout(width="120px"),
                        style={"description_width": "40px"},
                    ),
                )
            )
        self.seeds = w.Text(
            "1, 2",
            description="seeds",
            placeholder="1, 2, 3  or  1-4  or  0-100 [5]",
            layout=w.Layout(**_WIDE),
            style=_LABEL,
        )
        self.sizes = w.Text(
            "1024x1024", description="sizes", placeholder="1024x1024, 768x1344", layout=w.Layout(**_WIDE), style=_LABEL
        )
        self.concurrency = w.BoundedIntText(
            8, min=1, max=256, description="concurrency", style=_LABEL, layout=w.Layout(width="200px")
        )
        self.out_dir_text = w.Text(
            str(out_dir) if out_dir is not None else "",
            description="out dir",
            placeholder="runs/builder-<fingerprint> (automatic)",
            style=_LABEL,
            layout=w.Layout(**_WIDE),
        )
        self.summary = w.HTML()
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.status = w.HTML()
        self.output = w.Output()  # the progress bar and the run's log lines land here
        self.result_box = w.VBox()
        inputs = [
            self.prompt,
            *(x for row in self.lora_rows for x in row),
            self.seeds,
            self.sizes,
            self.concurrency,
            self.out_dir_text,
        ]
        for widget in inputs:
            widget.observe(self._refresh, names="value")
        self.run_button.on_click(lambda _button: self.run())
        self.widget = w.VBox(
            [
                self.prompt,
                *(w.HBox(list(row)) for row in self.lora_rows),
                self.seeds,
                self.sizes,
                w.HBox([self.concurrency, self.out_dir_text]),
                self.summary,
                w.HBox([self.run_button, self.status]),
                self.output,
                self.result_box,
            ]
        )
        self._refresh()

    @staticmethod
    def _price(client: Client | None) -> float:
        if client is not None:
            return float(client.settings.price_per_mp)
        try:
            return resolve_settings().price_per_mp
        except ZlabError:  # a bad setting shows at the first run, where it matters
            return DEFAULT_PRICE_PER_MP

    # ------------------------------------------------------------ values

    def form(self) -> Form:
        """The widgets' current values as a `zlab.frontend.Form`."""
        rows = tuple(LoraRow(p.value, float(a.value), float(b.value), int(n.value)) for p, a, b, n in self.lora_rows)
        return Form(self.prompt.value, rows, self.seeds.value, self.sizes.value, int(self.concurrency.value))

    @property
    def out_dir(self) -> Path | None:
        """The run directory the next run uses (None while the form is invalid and none was set)."""
        if self.out_dir_text.value.strip():
            return Path(self.out_dir_text.value.strip())
        return Path(default_out_dir(self.sweep)) if self.sweep is not None else None

    @out_dir.setter
    def out_dir(self, value: str | os.PathLike[str] | None) -> None:
        self.out_dir_text.value = "" if value is None else str(value)

    @property
    def client(self) -> Client:
        if self._client is None:
            from zlab.client import Client

            with self.output:  # "using the built-in local server" lands beside the run's log
                self._client = Client()
        return self._client

    @property
    def sheet(self) -> ContactSheet | None:
        return self.gallery.model.sheet if self.gallery is not None else None

    # ------------------------------------------------------------ events

    def _refresh(self, _change: object = None) -> None:
        plan = plan_summary(self.form(), price_per_mp=self.price_per_mp)
        self.sweep = plan.sweep
        color = "#1c1c1c" if plan.ok else "#aa1e1e"
        where = f" → <code>{html.escape(str(self.out_dir))}</code>" if plan.ok else ""
        self.summary.value = f"<span style='color:{color}'>{html.escape(plan.text)}</span>{where}"
        self.run_button.disabled = not plan.ok

    def run(self) -> RunResult | None:
        """Run the current sweep (what the Run button does); returns the result, or None if it failed.

        It runs in the button's callback, so the kernel is busy until the sweep ends; the progress bar
        updates meanwhile, and interrupting the kernel stops the run cleanly (rerun to resume).
        """
        sweep, out = self.sweep, self.out_dir
        if sweep is None or out is None:
            self._say("nothing to run: fix the plan first", error=True)
            return None
        self.run_button.disabled = True
        self._say(f"running {len(sweep)} cells into {out} …")
        self.output.clear_output()
        try:
            with self.output:
                res = self.client.run(sweep, out, concurrency=int(self.concurrency.value), progress=True)
        except KeyboardInterrupt:
            self._say("interrupted: queued jobs were cancelled; run again to resume", error=True)
            return None
        except ZlabError as exc:
            self._say(str(exc), error=True)
            return None
        except Exception as exc:  # a callback's traceback would only reach the browser console; show it here
            with self.output:
                traceback.print_exc()
            self._say(f"{type(exc).__name__}: {exc}", error=True)
            return None
        finally:
            self.run_button.disabled = self.sweep is None
        self.results = res
        self._say(res.summary(), error=not res.ok)
        # The run directory may hold cells of earlier sweeps; the gallery shows this sweep's.
        keys = {cell.key for cell in sweep.cells()}
        df = res.df[res.df["key"].isin(keys)]
        if not (df["status"] == "succeeded").any():
            return res
        try:
            self.gallery = Gallery(df, root=res.out, cell_width=self.cell_width)
        except ZlabError as exc:
            self._say(f"{res.summary()}; no sheet: {exc}", error=True)
            return res
        self.result_box.children = (self.gallery.widget,)
        return res

    def _say(self, text: str, error: bool = False) -> None:
        color = "#aa1e1e" if error else "#1c1c1c"
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"<SweepBuilder {self.sweep!r}>"


class Gallery:
    """Browse a run as contact sheet pages: pick the x / y / page columns, step through pages, pick a
    cell to see its full image and parameters.

    `source`: a run directory, a `RunResult` or a results DataFrame (images relative to `root`,
    default the run directory). One image widget shows the sheet page (the selected cell outlined),
    one the selected cell's full image.
    """

    def __init__(self, source: Any, *, root: str | os.PathLike[str] | None = None, cell_width: int = 192) -> None:
        self.model = GalleryModel(source, root=root, cell_width=cell_width)
        m = self.model
        axes = [NONE, *m.columns]
        small = w.Layout(width="220px")
        self.x = w.Dropdown(options=axes, value=m.x or NONE, description="x", layout=small)
        self.y = w.Dropdown(options=axes, value=m.y or NONE, description="y", layout=small)
        self.page = w.Dropdown(options=axes, value=m.page or NONE, description="page", layout=small)
        self.page_slider = w.IntSlider(0, min=0, max=0, description="page", continuous_update=False)
        self.page_label = w.Label()
        self.note = w.HTML()
        self.sheet_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.cells = w.Select(options=[], rows=10, description="cell", layout=w.Layout(width="320px"))
        self.detail_image = w.Image(format="png", layout=w.Layout(max_width="512px"))
        self.detail_info = w.HTML()
        self._busy = False  # set while we write widgets ourselves, so their observers do not echo back

        for dropdown in (self.x, self.y, self.page):
            dropdown.observe(self._on_axes, names="value")
        self.page_slider.observe(self._on_page, names="value")
        self.cells.observe(self._on_cell, names="value")
        self.widget = w.VBox(
            [
                w.HBox([self.x, self.y, self.page]),
                w.HBox([self.page_slider, self.page_label]),
                self.note,
                self.sheet_image,
                w.HBox([self.cells, w.VBox([self.detail_image, self.detail_info])]),
            ]
        )
        self._show_sheet()

    # ------------------------------------------------------------ events

    def _on_axes(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        axis = {id(self.x): "x", id(self.y): "y", id(self.page): "page"}[id(change["owner"])]
        self.model.choose(axis, None if change["new"] == NONE else change["new"])
        self._show_sheet()

    def _on_page(self, change: dict[str, Any]) -> None:
        if not self._busy:
            self.model.set_page(change["new"])
            self._show_page()

    def _on_cell(self, change: dict[str, Any]) -> None:
        if not self._busy and change["new"] is not None:
            self.model.select(change["new"])
            self._show_selection()

    # ------------------------------------------------------------ model → widgets

    def _show_sheet(self) -> None:
        m = self.model
        self._busy = True
        try:
            # a refused choice leaves the model's axes as they were: put the dropdowns back too
            for dropdown, value in ((self.x, m.x), (self.y, m.y), (self.page, m.page)):
                dropdown.value = value or NONE
            _sync(self.page_slider, max=max(0, m.page_count - 1), value=m.page_index, disabled=m.page_count <= 1)
        finally:
            self._busy = False
        self.note.value = f"<span style='color:#8a5a00'>{html.escape(m.note)}</span>" if m.note else ""
        self._show_page()

    def _show_page(self) -> None:
        m = self.model
        self._busy = True
        try:
            # options first: a Select validates its value against the options it has at that moment
            self.cells.options = m.cells_on_page()
            self.cells.value = m.selected
        finally:
            self._busy = False
        self.page_label.value = m.page_label()
        self._show_selection()

    def _show_selection(self) -> None:
        self.sheet_image.value = self.model.page_png()
        detail = self.model.detail()
        if detail is None:
            self.detail_image.value, self.detail_info.value = b"", ""
            return
        _sync(self.detail_image, format=detail.format, value=detail.image or b"")
        self.detail_info.value = detail.html

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        m = self.model
        return f"<Gallery x={m.x} y={m.y} page={m.page}: {m.page_count} page(s), {len(m.df)} results>"
