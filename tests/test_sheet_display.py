"""How sheets show themselves: inline, a multi-page sheet shows every page and says how many; the HTML
sheet keeps its labels readable in a window narrower than the grid (checked in headless Chromium)."""

from __future__ import annotations

import base64
import io
import re

import pandas as pd
import pytest
from jlab import launch_chromium, missing
from PIL import Image

from zlab.sheet import contact_sheet
from zlab.sheet.sheet import DISPLAY_WIDTH


@pytest.fixture
def results(tmp_path):
    """Six images of 64×64 on two sizes' worth of pages, with long labels."""
    (tmp_path / "images").mkdir()
    rows = []
    for page in ("256x256", "256x320"):
        for seed in (1, 2):
            for scale in (0.0, 0.5, 1.0):
                key = f"k{page}{seed}{scale}".replace(".", "")
                Image.new("RGB", (64, 64), (int(scale * 200), seed * 90, 40)).save(tmp_path / "images" / f"{key}.png")
                rows.append(
                    {
                        "key": key,
                        "prompt": "a fox",
                        "size": page,
                        "seed": seed,
                        "lora1_scale": scale,
                        "status": "succeeded",
                        "image_path": f"images/{key}.png",
                        "style_name": f"an extraordinarily long style description number {seed}",
                    }
                )
    return pd.DataFrame(rows), tmp_path


def test_a_multi_page_sheet_shows_every_page_and_counts_them(results):
    df, root = results
    sheet = contact_sheet(df, x="lora1_scale", y="seed", page="size", root=root, cell_width=64)
    html = sheet._repr_html_()
    assert "2 pages" in html and "page 1 of 2 · size 256x256" in html and "page 2 of 2 · size 256x320" in html
    pages = [Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r"base64,([A-Za-z0-9+/=]+)", html)]
    assert [p.size for p in pages] == [p.size for p in sheet.pages]
    single = contact_sheet(df[df["size"] == "256x256"], x="lora1_scale", y="seed", root=root, cell_width=64)
    assert single._repr_html_() is None and single._repr_png_().startswith(b"\x89PNG")  # one page: the PNG alone


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_html_sheet_row_labels_stay_readable_in_a_narrow_window(results, tmp_path):
    from playwright.sync_api import sync_playwright

    df, root = results
    wide = pd.concat([df.assign(lora1_scale=df["lora1_scale"] + k) for k in range(4)], ignore_index=True)
    sheet = contact_sheet(wide, x="lora1_scale", y="style_name", page="size", root=root, cell_width=128)
    path = sheet.to_html(root / "sheet.html")
    with sync_playwright() as pw:
        context = launch_chromium(pw, tmp_path / "profile", offline=True)
        page = context.new_page()
        page.set_viewport_size({"width": 500, "height": 800})
        page.goto(path.as_uri())
        label = page.locator("tbody th").first
        box = label.bounding_box()
        assert box is not None and box["width"] >= 110, box  # not one letter per line
        lines = label.evaluate(
            "th => { const r = document.createRange(); r.selectNodeContents(th);"
            " return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; }"
        )
        assert lines <= 8, lines  # a few lines of words, not a letter per line
        table = page.locator("table").first.bounding_box()
        assert table is not None and table["width"] > 500  # the grid keeps its size and scrolls instead
        context.close()


def test_a_wide_sheet_is_drawn_for_the_notebooks_width_with_legible_labels(results):
    """Ten 256-px columns are 2,700 px wide: shown inline as they are, a notebook shrinks them until the
    18-px labels are 6 px tall. Inline, the sheet is drawn again to fit, labels at their drawn size."""
    df, root = results
    first = df[df["lora1_scale"] == 0.0]
    wide = pd.concat([first.assign(lora1_scale=k / 4, key=first["key"] + str(k)) for k in range(10)], ignore_index=True)
    sheet = contact_sheet(wide, x="lora1_scale", y="seed", page="size", root=root, cell_width=256)
    assert sheet.pages[0].width > 2 * DISPLAY_WIDTH and wide["lora1_scale"].nunique() >= 10
    shown = sheet.for_display()
    assert all(page.width <= DISPLAY_WIDTH for page in shown.pages) and len(shown.pages) == len(sheet.pages)
    assert shown.style.label_size >= 12 and shown.df["sheet_col"].nunique() == sheet.df["sheet_col"].nunique()
    html = sheet._repr_html_()
    widths = [Image.open(io.BytesIO(base64.b64decode(m))).width for m in re.findall(r"base64,([A-Za-z0-9+/=]+)", html)]
    assert widths and max(widths) <= DISPLAY_WIDTH
    assert sheet.pages[0].width > 2 * DISPLAY_WIDTH  # saving keeps the full-size pages
    one = contact_sheet(wide[wide["size"] == "256x256"], x="lora1_scale", y="seed", root=root, cell_width=256)
    assert Image.open(io.BytesIO(one._repr_png_())).width <= DISPLAY_WIDTH
