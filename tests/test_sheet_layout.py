"""Contact-sheet layout and cell placement as pure functions: exact expectations, no images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from zlab.errors import ValidationError, ZlabError
from zlab.sheet.cells import (
    VaryingColumnsError,
    assign,
    fixed_parameters,
    footer_text,
    ordered_values,
    parameter_columns,
    placeholder_reason,
    stack_caption,
)
from zlab.sheet.layout import (
    SheetText,
    axis_label,
    cell_image_height,
    fit_label,
    fit_labels,
    format_value,
    letterbox,
    plan_pages,
    span,
    split_grid,
    style_for,
    truncate,
    wrap_text,
)


def mono(text: str, size: int) -> float:
    """A fake monospace font: every character is half the font size wide."""
    return len(text) * size / 2


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5000001, "0.5"),
        (0.30000000000000004, "0.3"),
        (2.0, "2"),
        (7, "7"),
        (np.int64(3), "3"),
        (np.float32(0.1), "0.1"),
        (1.25, "1.25"),
        (-0.75, "-0.75"),
        (1234.5678, "1234.5678"),
        (1e-7, "1e-07"),
        (None, "none"),
        (float("nan"), "none"),
        (True, "true"),
        ("768x1344", "768x1344"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_axis_label_is_column_then_value():
    assert axis_label("lora1_scale", 0.5000001) == "lora1_scale 0.5"
    assert axis_label("seed", 42.0) == "seed 42"


def test_wrap_text_breaks_words_then_separators_then_characters():
    assert wrap_text("aaa bbb ccc", 40, 10, mono) == ["aaa bbb", "ccc"]
    # a repo id has no spaces: it breaks after "/" and "-"
    assert wrap_text("renderartist/Technically-Color", 80, 10, mono) == ["renderartist/", "Technically-", "Color"]
    assert wrap_text("abcdefghij", 20, 10, mono) == ["abcd", "efgh", "ij"]


def test_wrap_text_cuts_to_max_lines_with_ellipsis():
    assert wrap_text("one two three four", 40, 10, mono, max_lines=2) == ["one two", "three f…"]
    assert truncate("short", 40, 10, mono) == "short"


def test_fit_label_wraps_before_shrinking():
    fit = fit_label("lora1_scale 0.5", 100, 2, 18, 10, mono)
    assert fit is not None and fit.lines == ("lora1_scale", "0.5") and fit.size == 18


def test_fit_label_shrinks_to_fit_one_line():
    # 15 characters in 60 px on one line: only size 8 (15 * 4 = 60) fits
    fit = fit_label("lora1_scale 0.5", 60, 1, 18, 8, mono)
    assert fit is not None and fit.lines == ("lora1_scale 0.5",) and fit.size == 8


def test_fit_label_gives_up_below_min_size():
    assert fit_label("lora1_scale 0.5", 60, 1, 18, 10, mono) is None


def test_fit_labels_numbers_legend_entries_in_order():
    fits = fit_labels(["short", "x" * 100, "y" * 100], 60, 2, 12, 10, mono, first_legend=3)
    assert fits[0].legend is None and fits[0].lines == ("short",)
    assert [(f.lines, f.legend) for f in fits[1:]] == [(("[3]",), 3), (("[4]",), 4)]


def test_style_scales_with_cell_width():
    assert style_for(256).label_size == 18
    assert style_for(64).label_size == 12
    assert style_for(2048).label_size == 22
    assert style_for(256, min_font_size=14).min_size == 14


def test_cell_height_comes_from_tallest_aspect():
    assert cell_image_height(256, [1.0, 1.5]) == 384
    assert cell_image_height(256, [1344 / 768]) == 448
    assert cell_image_height(256, []) == 256


def test_letterbox_keeps_true_aspect_centred():
    assert letterbox((0, 0, 256, 384), 1536, 1024) == (0, 106, 256, 277)
    assert letterbox((10, 20, 266, 404), 1024, 1536) == (10, 20, 266, 404)
    assert letterbox((0, 0, 100, 100), 50, 100) == (25, 0, 75, 100)


def test_split_grid_respects_max_side_and_balances_pages():
    pages = split_grid(100, 100, cell_w=256, cell_h=384, gap=4, chrome_w=100, chrome_h=lambda w: 200)
    # 62 columns fit in 16,383 px -> 2 pages of 50; 41 rows fit -> 3 pages of 34, 34, 32
    assert sorted({len(c) for _, c in pages}) == [50]
    assert [len(r) for r, c in pages if c.start == 0] == [34, 34, 32]
    covered = [(r, c) for rows, cols in pages for r in rows for c in cols]
    assert len(covered) == len(set(covered)) == 100 * 100
    for rows, cols in pages:
        assert 100 + span(len(cols), 256, 4) <= 16383 and 200 + span(len(rows), 384, 4) <= 16383


def test_split_grid_respects_max_pixels():
    pages = split_grid(8, 8, cell_w=256, cell_h=384, gap=4, chrome_w=100, chrome_h=lambda w: 200, max_pixels=2_000_000)
    width = 100 + span(8, 256, 4)
    assert len(pages) == 8 and all(len(r) == 1 and len(c) == 8 for r, c in pages)
    assert width * (200 + 384) <= 2_000_000 < width * (200 + span(2, 384, 4))


def test_split_grid_refuses_a_cell_bigger_than_a_page():
    with pytest.raises(ValueError, match="cell_width"):
        split_grid(1, 1, cell_w=20000, cell_h=100, gap=4, chrome_w=0, chrome_h=lambda w: 0)


def test_plan_pages_geometry():
    style = style_for(100)
    text = SheetText("title", "x: a · y: b", ("a 1", "a 2", "a 3"), ("b 1", "b 2"), "fixed: p: q")
    (page,) = plan_pages(text, aspect=1.5, n_stack=1, style=style, measure=mono)
    cells = {(c.row, c.col): c for c in page.cells}
    assert len(cells) == 6
    assert all(c.box[2] - c.box[0] == 100 and c.box[3] - c.box[1] == 150 for c in cells.values())
    assert cells[(0, 1)].box[0] - cells[(0, 0)].box[0] == 100 + style.gap
    assert cells[(1, 0)].box[1] - cells[(0, 0)].box[1] == 150 + style.gap
    assert page.width == max(style.min_width, cells[(0, 2)].box[2] + style.margin)
    assert page.height > cells[(1, 2)].box[3]
    roles = [t.role for t in page.texts]
    assert roles.count("header") == 3 and roles.count("row") == 2 and "footer" in roles
    headers = [t for t in page.texts if t.role == "header"]
    assert [t.lines for t in headers] == [("a 1",), ("a 2",), ("a 3",)]
    # every header sits above the grid, every row label left of it
    assert all(t.y + t.height <= cells[(0, 0)].box[1] for t in headers)
    assert all(t.x + t.width <= cells[(0, 0)].box[0] for t in page.texts if t.role == "row")


def test_plan_pages_moves_too_long_labels_to_a_legend():
    style = style_for(64)
    long = "prompt " + "a very long prompt " * 10
    text = SheetText("t", "s", ("prompt x", long), (), "")
    (page,) = plan_pages(text, aspect=1.0, n_stack=1, style=style, measure=mono)
    headers = [t.lines for t in page.texts if t.role == "header"]
    assert headers[1] == ("[1]",)
    legend = [t for t in page.texts if t.role == "legend"]
    assert legend and " ".join(legend[0].lines).startswith("[1] prompt a very long")


def test_plan_pages_pages_within_limits():
    style = style_for(64)
    text = SheetText("t", "s", tuple(f"x {i}" for i in range(30)), tuple(f"y {i}" for i in range(30)), "f")
    pages = plan_pages(text, aspect=1.5, n_stack=1, style=style, measure=mono, max_side=1000, max_pixels=600_000)
    assert len(pages) > 1
    assert all(p.width <= 1000 and p.height <= 1000 and p.width * p.height <= 600_000 for p in pages)
    placed = [(c.row, c.col) for p in pages for c in p.cells]
    assert sorted(placed) == [(r, c) for r in range(30) for c in range(30)]
    assert [p.number for p in pages] == list(range(1, len(pages) + 1)) and pages[0].of == len(pages)


def test_plan_pages_stacked_slots():
    style = style_for(100)
    (page,) = plan_pages(SheetText("t", "s", ("a",)), aspect=1.0, n_stack=3, style=style, measure=mono)
    (cell,) = page.cells
    assert len(cell.slots) == 3 and len(cell.captions) == 3
    assert [s[2] - s[0] for s in cell.slots] == [100, 100, 100]
    assert cell.slots[1][0] - cell.slots[0][2] == style.gap // 2
    assert cell.box[2] == cell.slots[2][2]


# --- cell placement -------------------------------------------------------------------------------


def results(**overrides) -> pd.DataFrame:
    rows = [
        {
            "key": f"k{s}{i}",
            "prompt": "p",
            "width": 64,
            "height": 96,
            "seed": s,
            "lora1_path": "a/b",
            "lora1_scale": sc,
            "lora2_path": None,
            "lora2_scale": np.nan,
            "status": "succeeded",
            "error": None,
            "image_path": f"images/k{s}{i}.png",
            "run_s": 1.0 + i,
            "cost_usd": 0.01,
        }
        for s in (2, 1)
        for i, sc in enumerate((1.0, 0.0, 0.5))
    ]
    df = pd.DataFrame(rows)
    for k, v in overrides.items():
        df[k] = v
    return df


def test_parameter_columns_skip_bookkeeping():
    assert parameter_columns(results(size="64x96")) == [
        "prompt",
        "width",
        "height",
        "seed",
        "lora1_path",
        "lora1_scale",
        "lora2_path",
        "lora2_scale",
        "size",
    ]


def test_axes_sort_numbers_and_put_missing_last():
    assert ordered_values([1.0, None, 0.0, 0.5]) == (0.0, 0.5, 1.0, None)
    assert ordered_values(["b", "a", None, "b"]) == ("b", "a", None)  # text keeps sweep order


def test_assign_places_each_row_once():
    grid = assign(results(), "lora1_scale", "seed")
    assert grid.x.values == (0.0, 0.5, 1.0) and grid.y.values == (1, 2)
    pos = {
        k: (r, c)
        for k, r, c in zip(grid.placed["key"], grid.placed["sheet_row"], grid.placed["sheet_col"], strict=True)
    }
    assert pos["k10"] == (0, 2) and pos["k21"] == (1, 0)
    assert grid.n_stack == 1 and len(grid.placed) == 6


def test_varying_column_raises_with_suggestions():
    with pytest.raises(VaryingColumnsError) as info:
        assign(results(), "lora1_scale")
    err = info.value
    assert isinstance(err, ValidationError) and isinstance(err, ZlabError)
    assert err.columns == ("seed",)
    msg = str(err)
    assert "seed" in msg and "y='seed'" in msg and "page='seed'" in msg and "stack=True" in msg


def test_stack_orders_slots_by_the_varying_column():
    grid = assign(results(), "lora1_scale", stack=True)
    assert grid.n_stack == 2 and grid.stacked == ("seed",)
    slots = dict(zip(grid.placed["key"], grid.placed["sheet_slot"], strict=True))
    assert slots["k10"] == 0 and slots["k20"] == 1


def test_duplicate_key_keeps_the_row_with_an_image():
    df = results()
    retry = df.iloc[[0]].assign(status="failed", image_path=None)
    grid = assign(pd.concat([df, retry]), "lora1_scale", "seed")
    assert len(grid.placed) == 6 and grid.placed.loc[grid.placed["key"] == "k20", "status"].item() == "succeeded"


def test_unknown_axis_is_a_validation_error():
    with pytest.raises(ValidationError, match="lora9_scale"):
        assign(results(), "lora9_scale")


def test_fixed_parameters_for_the_footer():
    items = fixed_parameters(results(), exclude=("lora1_scale", "seed"))
    assert items == [("lora1_path", "a/b"), ("size", "64x96"), ("prompt", "p")]
    assert footer_text(items) == "fixed: lora1_path: a/b  ·  size: 64x96  ·  prompt: p"


@pytest.mark.parametrize(
    ("status", "error", "path", "reason"),
    [
        ("succeeded", None, "images/a.png", None),
        ("succeeded", None, None, "no image"),
        ("failed", "CUDA out of memory\nTraceback ...", None, "failed: CUDA out of memory"),
        ("failed", None, None, "failed"),
        ("cancelled", float("nan"), None, "cancelled"),
        ("pending", None, None, "pending"),
        (None, None, "images/a.png", None),
    ],
)
def test_placeholder_reason(status, error, path, reason):
    assert placeholder_reason(status, error, path) == reason


def test_stack_caption_joins_size():
    assert stack_caption({"seed": 2, "width": 64, "height": 96}) == "seed 2 · 64x96"
    assert stack_caption({"lora1_scale": 0.5000001}) == "lora1_scale 0.5"
    assert stack_caption({}) == ""
