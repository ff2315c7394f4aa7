"""The Gallery on the kernel side: its model (layout, images, picks, reruns, exports) and what the widget
sends, against a real run of the built-in local server over loopback HTTP. The browser half is
test_gallery_browser.py."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image

from zlab.client import Client
from zlab.errors import ValidationError
from zlab.runs.tables import load_results, read_picks, set_pick, varying_columns, with_picks
from zlab.server import LocalServer
from zlab.views.builder_model import Form, LoraRow, build_sweep
from zlab.views.fallback import LIVE_CLASS, static_bundle, widget_bundle
from zlab.views.gallery_model import GalleryModel, request_of
from zlab.views.widgets import Gallery

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("ZLAB_LOCAL_LATENCY", "0")


@pytest.fixture(scope="module")
def client():
    with LocalServer(latency=0, capacity=8) as server, Client(base_url=str(server.base_url)) as c:
        yield c


@pytest.fixture
def run_dir(tmp_path, client):
    """A finished 2 scales × 2 seeds × 2 sizes run, one cell of it failed."""
    out = tmp_path / "run"
    form = Form("a red fox", (LoraRow("owner/style", 0, 1, 2),), seeds="3, 4", sizes="256x256, 256x320")
    res = client.run(build_sweep(form), out, concurrency=8, progress=False, cache=False, echo=lambda _: None)
    assert res.ok
    df = pd.read_parquet(out / "results.parquet")
    df.loc[7, ["status", "error", "image_path"]] = ["failed", "the job failed: out of memory", None]
    df.to_parquet(out / "results.parquet")
    return out


def test_the_grid_follows_the_sweep_axes_and_swaps_them(run_dir):
    model = GalleryModel(run_dir, cell_width=64)
    assert (model.x, model.y, model.page) == ("lora1_scale", "seed", "size")
    assert model.page_labels() == ["page 1 of 2 · size 256x256", "page 2 of 2 · size 256x320"]
    cells = model.cells()
    assert len(cells) == 8 and {(c["page"], c["row"], c["col"]) for c in cells} == {
        (g, r, c) for g in (0, 1) for r in (0, 1) for c in (0, 1)
    }
    assert model.aspect() == 320 / 256  # every box fits the tallest image: nothing is stretched
    failed = next(c for c in cells if c["status"] == "failed")
    assert failed["note"] == "failed: the job failed: out of memory"
    assert model.choose("x", "seed") == "" and (model.x, model.y) == ("seed", "lora1_scale")
    note = model.choose("page", None)
    assert note.startswith("stacked: ") and "size" in note  # size now varies inside a cell, and it says so
    assert "no column 'colour'" in model.set_axes("lora1_scale", "colour")
    assert model.set_axes("seed", "seed") == "x, y and page must be different columns"


def test_thumbnails_once_full_images_on_demand_and_no_broken_image(run_dir):
    model = GalleryModel(run_dir, cell_width=64)
    thumbs = model.thumbnails()
    assert thumbs is model.thumbnails()  # decoded once
    good = [t for t in thumbs if t]
    assert len(good) == 7 and thumbs[7] == b""
    assert Image.open(io.BytesIO(good[0])).format == "JPEG" and Image.open(io.BytesIO(good[0])).width == 64
    sizes = {Image.open(io.BytesIO(t)).size for t in good}
    assert sizes == {(64, 64), (64, 80)}  # each at its own aspect ratio
    detail = model.detail(0)
    assert detail.image == (run_dir / model.rows["image_path"][0]).read_bytes() and detail.mime == "image/png"
    failed = model.detail(7)
    assert failed.image is None and failed.note.startswith("failed: the job failed")


def test_selecting_and_changing_axes_never_resend_thumbnails(run_dir):
    gallery = Gallery(run_dir, cell_width=64)
    sent = []
    gallery.observe(lambda change: sent.append(change["name"]), names=["thumbs", "cells", "selected"])
    gallery.selected = gallery.cells[3]["key"]
    gallery.x = "seed"
    assert gallery.y == "lora1_scale"  # swapped, not clashed
    assert "thumbs" not in sent and "cells" in sent
    assert gallery.static_id == gallery.model_id  # the widget's script hides the static copy with this id


def test_picks_are_written_atomically_and_become_columns(run_dir):
    gallery = Gallery(run_dir, cell_width=64)
    key = gallery.cells[2]["key"]
    gallery.pick(key, favourite=True)
    gallery.pick(key, rating=4)
    saved = json.loads((run_dir / "picks.json").read_text())
    assert saved["picks"] == {key: {"favourite": True, "rating": 4}}
    assert gallery.picks == saved["picks"]
    assert not list(run_dir.glob(".picks.json.*"))  # no temporary file left behind
    df = load_results(run_dir)
    assert df.loc[df["key"] == key, ["favourite", "rating"]].values.tolist() == [[True, 4]]
    assert df["favourite"].sum() == 1 and (df["rating"] == 0).sum() == 7
    assert "favourite" not in varying_columns(df)  # a pick is not an axis
    set_pick(run_dir, key, favourite=False, rating=0)
    assert read_picks(run_dir) == {}
    with pytest.raises(ValidationError, match="rating"):
        set_pick(run_dir, key, rating=9)
    assert with_picks(pd.DataFrame({"key": ["x"]}), run_dir)["rating"].tolist() == [0]


def test_rerun_with_another_seed_joins_the_table_through_the_galleries_client(run_dir, client):
    gallery = Gallery(run_dir, cell_width=64, client=client)
    key = gallery.cells[0]["key"]
    before = set(pd.read_parquet(run_dir / "results.parquet")["key"])
    new = gallery.rerun(key, seed=99)
    assert new not in before and gallery.selected == new
    table = pd.read_parquet(run_dir / "results.parquet")
    assert set(table["key"]) == before | {new}  # the run's own one-cell table did not replace the rest
    row = table[table["key"] == new].iloc[0]
    assert row["seed"] == 99 and row["status"] == "succeeded" and (run_dir / row["image_path"]).is_file()
    old = table[table["key"] == key].iloc[0]
    assert (row["lora1_scale"], row["width"], row["prompt"]) == (old["lora1_scale"], old["width"], old["prompt"])
    assert len(gallery.thumbs) == 9 and len(gallery.cells) == 9
    assert request_of(old.to_dict(), seed=99).key == new


def test_export_copies_images_a_sheet_and_rows(run_dir):
    gallery = Gallery(run_dir, cell_width=64)
    keys = [c["key"] for c in gallery.cells[:3]]
    for k in keys[:2]:
        gallery.pick(k, favourite=True)
    folder = run_dir / "exports" / "mine"
    assert gallery.export(out=folder) == str(folder)  # default: the starred cells
    rows = pd.read_csv(folder / "rows.csv")
    assert sorted(rows["key"]) == sorted(keys[:2]) and rows["favourite"].all()
    assert len(list((folder / "images").iterdir())) == 2
    with Image.open(folder / "sheet.png") as sheet:
        assert sheet.width > 64
    assert "exported 2 cell(s)" in gallery.message
    with pytest.raises(ValidationError):
        gallery.model.export([])


def test_static_fallback_is_html_that_hides_while_the_widget_lives(run_dir):
    gallery = Gallery(run_dir, cell_width=64)
    gallery.pick(gallery.cells[0]["key"], favourite=True)
    html = gallery.static_html()
    assert html.count("data:image/jpeg;base64,") == 7 and "failed: the job failed" in html
    assert "page 1 of 2 · size 256x256" in html and "page 2 of 2 · size 256x320" in html and "★" in html
    bundle = static_bundle(html, repr(gallery), gallery.model_id)
    assert f"data-zlab='{gallery.model_id}'" in bundle["text/html"] and LIVE_CLASS in bundle["text/html"]
    live = widget_bundle(gallery)
    assert live["application/vnd.jupyter.widget-view+json"]["model_id"] == gallery.model_id
    assert live["text/plain"] == ""  # an export without widget state shows the static copy, not a repr


def test_a_bad_source_says_what_it_needs(tmp_path):
    with pytest.raises(ValidationError, match=r"results\.parquet"):
        GalleryModel(tmp_path / "nowhere")
    with pytest.raises(ValidationError, match="run directory"):
        Gallery(pd.DataFrame({"key": ["a"], "prompt": ["x"], "status": ["failed"]})).pick("a", favourite=True)
