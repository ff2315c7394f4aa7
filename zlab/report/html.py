"""The report's HTML: one self-contained page that renders with the network off.

nbconvert's lab template loads require.js, MathJax and (with widget state) the widget manager from CDNs;
zlab's template (``zlab/_static/report.html.j2``) drops them all. Live widget outputs are dropped too:
every zlab widget is shown with a static copy before it (`zlab.views.fallback`), which is what the page shows.
Images are embedded as data URIs.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Any

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def static_outputs(nb: Any) -> Any:
    """`nb` without widget state and without outputs that are only a live widget view."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                rest = {k: v for k, v in data.items() if k != WIDGET_VIEW and not (k == "text/plain" and not v)}
                if not rest:
                    continue  # the static copy before it carries the content
                out["data"] = rest
            kept.append(out)
        cell["outputs"] = kept
    return nb


def render_html(out_nb: Path, out_html: Path, hide_code: bool) -> Path | None:
    import nbformat
    from nbconvert import HTMLExporter

    template = resources.files("zlab").joinpath("_static", "report.html.j2")
    try:
        nb = static_outputs(nbformat.read(str(out_nb), as_version=4))
        exporter = HTMLExporter(
            template_file=str(template),
            exclude_input=hide_code,
            exclude_input_prompt=hide_code,
            exclude_output_prompt=hide_code,
            embed_images=True,
        )
        body, _ = exporter.from_notebook_node(
            nb, resources={"metadata": {"name": out_nb.stem, "path": str(out_nb.parent)}}
        )
    except Exception as exc:  # a failed run still keeps its .ipynb; the HTML is a bonus there
        warnings.warn(f"could not render {out_nb} to HTML: {exc}", stacklevel=3)
        return None
    out_html.write_text(body, encoding="utf-8")
    return out_html
