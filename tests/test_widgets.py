"""The sweep builder and the gallery, driven as a person would (set values, click) without a browser,
against the built-in local server over real loopback HTTP; plus the pure layers under them."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from zlab.client import Client
from zlab.display import thumbnail_table
from zlab.errors import ValidationError
from zlab.frontend import Form, LoraRow, build_sweep, parse_seeds, parse_sizes, plan_summary, scale_values, sheet_axes
from zlab.gallery import GalleryModel, varying_columns
from zlab.server import LocalServer
from zlab.sweep import Sweep
from zlab.widgets import Gallery, SweepBuilder

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ZLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ZLAB_LOCAL_LATENCY", "0")
    for name in ("RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY", "ZLAB_BASE_URL", "ZLAB_PRICE_PER_MP"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def client():
    with LocalServer(latency=0, capacity=8) as server, Client(base_url=str(server.base_url)) as c:
        yield c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, client):
    """A finished 2 scales × 2 seeds × 2 sizes run, shared by the gallery tests."""
    out = tmp_path_factory.mktemp("gallery") / "run"
    form = Form("a red fox", (LoraRow("owner/style", 0, 1, 2),), seeds="3, 4", sizes="256x256, 256x320")
    res = client.run(build_sweep(form), out, concurrency=8, progress=False, cache=False, echo=lambda _: None)
    assert res.ok
    return out


def png_size(data: bytes | memoryview) -> tuple[int, int]:
    return Image.open(io.BytesIO(bytes(data))).size


# ---------------------------------------------------------------- the builder's pure layer


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("1, 2, 3", [1, 2, 3]),
        ("1 2 3", [1, 2, 3]),
        ("1-4", [1, 2, 3, 4]),
        ("0-100 [3]", [0, 50, 100]),
        ("7, 10-12", [7, 10, 11, 12]),
        ("-1", [-1]),
        ("0-4 (+2), 9", [0, 2, 4, 9]),
    ],
)
def test_seed_text_forms(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "1, x", "4-1", "1, 1", "3.5"])
def test_bad_seed_text_is_a_validation_error(text):
    with pytest.raises(ValidationError):
        parse_seeds(text)


def test_sizes_and_scale_rows():
    assert parse_sizes("1024x1024, 768X1344") == ["1024x1024", "768x1344"]
    with pytest.raises(ValidationError, match="size"):
        parse_sizes("1024x100")
    assert scale_values(LoraRow("a/b", 0, 1.5, 4)) == [0, 0.5, 1, 1.5]
    assert scale_values(LoraRow("a/b", 0.8, 0.8, 1)) == [0.8]
    with pytest.raises(ValidationError, match="steps"):
        scale_values(LoraRow("a/b", 0, 1, 1))  # a range needs two or more steps


def test_only_varying_values_become_axes_and_used_rows_are_renumbered():
    form = Form(
        "a fox", (LoraRow(""), LoraRow("o/one", 0.5, 0.5, 1), LoraRow("o/two", 0, 2, 3)), seeds="9", sizes="512x768"
    )
    sweep = build_sweep(form)
    assert list(sweep.axes) == ["lora2_scale"]  # the empty first row is skipped: "o/two" is LoRA #2
    assert [(lo.path, lo.scale) for lo in sweep.base.loras] == [("o/one", 0.5), ("o/two", 0.0)]
    assert (sweep.base.width, sweep.base.height, sweep.base.seed) == (512, 768, 9)
    assert sweep.sheet == {"x": "lora2_scale", "y": None, "page": None}
    assert len(sweep) == 3


def test_sheet_axes_put_scales_across_seeds_down_sizes_on_pages():
    assert sheet_axes(["size", "seed", "lora1_scale"]) == ("lora1_scale", "seed", "size")
    assert sheet_axes(["prompt", "seed"]) == ("seed", "prompt", None)
    assert sheet_axes([]) == (None, None, None)


def test_plan_summary_counts_and_reports_errors_instead_of_raising():
    good = plan_summary(Form("a fox", (LoraRow("o/n", 0, 1.5, 4),), seeds="1-3", sizes="1000x1000"))
    assert good.ok and good.text.startswith("12 cells (lora1_scale[4] × seed[3]), 12.0 MP, ≈$0.10 estimated")
    bad = plan_summary(Form("a fox", (LoraRow("o/n", 0, 9, 4),)))
    assert not bad.ok and bad.sweep is None
    assert bad.text == f"⚠ {bad.error}" and "lora1_scale" in bad.text and "0 to 4" in bad.text


# ---------------------------------------------------------------- SweepBuilder


def test_builder_summary_follows_the_form(client):
    builder = SweepBuilder(client)
    builder.sizes.value = "256x256"
    builder.seeds.value = "1-3"
    builder.lora_rows[0][3].value = 2  # steps
    assert "6 cells (lora1_scale[2] × seed[3])" in builder.summary.value
    assert isinstance(builder.sweep, Sweep) and len(builder.sweep) == 6
    assert not builder.run_button.disabled
    assert str(builder.out_dir) == f"runs/builder-{builder.sweep.fingerprint[:10]}"

    builder.seeds.value = "1, two"
    assert "⚠ seeds: &#x27;two&#x27; is not allowed" in builder.summary.value
    assert builder.sweep is None and builder.run_button.disabled and builder.out_dir is None
    builder.lora_rows[1][0].value = "owner/second"  # a second row: a product of two scale ranges
    builder.lora_rows[1][3].value = 3
    builder.lora_rows[1][2].value = 2.0
    builder.seeds.value = "5"
    assert "6 cells (lora1_scale[2] × lora2_scale[3])" in builder.summary.value


def test_builder_run_button_runs_and_shows_the_sheet(client, tmp_path):
    builder = SweepBuilder(client, prompt="a red fox", lora="owner/style")
    builder.sizes.value = "256x256"
    builder.seeds.value = "5 6"
    builder.lora_rows[0][3].value = 2
    builder.out_dir = tmp_path / "run"
    builder.run_button.click()

    res = builder.results
    assert res is not None and res.ok and res.out == tmp_path / "run"
    assert len(res.df) == 4 and set(res.df["status"]) == {"succeeded"}
    assert sorted(res.df["seed"].unique()) == [5, 6] and sorted(res.df["lora1_scale"].unique()) == [0, 1.5]
    assert "4 succeeded" in builder.status.value
    gallery = builder.gallery
    assert builder.result_box.children == (gallery.widget,)
    assert (gallery.x.value, gallery.y.value) == ("lora1_scale", "seed")
    assert bytes(gallery.sheet_image.value).startswith(PNG)
    assert png_size(gallery.sheet_image.value) == builder.sheet.pages[0].size
    assert not builder.run_button.disabled

    # Same sweep again: resumes, nothing is generated again.
    builder.run_button.click()
    assert builder.results is not res and builder.results.ok and builder.results.calls.get("submit", 0) == 0


def test_builder_makes_its_own_local_client_when_none_is_given(tmp_path):
    builder = SweepBuilder(prompt="a fox", lora="owner/style")
    builder.sizes.value, builder.seeds.value = "256x256", "1"
    builder.lora_rows[0][1].value, builder.lora_rows[0][2].value, builder.lora_rows[0][3].value = 1.0, 1.0, 1
    builder.out_dir = tmp_path / "one"
    try:
        assert builder.run() is builder.results and builder.results.ok and len(builder.results.df) == 1
        assert builder.gallery.model.columns == []  # one image: no axes, one cell
        assert bytes(builder.gallery.detail_image.value).startswith(PNG)
    finally:
        builder.client.close()


def test_builder_shows_run_errors_instead_of_raising(client, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    builder = SweepBuilder(client)
    builder.sizes.value = "256x256"
    builder.out_dir = blocker / "run"  # cannot be created
    assert builder.run() is None and builder.results is None
    assert "#aa1e1e" in builder.status.value and not builder.run_button.disabled


# ---------------------------------------------------------------- Gallery


def test_gallery_defaults_pages_and_detail(run_dir):
    gallery = Gallery(run_dir, cell_width=64)
    assert (gallery.x.value, gallery.y.value, gallery.page.value) == ("lora1_scale", "seed", "size")
    assert gallery.page_slider.max == 1 and not gallery.page_slider.disabled
    assert gallery.page_label.value == "page 1 of 2 · size 256x256"
    labels = [label for label, _ in gallery.cells.options]
    assert labels == [
        "size 256x256 · seed 3 · lora1_scale 0",
        "size 256x256 · seed 3 · lora1_scale 1",
        "size 256x256 · seed 4 · lora1_scale 0",
        "size 256x256 · seed 4 · lora1_scale 1",
    ]
    assert gallery.cells.value == gallery.cells.options[0][1]
    first_sheet = gallery.sheet_image.value

    gallery.page_slider.value = 1
    assert gallery.page_label.value == "page 2 of 2 · size 256x320"
    assert all(label.startswith("size 256x320") for label, _ in gallery.cells.options)
    assert gallery.sheet_image.value != first_sheet

    # Picking a cell shows that image, byte for byte, and its parameters.
    label, row = gallery.cells.options[3]
    gallery.cells.value = row
    chosen = gallery.model.sheet.df.iloc[row]
    assert bytes(gallery.detail_image.value) == (run_dir / chosen["image_path"]).read_bytes()
    assert png_size(gallery.detail_image.value) == (256, 320)
    info = gallery.detail_info.value
    assert label in info and chosen["key"] in info and ">seed</th>" in info and "owner/style" in info


def test_gallery_selection_is_outlined_on_the_sheet(run_dir):
    model = GalleryModel(run_dir, cell_width=64)
    first = Image.open(io.BytesIO(model.page_png())).convert("RGB")
    model.select(model.cells_on_page()[1][1])
    second = Image.open(io.BytesIO(model.page_png())).convert("RGB")
    row = model.sheet.df.iloc[model.selected]
    above = ((int(row["sheet_left"]) + int(row["sheet_right"])) // 2, int(row["sheet_top"]) - 2)
    assert second.getpixel(above) == (255, 128, 0)  # the outline is just outside the cell
    assert first.getpixel(above) != (255, 128, 0)  # the first cell was selected before


def test_gallery_axis_dropdowns_swap_and_refuse(run_dir):
    gallery = Gallery(run_dir, cell_width=64)
    gallery.x.value = "seed"  # seed was on y: x and y swap rather than clash
    assert (gallery.x.value, gallery.y.value, gallery.page.value) == ("seed", "lora1_scale", "size")
    assert gallery.cells.options[1][0] == "size 256x256 · lora1_scale 0 · seed 4"
    gallery.page.value = "(none)"  # size now varies inside a cell: drawn stacked, and said so
    assert gallery.model.page is None and gallery.page_slider.disabled
    assert "stacked: size" in gallery.note.value
    assert len(gallery.cells.options) == 8

    note = gallery.model.set_axes("lora1_scale", "colour")  # not a column of this run
    assert "no column 'colour'" in note and (gallery.model.x, gallery.model.y) == ("seed", "lora1_scale")
    assert gallery.model.set_axes("lora1_scale", "lora1_scale") == "x, y and page must be different columns"


def test_gallery_accepts_a_dataframe_or_a_run_result(run_dir, client):
    df = pd.read_parquet(run_dir / "results.parquet")
    assert varying_columns(df) == ["lora1_scale", "seed", "size"]  # width and height go with size
    assert varying_columns(df.assign(lora2_scale=df["lora1_scale"] * 2)) == ["lora1_scale", "seed", "size"]
    model = GalleryModel(df[df["size"] == "256x256"], root=run_dir)
    assert (model.x, model.y, model.page, model.page_count) == ("lora1_scale", "seed", None, 1)
    with pytest.raises(ValidationError, match=r"results\.parquet"):
        GalleryModel(run_dir / "nowhere")


def test_thumbnail_table_embeds_each_image_and_says_why_one_is_missing(run_dir):
    df = pd.read_parquet(run_dir / "results.parquet")
    table = thumbnail_table(df, root=run_dir, width=48)
    assert table.rows == table.shown == 8 and table.html.count("data:image/jpeg;base64,") == 8
    assert "<th>lora1_scale</th>" in table.html and "<th>status</th>" in table.html
    broken = df.copy()
    broken.loc[0, "image_path"] = "images/gone.png"
    table = thumbnail_table(broken, root=run_dir, max_rows=3)
    assert table.shown == 3 and "file missing: gone.png" in table.html and "first 3 of 8" in table.html
