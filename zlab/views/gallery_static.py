"""The gallery's static view: its grid as plain HTML with the thumbnails embedded, every page shown.

This is what a saved notebook, an nbconvert export or a ``zlab report`` page shows in place of the live
gallery (see `zlab.views.fallback`), so it needs no script and no network: labels, thumbnails, the reason a
cell has no image, and the picks (★ favourite, rating) as they were when the gallery was last shown.
"""

from __future__ import annotations

import base64
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zlab.views.gallery_model import GalleryModel

__all__ = ["static_html"]

_CSS = """
.zlab-sg{font:13px/1.35 system-ui,sans-serif;color:#1c1c1c}
.zlab-sg h4{margin:10px 0 4px;font-size:14px;font-weight:600}
.zlab-sg .zsg-note{color:#8a5a00;margin:2px 0}
.zlab-sg .zsg-scroll{overflow-x:auto;max-width:100%}
.zlab-sg table{border-collapse:separate;border-spacing:4px;width:max-content}
.zlab-sg th{font-weight:normal;color:#333;vertical-align:middle}
.zlab-sg tbody th{text-align:left;min-width:7em;max-width:16em;overflow-wrap:anywhere;position:sticky;left:0;
 background:#fff;z-index:1}
.zlab-sg td{padding:0;vertical-align:top}
.zlab-sg .zsg-cell{display:flex;gap:6px}
.zlab-sg figure{margin:0;position:relative}
.zlab-sg .zsg-box{display:flex;align-items:center;justify-content:center;background:#ececec;overflow:hidden}
.zlab-sg img{max-width:100%;max-height:100%;display:block}
.zlab-sg .zsg-ph{color:#aa1e1e;font-size:12px;padding:6px;text-align:center;overflow-wrap:anywhere}
.zlab-sg figcaption{font-size:11px;color:#555;max-width:100%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.zlab-sg .zsg-pick{position:absolute;top:2px;right:4px;color:#f5a623;text-shadow:0 0 2px #000;font-size:15px}
"""


def static_html(model: GalleryModel, title: str | None = None) -> str:
    """Every page of the gallery's grid as one HTML fragment (no document wrapper, styles scoped)."""
    cells = model.cells()
    thumbs = model.thumbnails()
    picks = model.picks
    grid = model.grid
    w = model.cell_width
    h = max(16, round(w * model.aspect()))
    by_pos: dict[tuple[int, int, int], list[int]] = {}
    for c in cells:
        by_pos.setdefault((c["page"], c["row"], c["col"]), []).append(c["i"])
    head = escape(title or _title(model))
    axes = " · ".join(f"{n}: {c}" for n, c in (("x", model.x), ("y", model.y), ("page", model.page)) if c)
    parts = [f"<style>{_CSS}</style><div class='zlab-sg'><b>{head}</b>"]
    parts.append(f"<div>{escape(axes)} · {len(cells)} images · {model.page_count} page(s)</div>")
    if model.note:
        parts.append(f"<div class='zsg-note'>{escape(model.note)}</div>")
    labels = model.page_labels()
    for g in range(model.page_count):
        if model.page_count > 1:
            parts.append(f"<h4>{escape(labels[g])}</h4>")
        parts.append("<div class='zsg-scroll'><table><thead><tr>")
        if model.y:
            parts.append("<th></th>")
        parts += [f"<th scope='col'>{escape(label)}</th>" for label in grid.x.labels]
        parts.append("</tr></thead><tbody>")
        for r, ylabel in enumerate(grid.y.labels):
            parts.append("<tr>" + (f"<th scope='row'>{escape(ylabel)}</th>" if model.y else ""))
            for col in range(len(grid.x)):
                figures = [
                    _figure(cells[i], thumbs[i], picks.get(cells[i]["key"]), w, h) for i in by_pos.get((g, r, col), [])
                ]
                parts.append(f"<td><div class='zsg-cell'>{''.join(figures)}</div></td>")
            parts.append("</tr>")
        parts.append("</tbody></table></div>")
    parts.append("</div>")
    return "".join(parts)


def _figure(cell: dict, thumb: bytes, pick: dict | None, w: int, h: int) -> str:
    tip = escape("\n".join(f"{k}: {v}" for k, v in cell["params"]), quote=True)
    if thumb:
        src = "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")
        inner = f"<img src='{src}' alt='{escape(cell['label'], quote=True)}' title='{tip}'>"
    else:
        inner = f"<div class='zsg-ph' title='{tip}'>{escape(cell['note'] or 'no image')}</div>"
    mark = ""
    if pick and (pick.get("favourite") or pick.get("rating")):
        mark = "★" if pick.get("favourite") else ""
        mark += f" {pick['rating']}/5" if pick.get("rating") else ""
        mark = f"<span class='zsg-pick' title='your pick'>{escape(mark.strip())}</span>"
    caption = f"<figcaption>{escape(cell['caption'])}</figcaption>" if cell["caption"] else ""
    box = f"<div class='zsg-box' style='width:{w}px;height:{h}px'>{inner}</div>"
    return f"<figure style='width:{w}px'>{box}{mark}{caption}</figure>"


def _title(model: GalleryModel) -> str:
    prompts = {str(p) for p in model.rows["prompt"]} if "prompt" in model.rows.columns else set()
    return next(iter(prompts)) if len(prompts) == 1 else "zlab gallery"
