"""The Gallery in a real JupyterLab, in headless Chromium, used as a person would: it renders, a click
enlarges, keys move the selection (and not JupyterLab's cell cursor), A/B compare shows two full-size
images, a favourite survives a kernel restart, and the saved notebook reopened after a restart shows
the static view instead of a widget error.

One lab and one page for the module (starting them is most of the cost); the tests run in order.
Set ZLAB_SCREENSHOTS=docs/img to refresh the README's pictures.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from jlab import JupyterLab, launch_chromium, missing, notebook

from zlab.client import Client
from zlab.server import LocalServer
from zlab.views.builder_model import Form, LoraRow, build_sweep

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

SHOTS = os.environ.get("ZLAB_SCREENSHOTS")
PROGRESS = """from zlab.runs.progress import Progress
p = Progress(2, 0, True)
p.counts["queued"] = 2
p.move("queued", "running"); p.move("running", "succeeded", finished=True)
p.move("queued", "succeeded", finished=True); p.close()"""
GALLERY = ".zg"


def selected_label(page) -> str:
    return page.evaluate("() => document.querySelector('.zg-sel').getAttribute('title')")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    with LocalServer(latency=0, capacity=8) as server, Client(base_url=str(server.base_url)) as client:
        form = Form("a red fox", (LoraRow("owner/style", 0, 1, 3),), seeds="3, 4", sizes="256x256, 256x320")
        res = client.run(build_sweep(form), root / "run", progress=False, cache=False, echo=lambda _: None)
    assert res.ok
    notebook(
        root / "gallery.ipynb",
        "import zlab\ng = zlab.Gallery('run', cell_width=96)\ng",
        "zlab.SweepBuilder(prompt='a red fox', lora='owner/style')",
        PROGRESS,
    )
    work = tmp_path_factory.mktemp("labwork")
    server = JupyterLab(root, work)
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            context = launch_chromium(pw, work / "profile")
            page = context.new_page()
            page.set_default_timeout(30_000)
            server.open(page, "gallery.ipynb")
            server.run_all(page)
            page.wait_for_selector(f"{GALLERY} .zg-cell img")
            yield server, page, root
            context.close()
    finally:
        server.close()


def test_gallery_renders_thumbnails_on_a_grid_of_the_sweep_axes(lab):
    _, page, _ = lab
    gallery = page.locator(GALLERY)
    assert page.locator(".zg-cell img").count() == 6  # page 1: 3 scales × 2 seeds
    assert page.locator(".zg-pagelabel").inner_text() == "page 1 of 2 · size 256x256"
    heads = page.locator(".zg-grid thead th").all_inner_texts()
    assert heads[1:] == ["lora1_scale 0", "lora1_scale 0.5", "lora1_scale 1"]
    rows = page.locator(".zg-grid tbody th").all_inner_texts()
    assert rows == ["seed 3", "seed 4"]
    # thumbnails are real pictures at their own aspect ratio, not stretched
    sizes = page.evaluate(
        "() => [...document.querySelectorAll('.zg-cell img')].map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert all(w == 96 and h == 96 for w, h in sizes), sizes
    statics = page.locator(".zlab-static")
    assert statics.count() == 2 and not any(statics.nth(i).is_visible() for i in range(2))  # hidden while live
    assert page.locator(".widget-vbox.zlab-live textarea").first.is_visible()  # the builder's form, live
    page.wait_for_function("() => document.body.innerText.includes('zlab 2/2 · 2 succeeded')")  # progress, final
    if SHOTS:
        gallery.screenshot(path=str(Path(SHOTS) / "gallery.png"))


def test_click_enlarges_to_the_full_size_image(lab):
    _, page, _ = lab
    page.locator(".zg-cell").nth(4).click()  # seed 4, scale 0.5
    full = page.wait_for_selector(".zg-fullview img.zg-full")
    assert full.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [256, 256]
    assert "seed 4" in page.locator(".zg-fullview .zg-title").inner_text()
    page.keyboard.press("ArrowRight")  # next in reading order, still full size
    page.wait_for_function(
        "() => document.querySelector('.zg-fullview .zg-title').textContent.includes('lora1_scale 1')"
    )
    page.keyboard.press("Escape")
    page.wait_for_selector(".zg-grid")


def test_keys_move_the_selection_not_the_notebook(lab):
    server, page, _ = lab
    page.locator(".zg-grid").click(position={"x": 2, "y": 2})  # focus the widget without opening a cell
    before = server.active_cell(page)
    start = selected_label(page)
    page.keyboard.press("ArrowLeft")
    left = selected_label(page)
    page.keyboard.press("ArrowUp")
    up = selected_label(page)
    assert left != start and up != left
    assert "seed 3" in up and up.split(" · ")[-1] == left.split(" · ")[-1]  # same column, one row up
    page.keyboard.press("PageDown")
    page.wait_for_function("() => document.querySelector('.zg-pagelabel').textContent.startsWith('page 2 of 2')")
    page.keyboard.press("PageUp")
    assert server.active_cell(page) == before  # JupyterLab saw none of the keys
    assert page.evaluate("() => document.querySelectorAll('.jp-Notebook .jp-Cell').length") == 3  # no cell added


def test_ab_compare_shows_two_full_size_images(lab):
    _, page, _ = lab
    page.keyboard.press("a")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("b")
    page.keyboard.press("c")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.zg-side-by-side img.zg-full')]"
        ".filter(i => i.complete && i.naturalWidth).length == 2"
    )
    sizes = page.evaluate(
        "() => [...document.querySelectorAll('.zg-side-by-side img.zg-full')].map(i => i.naturalWidth)"
    )
    assert sizes == [256, 256]
    if SHOTS:
        page.locator(GALLERY).screenshot(path=str(Path(SHOTS) / "gallery-compare.png"))
    page.get_by_role("button", name="swipe").click()
    page.wait_for_function("() => document.querySelectorAll('.zg-swipe img.zg-full').length == 2")
    page.get_by_role("button", name="flicker").click()
    page.wait_for_function("() => document.querySelectorAll('.zg-flicker img.zg-full').length == 2")
    page.keyboard.press("Escape")


def in_kernel(page, code: str) -> None:
    page.evaluate(
        "code => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.requestExecute({code}).done",
        code,
    )


FITS = """() => { const s = document.querySelector('.zg-stage').getBoundingClientRect();
  return [...document.querySelectorAll('.zg-grid thead th')]
    .every(th => th.getBoundingClientRect().right <= s.right + 1); }"""


def test_the_grid_fits_every_column_by_default_and_zooms(lab):
    _, page, _ = lab
    page.keyboard.press("Escape")
    in_kernel(page, "g.cell_width = 900")  # three 900-px columns cannot fit: fit shrinks them
    page.wait_for_function(
        "() => parseInt(getComputedStyle(document.querySelector('.zg')).getPropertyValue('--zg-w')) > 96"
    )
    assert page.evaluate(FITS)
    assert page.evaluate(
        "() => { const s = document.querySelector('.zg-scroll'); return s.scrollWidth <= s.clientWidth; }"
    )
    for _ in range(3):
        page.get_by_role("button", name="zoom in", exact=True).click()
    assert not page.evaluate(FITS)  # zoomed in: wider than the output, scrolled sideways
    page.get_by_role("button", name="zoom to fit", exact=True).click()
    assert page.evaluate(FITS)
    in_kernel(page, "g.cell_width = 96")
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector('.zg')).getPropertyValue('--zg-w').trim() == '96px'"
    )


def test_keys_change_only_the_cells_they_touch(lab):
    _, page, _ = lab
    page.locator(".zg-grid").click(position={"x": 2, "y": 2})
    page.evaluate("() => { document.querySelector('.zg-grid').dataset.kept = 'yes'; }")
    start = selected_label(page)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("3")
    page.wait_for_function("() => (document.querySelector('.zg-sel .zg-rating') || {}).textContent == '3/5'")
    assert selected_label(page) != start
    page.keyboard.press("0")
    page.wait_for_function("() => !document.querySelector('.zg-sel .zg-rating')")
    # the same table element: the grid was updated in place, not redrawn
    assert page.evaluate("() => document.querySelector('.zg-grid').dataset.kept") == "yes"


def test_a_favourite_is_saved_and_survives_a_kernel_restart(lab):
    server, page, root = lab
    page.locator(".zg-grid").click(position={"x": 2, "y": 2})
    key = page.evaluate("() => document.querySelector('.zg-sel').dataset.i")
    page.keyboard.press("f")
    page.keyboard.press("4")
    picks_file = root / "run" / "picks.json"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        picks = json.loads(picks_file.read_text())["picks"] if picks_file.exists() else {}
        if any(p == {"favourite": True, "rating": 4} for p in picks.values()):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(
            f"picks.json has no starred, rated cell: {picks_file.read_text() if picks_file.exists() else 'missing'}"
        )
    server.save(page)
    server.restart_kernel(page)
    server.run_all(page)
    page.wait_for_function("() => document.querySelectorAll('.zg .zg-star').length == 1")
    assert page.evaluate("() => document.querySelector('.zg .zg-star').closest('.zg-cell').dataset.i") == key


def test_after_a_restart_the_gallery_says_its_kernel_is_gone_and_takes_no_picks(lab):
    server, page, root = lab
    picks_before = (root / "run" / "picks.json").read_text()
    stars = page.evaluate("() => document.querySelectorAll('.zg .zg-star').length")
    server.restart_kernel(page)  # the cell is not run again: this widget's kernel is gone
    page.wait_for_selector(".zg-banner:not(:empty)", timeout=10_000)  # said before anyone clicks
    page.locator(".zg-grid").click(position={"x": 2, "y": 2})
    page.keyboard.press("ArrowRight")
    page.keyboard.press("f")
    page.wait_for_selector(".zg-banner:not(:empty)")
    assert "kernel is gone" in page.locator(".zg-banner").inner_text()
    assert page.locator(".zg-fav").is_disabled() and page.locator(".zg-export").is_disabled()
    assert page.evaluate("() => document.querySelectorAll('.zg .zg-star').length") == stars  # no pretend star
    time.sleep(1.0)  # a pick sent anyway would have been written by now
    assert (root / "run" / "picks.json").read_text() == picks_before


def test_reopened_after_a_restart_the_notebook_shows_static_results(lab):
    server, page, root = lab
    server.save(page)
    server.restart_kernel(page)  # the widget models are gone for good
    page.reload()
    server.open(page, "gallery.ipynb")
    page.wait_for_selector(".zlab-static img")
    time.sleep(1.0)  # let the widget renderer give up on its model
    static = page.locator(".zlab-static").first
    assert static.is_visible()
    assert static.locator("img").count() == 12  # both pages, every thumbnail
    assert page.locator(".zlab-static .zsg-pick").count() == 1  # the favourite, as it was when shown
    builder = page.locator(".zlab-static").nth(1)
    assert builder.is_visible() and "zlab sweep builder" in builder.inner_text() and "cells" in builder.inner_text()
    assert "zlab 2/2 · 2 succeeded" in page.locator(".zlab-progress").inner_text()
    errors = page.get_by_text("Error displaying widget")
    assert all(not errors.nth(i).is_visible() for i in range(errors.count()))
    saved = json.loads((root / "gallery.ipynb").read_text())
    kinds = [sorted(o.get("data", {})) for o in saved["cells"][0]["outputs"]]
    assert ["text/html", "text/plain"] in kinds  # the static view travels with the file
    progress = saved["cells"][2]["outputs"]
    assert len(progress) == 1 and "zlab 2/2" in "".join(progress[0]["data"]["text/html"])  # one final state
