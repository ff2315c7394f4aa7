"""Notebook front ends: `SweepBuilder` (ipywidgets 8) to design and run a sweep, and `Gallery` (an
anywidget, in `zlab.views.gallery`) to compare and pick from one.

Both are thin: each widget event copies values into the pure layer (`zlab.views.builder_model` for the builder,
`zlab.views.gallery_model.GalleryModel` for the gallery) and shows what comes back. Widget children are public
attributes, so a test (or a script) can set `.value`s and call `.click()` without a browser. Each is
shown with a static copy before it (`zlab.views.fallback`), so a saved notebook, an export or a report
shows the form's plan and the run's images rather than a widget error.

>>> from zlab.views.widgets import SweepBuilder, Gallery    # doctest: +SKIP
>>> builder = SweepBuilder(); builder                 # doctest: +SKIP
>>> Gallery("runs/tc")                                # doctest: +SKIP

This module is imported only when asked for (`import zlab` does not load ipywidgets or anywidget).
"""

from __future__ import annotations

import html
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from zlab.core.config import DEFAULT_PRICE_PER_MP, resolve_settings
from zlab.core.request import DEFAULT_LORA_PATH, MAX_LORAS
from zlab.errors import ZlabError
from zlab.runs.progress import shown_in
from zlab.views.builder_model import Form, LoraRow, default_out_dir, plan_summary
from zlab.views.fallback import LIVE_CLASS, show
from zlab.views.gallery import Gallery

if TYPE_CHECKING:
    from zlab.client import Client
    from zlab.runs.runner import RunResult
    from zlab.runs.sweep import Sweep

__all__ = ["Gallery", "SweepBuilder", "shared_client"]

_WIDE = {"width": "640px"}
_LABEL = {"description_width": "90px"}


_SHARED: dict[str, Client] = {}


def shared_client() -> Client:
    """One client per kernel for the widgets that were given none, so a second builder (or a gallery's
    rerun) reuses the first one's connection and local server instead of starting another."""
    if "client" not in _SHARED:
        from zlab.client import Client

        _SHARED["client"] = Client()
    return _SHARED["client"]


class SweepBuilder:
    """A form for a sweep: prompts (one per line: several make a prompt axis), up to three LoRAs (each a
    scale range; several paths separated by commas make a `loraN_path` axis), seeds, sizes, and axes
    that move together (zip: ``lora1_scale, lora2_scale``).

    The plan line (cells, megapixels, estimated cost and time) updates as you type and shows what is
    wrong instead of raising. **Run** runs the sweep into `out_dir` with a progress bar, then shows a
    `Gallery` of the results. `.sweep` is the sweep the form describes (None while it is invalid),
    `.results` the last `RunResult`, `.gallery` its gallery.

    `client`: a `zlab.Client` to reuse (its connection and, without a token, its local server); by
    default the kernel's shared one (`shared_client`), made at the first run. `out_dir`: where runs go;
    by default ``runs/builder-<fingerprint>``, so the same sweep resumes and a changed one gets its own
    directory.
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
            prompt,
            description="prompt",
            placeholder="one prompt per line: several lines make a prompt axis",
            layout=w.Layout(width="640px", height="64px"),
            style=_LABEL,
        )
        self.lora_rows: list[tuple[w.Text, w.BoundedFloatText, w.BoundedFloatText, w.BoundedIntText]] = []
        for i in range(MAX_LORAS):
            first = i == 0
            self.lora_rows.append(
                (
                    w.Text(
                        lora if first else "",
                        description=f"LoRA {i + 1}",
                        placeholder="owner/name or https://… (a, b: a path axis)",
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
        self.zip = w.Text(
            "",
            description="zip",
            placeholder="axes that move together: lora1_scale, lora2_scale; prompt, seed",
            layout=w.Layout(**_WIDE),
            style=_LABEL,
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
        self.progress = w.HTML()  # the run's progress (zlab.runs.progress draws into it while a run lasts)
        self.output = w.Output()  # the run's log lines land here
        self.result_box = w.VBox()
        inputs = [
            self.prompt,
            *(x for row in self.lora_rows for x in row),
            self.seeds,
            self.sizes,
            self.zip,
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
                self.zip,
                w.HBox([self.concurrency, self.out_dir_text]),
                self.summary,
                w.HBox([self.run_button, self.status]),
                self.progress,
                self.output,
                self.result_box,
            ]
        )
        self.widget.add_class(LIVE_CLASS)
        self._static: Any = None  # the display handle of the static copy, updated after a run
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
        """The widgets' current values as a `zlab.views.builder_model.Form`."""
        rows = tuple(LoraRow(p.value, float(a.value), float(b.value), int(n.value)) for p, a, b, n in self.lora_rows)
        return Form(
            self.prompt.value, rows, self.seeds.value, self.sizes.value, int(self.concurrency.value), self.zip.value
        )

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
        """The client runs go through: the one given, else the kernel's shared one."""
        if self._client is None:
            with self.output:  # "using the built-in local server" lands beside the run's log
                self._client = shared_client()
        return self._client

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
            with self.output, shown_in(self._show_progress):
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
            self.gallery = Gallery(df, root=res.out, cell_width=self.cell_width, client=self.client)
        except ZlabError as exc:
            self._say(f"{res.summary()}; no gallery: {exc}", error=True)
            return res
        self.result_box.children = (self.gallery,)
        if self._static is not None:  # a saved notebook shows the run's images, not the empty form
            self._static.update(self._static_bundle())
        return res

    def _show_progress(self, html_text: str) -> None:
        self.progress.value = html_text

    def _say(self, text: str, error: bool = False) -> None:
        color = "#aa1e1e" if error else "#1c1c1c"
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def static_html(self) -> str:
        """What a saved notebook shows for the builder: the plan line, and the last run's gallery."""
        parts = [f"<div><b>zlab sweep builder</b> · {self.summary.value}</div>"]
        if self.progress.value:
            parts.append(self.progress.value)
        if self.results is not None:
            parts.append(f"<div>{html.escape(self.results.summary())}</div>")
        if self.gallery is not None:
            parts.append(self.gallery.static_html())
        return "".join(parts)

    def _static_bundle(self) -> dict[str, str]:
        from zlab.views.fallback import static_bundle

        return static_bundle(self.static_html(), repr(self), str(self.widget.model_id))

    def _ipython_display_(self) -> None:
        self._static = show(self.widget, self.static_html(), repr(self))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = self.widget._repr_mimebundle_(**kwargs)
        return {**data, **self._static_bundle()} if isinstance(data, dict) else data

    def __repr__(self) -> str:
        return f"<SweepBuilder {self.sweep!r}>"
