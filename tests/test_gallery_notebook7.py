"""The Gallery in Notebook 7 (headless Chromium) at 1,000 cells: toolbar and grid shown without a nested
scroll box, every column of the x axis visible, and a key changes only the elements it touches (counted in
the page with a MutationObserver, whatever the machine's speed; the milliseconds are printed, not asserted)."""

from __future__ import annotations

import pandas as pd
import pytest
from jlab import Notebook7, launch_chromium, missing, notebook
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

try:
    import notebook as _notebook  # noqa: F401  (Notebook 7 itself: the `test` extra installs it)
except ImportError:
    pytestmark.append(pytest.mark.skip(reason="the notebook package (Notebook 7) is not installed"))

SCALES, SEEDS = 20, 50  # 1,000 cells

# Key presses inside the page: moves, stars and ratings, each changing something (a new cell, a new star, a new
# rating). For each, the elements its handler changed (attributes, children, text), and its time with the style
# and layout it causes (not the paint), for the printed report only.
KEYS = ["ArrowDown", "ArrowRight", "f", "ArrowDown", "3", "ArrowLeft", "0", "f"] * 8
PRESS = """async (keys) => {
  const root = document.querySelector('.zg');
  const observer = new MutationObserver(() => {});
  observer.observe(root, {subtree: true, attributes: true, childList: true, characterData: true});
  const times = {}, touched = {};
  for (const key of keys) {
    observer.takeRecords();
    const t0 = performance.now();
    root.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
    document.body.offsetHeight;
    (times[key] = times[key] || []).push(performance.now() - t0);
    // Elements whose attributes or text changed, plus every node added or removed: a grid drawn again counts all.
    const records = observer.takeRecords(), changed = new Set();
    let moved = 0;
    for (const r of records) {
      if (r.type === 'childList') moved += r.addedNodes.length + r.removedNodes.length;
      else changed.add(r.target);
    }
    (touched[key] = touched[key] || []).push(changed.size + moved);
    await new Promise((r) => setTimeout(r, 20));
  }
  observer.disconnect();
  return {times, touched};
}"""
# What one key may change: the cells it leaves and enters, their marks, and the detail pane (its list of
# parameters rebuilt: ~25 nodes); drawing the grid again would change over 1,000.
TOUCHED_MAX = 60


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * len(values))]


def results(root):
    (root / "images").mkdir()
    rows = []
    for seed in range(SEEDS):
        for k in range(SCALES):
            key = f"c{seed:02d}{k:02d}"
            Image.new("RGB", (64, 64), (k * 12, seed * 5, 90)).save(root / "images" / f"{key}.png")
            rows.append({"key": key, "prompt": "a fox", "width": 64, "height": 64, "seed": seed,
                         "lora1_path": "a/b", "lora1_scale": k / 10, "status": "succeeded",
                         "image_path": f"images/{key}.png"})  # fmt: skip
    pd.DataFrame(rows).to_parquet(root / "results.parquet")


def test_a_thousand_cell_gallery_in_notebook_7(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb7")
    (root / "run").mkdir()
    results(root / "run")
    notebook(root / "big.ipynb", "import zlab\ng = zlab.Gallery('run', cell_width=64)\ng")
    work = tmp_path_factory.mktemp("nb7work")
    server = Notebook7(root, work)
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            context = launch_chromium(pw, work / "profile")
            page = context.new_page()
            page.set_default_timeout(60_000)
            server.open(page, "big.ipynb")
            server.run_all(page)
            page.wait_for_function("() => document.querySelectorAll('.zg .zg-cell img').length == 1000")
            area = page.evaluate(
                """() => { const a = document.querySelector('.zg').closest('.jp-Cell-outputArea');
                return {scroll: a.scrollHeight, client: a.clientHeight, max: getComputedStyle(a).maxHeight}; }"""
            )
            assert area["max"] == "none" and area["scroll"] <= area["client"] + 1, area  # no box inside the page
            page.locator(".zg-bar").scroll_into_view_if_needed()
            assert page.locator(".zg-bar").is_visible() and page.locator(".zg-grid").is_visible()
            fits = page.evaluate(
                """() => { const s = document.querySelector('.zg-stage').getBoundingClientRect();
                const heads = [...document.querySelectorAll('.zg-grid thead th')];
                return heads.length == 21 && heads.every(th => th.getBoundingClientRect().right <= s.right + 1); }"""
            )
            assert fits  # all 20 scales side by side at the window's width
            page.locator(".zg-grid").click(position={"x": 2, "y": 2})
            start = page.evaluate("() => document.querySelector('.zg-sel').title")
            pressed = page.evaluate(PRESS, KEYS)
            assert page.evaluate("() => document.querySelector('.zg-sel').title") != start
            every = [t for ts in pressed["times"].values() for t in ts]
            report = {key: round(p90(ts), 1) for key, ts in pressed["times"].items()}
            p50 = sorted(every)[len(every) // 2]
            print(f"\nper key at 1,000 cells, ms: p50 {p50:.1f}, p90 {p90(every):.1f}, {report}")
            touched = {key: max(counts) for key, counts in pressed["touched"].items()}
            print(f"elements changed per key, at most: {touched}")
            assert all(min(counts) >= 1 for counts in pressed["touched"].values()), touched  # each key did something
            assert max(touched.values()) <= TOUCHED_MAX, touched  # ...to a few of 1,000 cells, not the grid
            context.close()
    finally:
        server.close()
