"""Drawn contact sheets on small generated images: where each image lands, placeholders, letterboxing,
paging, thumbnails cache, metadata round trip, the run-directory entry point."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFont

from zlab.errors import ValidationError
from zlab.sheet import contact_sheet, read_sheet, sheet_from_run_dir
from zlab.sheet.draw import FAILED_FILL, LETTERBOX, MISSING_FILL, font, measure
from zlab.sheet.thumbs import CACHE_DIR, decode_thumbnail

SCALES = (0.0, 0.5, 1.0, 1.5)
SEEDS = (1, 2, 3)


def colour(seed: int, scale: float) -> tuple[int, int, int]:
    return (30 + 60 * SCALES.index(scale), 30 + 80 * SEEDS.index(seed), 210 - 40 * SCALES.index(scale))


def make_run(
    root: Path, *, landscape_seed: int | None = None, failed: tuple[int, float] | None = None, fmt: str = "png"
) -> pd.DataFrame:
    """A run directory with one solid-colour image per (seed, scale) and its results.parquet."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in SEEDS:
        for scale in SCALES:
            key = f"s{seed}x{scale}"
            w, h = (96, 64) if seed == landscape_seed else (64, 96)
            is_failed = failed == (seed, scale)
            path = None if is_failed else f"images/{key}.{fmt}"
            if path:
                Image.new("RGB", (w, h), colour(seed, scale)).save(root / path)
            rows.append(
                {
                    "key": key,
                    "prompt": "a red fox in the snow",
                    "width": w,
                    "height": h,
                    "seed": seed,
                    "lora1_path": "renderartist/Technically-Color-Z-Image-Turbo",
                    "lora1_scale": scale,
                    "lora2_path": None,
                    "lora2_scale": np.nan,
                    "status": "failed" if is_failed else "succeeded",
                    "error": "CUDA out of memory\nTraceback (most recent call last)" if is_failed else None,
                    "request_id": f"r-{key}",
                    "image_path": path,
                    "image_url": None,
                    "queue_s": 0.5,
                    "run_s": 1.0,
                    "cost_usd": 0.01,
                    "base_url": "http://127.0.0.1:1",
                }
            )
    df = pd.DataFrame(rows)
    df.to_parquet(root / "results.parquet")
    df.attrs["run_dir"] = str(root)
    return df


