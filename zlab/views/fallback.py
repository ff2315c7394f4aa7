"""Live widgets that leave a picture behind: every zlab widget is shown as two outputs, a static view
(plain HTML with embedded images) followed by the live widget.

Why two outputs: a front end renders one MIME type per output, and JupyterLab renders a widget view even
when its model is gone (after a kernel restart it says "Error displaying widget: model not found" and
shows nothing else). So the static view is an output of its own, saved with the notebook like any HTML:
nbconvert, ``zlab report``, GitHub and a restarted kernel show it. While the widget is alive the static
view hides itself: its stylesheet hides it when the next output holds a rendered zlab widget
(``.zlab-live``), and hides the next output while that holds no rendered widget (loading, or an error
after a restart). Front ends without those class names (VS Code) get the same from the widget's script,
which hides the static views carrying its id.

>>> bundle = static_bundle("<b>3 cells</b>", "SweepBuilder(3 cells)", "abc")
>>> sorted(bundle)
['text/html', 'text/plain']
"""

from __future__ import annotations

from typing import Any

__all__ = ["LIVE_CLASS", "show", "static_bundle", "widget_bundle"]

LIVE_CLASS = "zlab-live"  # on the root element of every rendered zlab widget
_OUT = ".jp-OutputArea-child"
_CSS = (
    "<style>"
    f"{_OUT}:has(.zlab-static[data-zlab='{{id}}']):has(+ {_OUT} .{LIVE_CLASS}){{display:none}}"
    f"{_OUT}:has(.zlab-static[data-zlab='{{id}}']) + {_OUT}:not(:has(.{LIVE_CLASS})){{display:none}}"
    "</style>"
)


def static_bundle(html: str, text: str, widget_id: str) -> dict[str, str]:
    """The static output: `html` wrapped so the live widget with `widget_id` can hide it."""
    css = _CSS.replace("{id}", widget_id)
    return {
        "text/html": f"{css}<div class='zlab-static' data-zlab='{widget_id}'>{html}</div>",
        "text/plain": text,
    }


def widget_bundle(widget: Any) -> dict[str, Any]:
    """The live output: only the widget view (an empty text/plain, so exports without widget state
    show nothing rather than a repr beside the static view)."""
    data = widget._repr_mimebundle_()
    data = data[0] if isinstance(data, tuple) else data
    view = data.get("application/vnd.jupyter.widget-view+json")
    return {"application/vnd.jupyter.widget-view+json": view, "text/plain": ""} if view else data


def show(widget: Any, html: str, text: str) -> Any:
    """Display `widget` live with its static view before it (see the module docstring); returns the
    static output's display handle, so the static copy can be brought up to date later."""
    from IPython.display import display

    widget_id = str(getattr(widget, "model_id", "") or id(widget))
    handle = display(static_bundle(html, text, widget_id), raw=True, display_id=True)
    display(widget_bundle(widget), raw=True)
    return handle