def centre(img: Image.Image, row: pd.Series) -> tuple[int, int, int]:
    return img.getpixel(((row.sheet_left + row.sheet_right) // 2, (row.sheet_top + row.sheet_bottom) // 2))


def close(a, b, tol: int = 3) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def test_each_image_lands_in_its_cell(tmp_path):
    df = make_run(tmp_path)
    sheet = contact_sheet(df, x="lora1_scale", y="seed", cell_width=64)
    (page,) = sheet.pages
    assert len(sheet.df) == 12
    for row in sheet.df.itertuples():
        assert row.sheet_col == SCALES.index(row.lora1_scale) and row.sheet_row == SEEDS.index(row.seed)
        assert close(centre(page, row), colour(row.seed, row.lora1_scale)), row.key
        assert (row.sheet_right - row.sheet_left, row.sheet_bottom - row.sheet_top) == (64, 96)
    # columns left to right, rows top to bottom
    first = sheet.df.set_index("key")
    assert first.loc["s1x0.0", "sheet_left"] < first.loc["s1x0.5", "sheet_left"]
    assert first.loc["s1x0.0", "sheet_top"] < first.loc["s2x0.0", "sheet_top"]
    assert page.width == max(400, first.loc["s1x1.5", "sheet_right"] + 16)


def test_failed_and_missing_cells_get_placeholders(tmp_path):
    df = make_run(tmp_path, failed=(2, 1.0))
    os.remove(tmp_path / "images" / "s3x0.5.png")
    sheet = contact_sheet(df, x="lora1_scale", y="seed", cell_width=64)
    page, cells = sheet.pages[0], sheet.df.set_index("key")
    failed, missing = cells.loc["s2x1.0"], cells.loc["s3x0.5"]
    assert failed.sheet_note == "failed: CUDA out of memory"
    assert missing.sheet_note == "file missing: s3x0.5.png"
    assert page.getpixel((int(failed.sheet_left) + 4, int(failed.sheet_top) + 4)) == FAILED_FILL
    assert page.getpixel((int(missing.sheet_left) + 4, int(missing.sheet_top) + 4)) == MISSING_FILL
    assert cells["sheet_note"].isna().sum() == 10
    # the placeholder says why: its text is drawn in the tile (some pixels differ from the fill)
    tile = np.asarray(
        page.crop((failed.sheet_left + 3, failed.sheet_top + 3, failed.sheet_right - 3, failed.sheet_bottom - 3))
    )
    assert (np.abs(tile.astype(int) - FAILED_FILL).sum(axis=2) > 60).sum() > 20


def test_empty_grid_position_says_no_result(tmp_path):
    df = make_run(tmp_path).query("not (seed == 1 and lora1_scale == 0.5)")
    sheet = contact_sheet(df, x="lora1_scale", y="seed", root=tmp_path, cell_width=64)
    ref = sheet.df.set_index("key").loc["s1x0.0"]
    step = sheet.df.set_index("key").loc["s1x1.0", "sheet_left"] - ref.sheet_left
    left = int(ref.sheet_left + step // 2)
    assert sheet.pages[0].getpixel((left + 4, int(ref.sheet_top) + 4)) == MISSING_FILL


def test_mixed_sizes_are_letterboxed(tmp_path):
    df = make_run(tmp_path, landscape_seed=3)
    sheet = contact_sheet(df, x="lora1_scale", y="seed", cell_width=64)
    page = sheet.pages[0]
    cells = sheet.df.set_index("key")
    wide, tall = cells.loc["s3x0.5"], cells.loc["s1x0.5"]
    # the landscape image keeps 3:2 inside the 64x96 cell; bars above and below it
    assert (wide.sheet_right - wide.sheet_left, wide.sheet_bottom - wide.sheet_top) == (64, 43)
    assert tall.sheet_bottom - tall.sheet_top == 96
    assert close(centre(page, wide), colour(3, 0.5))
    cell_top = int(wide.sheet_top) - (96 - 43) // 2
    assert page.getpixel((int(wide.sheet_left) + 10, cell_top + 3)) == LETTERBOX
    assert page.getpixel((int(wide.sheet_left) + 10, int(wide.sheet_bottom) + 3)) == LETTERBOX


def test_stacked_cells_show_every_image(tmp_path):
    df = make_run(tmp_path)
    with pytest.raises(ValidationError, match="stack=True"):
        contact_sheet(df, x="lora1_scale", cell_width=64)
    sheet = contact_sheet(df, x="lora1_scale", cell_width=64, stack=True)
    assert len(sheet.df) == 12 and set(sheet.df["sheet_slot"]) == {0, 1, 2}
    for row in sheet.df.itertuples():
        assert close(centre(sheet.pages[0], row), colour(row.seed, row.lora1_scale)), row.key


def test_large_grids_page_within_limits(tmp_path):
    df = make_run(tmp_path)
    sheet = contact_sheet(df, x="lora1_scale", y="seed", cell_width=64, max_side=480, max_pixels=130_000)
    assert len(sheet.pages) > 1
    assert all(p.width <= 480 and p.height <= 480 and p.width * p.height <= 130_000 for p in sheet.pages)
    assert sorted(sheet.df["sheet_page"].unique()) == list(range(len(sheet.pages)))
    for row in sheet.df.itertuples():
        assert close(centre(sheet.pages[row.sheet_page], row), colour(row.seed, row.lora1_scale))
    written = sheet.save(tmp_path / "out" / "sheet.png")
    assert [p.name for p in written] == [f"sheet-{i}.png" for i in range(1, len(sheet.pages) + 1)]
    assert all(p.exists() for p in written)


def test_page_axis_makes_one_page_per_value(tmp_path):
    df = make_run(tmp_path)
    sheet = contact_sheet(df, x="lora1_scale", page="seed", cell_width=64)
    assert len(sheet.pages) == 3
    assert dict(zip(sheet.df["key"], sheet.df["sheet_page"], strict=True))["s3x0.0"] == 2


def test_metadata_round_trip(tmp_path):
    df = make_run(tmp_path)
    sheet = contact_sheet(df, x="lora1_scale", y="seed", cell_width=64)
    (png,) = sheet.save(tmp_path / "sheet.png")
    back = read_sheet(png)
    assert back.attrs["x"] == "lora1_scale" and back.attrs["y"] == "seed"
    assert back.attrs["x_values"] == list(SCALES) and back.attrs["y_values"] == list(SEEDS)
    mine = sheet.df.set_index("key")
    assert sorted(back["key"]) == sorted(mine.index)
    for row in back.itertuples():
        assert row.lora1_scale == mine.loc[row.key, "lora1_scale"] and row.seed == mine.loc[row.key, "seed"]
        assert (row.left, row.top) == (mine.loc[row.key, "sheet_left"], mine.loc[row.key, "sheet_top"])
        assert row.lora1_path == "renderartist/Technically-Color-Z-Image-Turbo"
    (jpg,) = sheet.save(tmp_path / "sheet.jpg")
    assert sorted(read_sheet(jpg)["key"]) == sorted(mine.index)
    (webp,) = sheet.save(tmp_path / "sheet.webp")
    assert Image.open(webp).format == "WEBP"
    with pytest.raises(ValueError, match="no zlab sheet metadata"):
        read_sheet(webp)


def test_repr_png_is_the_first_page(tmp_path):
    sheet = contact_sheet(make_run(tmp_path), x="lora1_scale", y="seed", cell_width=64)
    data = sheet._repr_png_()
    assert data.startswith(b"\x89PNG")
    assert "ContactSheet 4×3" in repr(sheet)


def test_thumbnail_cache_follows_file_changes(tmp_path):
    df = make_run(tmp_path)
    contact_sheet(df, x="lora1_scale", y="seed", cell_width=64)
    cache = tmp_path / CACHE_DIR
    assert len(list(cache.glob("*.png"))) == 12
    target = tmp_path / "images" / "s1x0.0.png"
    Image.new("RGB", (64, 96), (250, 250, 0)).save(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    sheet = contact_sheet(df, x="lora1_scale", y="seed", cell_width=64)
    row = sheet.df.set_index("key").loc["s1x0.0"]
    assert close(centre(sheet.pages[0], row), (250, 250, 0))
    assert len(list(cache.glob("*.png"))) == 13


def test_reduced_decoding_keeps_aspect(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (1024, 1536), (200, 40, 90)).save(big, quality=95)
    with Image.open(big) as im:
        im.draft("RGB", (128, 192))
        assert im.size[0] < 1024  # the JPEG decoder itself scales down
    thumb = decode_thumbnail(big, 128)
    assert thumb.size == (128, 192) and thumb.mode == "RGB"
    assert close(thumb.getpixel((64, 96)), (200, 40, 90), tol=4)
    small = tmp_path / "small.png"
    Image.new("RGBA", (32, 16), (0, 0, 255, 255)).save(small)
    assert decode_thumbnail(small, 128).size == (128, 64)


def test_font_is_scalable_truetype():
    assert isinstance(font(20), ImageFont.FreeTypeFont)
    assert measure("lora1_scale 0.5", 40) > 1.8 * measure("lora1_scale 0.5", 20)


def test_sheet_from_run_dir(tmp_path):
    make_run(tmp_path)
    written = sheet_from_run_dir(tmp_path, x="lora1_scale", y="seed", html=True, cell_width=64)
    assert written == [tmp_path / "sheet.png", tmp_path / "sheet.html"]
    assert len(read_sheet(written[0])) == 12
    out = sheet_from_run_dir(tmp_path, x="seed", out=tmp_path / "by-seed.jpg", stack=True, cell_width=64)
    assert out == [tmp_path / "by-seed.jpg"]
    with pytest.raises(ValidationError, match=r"results\.parquet"):
        sheet_from_run_dir(tmp_path / "nope", x="seed")


def test_bad_save_suffix(tmp_path):
    sheet = contact_sheet(make_run(tmp_path), x="lora1_scale", y="seed", cell_width=64)
    with pytest.raises(ValidationError, match=r"\.png"):
        sheet.save(tmp_path / "sheet.gif")
