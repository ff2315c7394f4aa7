"""The sweep builder, driven as a person would (set values, click) without a browser, against the
built-in local server over real loopback HTTP; plus the pure layer under it and the thumbnail table.
The gallery's own tests are in test_gallery.py (kernel side) and test_gallery_browser.py (JupyterLab)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from zlab.client import Client
from zlab.errors import ValidationError
from zlab.runs.sweep import Sweep
from zlab.server import LocalServer
from zlab.views.builder_model import (
    Form,
    LoraRow,
    build_sweep,
    parse_paths,
    parse_prompts,
    parse_seeds,
    parse_sizes,
    parse_zip,
    plan_summary,
    scale_values,
    sheet_axes,
)
from zlab.views.display import thumbnail_table
from zlab.views.widgets import Gallery, SweepBuilder

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


def test_prompt_lines_lora_paths_and_zip_groups_become_axes():
    assert parse_prompts("a fox\n\n a cat ") == ["a fox", "a cat"]
    assert parse_paths("o/a, o/b") == ["o/a", "o/b"]
    assert parse_zip("lora1_scale, lora2_scale; prompt+seed") == [["lora1_scale", "lora2_scale"], ["prompt", "seed"]]
    with pytest.raises(ValidationError, match="prompt"):
        parse_prompts("a fox\na fox")
    form = Form(
        "a fox\na cat",
        (LoraRow("o/a, o/b", 0, 1, 2), LoraRow("o/c", 0, 1, 2)),
        seeds="1, 2",
        sizes="512x512",
        zip="lora1_scale, lora2_scale",
    )
    plan = plan_summary(form)
    assert plan.ok, plan.text
    assert plan.text.startswith("16 cells (prompt[2] × lora1_path[2] × lora1_scale+lora2_scale[2] × seed[2])")
    sweep = plan.sweep
    assert sweep.zip == (("lora1_scale", "lora2_scale"),)
    cells = sweep.plan()
    assert set(zip(cells["lora1_scale"], cells["lora2_scale"], strict=True)) == {(0, 0), (1, 1)}
    assert set(cells["lora1_path"]) == {"o/a", "o/b"} and set(cells["prompt"]) == {"a fox", "a cat"}
    assert sweep.sheet == {"x": "lora1_scale", "y": "seed", "page": "prompt"}
    bad = plan_summary(dataclasses.replace(form, zip="lora1_scale, colour"))
    assert not bad.ok and "colour" in bad.text


def test_plan_summary_counts_and_reports_errors_instead_of_raising():
    good = plan_summary(Form("a fox", (LoraRow("o/n", 0, 1.5, 4),), seeds="1-3", sizes="1024x1024"))
    assert good.ok and good.text.startswith("12 cells (lora1_scale[4] × seed[3]), 12.6 MP, ≈$0.")
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
    assert isinstance(gallery, Gallery) and builder.result_box.children == (gallery,)
    assert (gallery.x, gallery.y) == ("lora1_scale", "seed")
    assert gallery.model.client is client  # reruns from the gallery reuse the builder's client
    assert len(gallery.thumbs) == 4 and all(bytes(b).startswith(b"\xff\xd8") for b in gallery.thumbs)
    assert not builder.run_button.disabled
    html = builder.static_html()  # what a saved notebook shows: the plan, the summary and the images
    assert "4 cells" in html and "4 succeeded" in html and html.count("data:image/jpeg;base64,") == 4

    # Same sweep again: resumes, nothing is generated again.
    builder.run_button.click()
    assert builder.results is not res and builder.results.ok and builder.results.calls.get("submit", 0) == 0


def test_builder_makes_its_own_local_client_when_none_is_given(tmp_path):
    builder = SweepBuilder(prompt="a fox", lora="owner/style")
    builder.sizes.value, builder.seeds.value = "256x256", "1"
    builder.lora_rows[0][1].value, builder.lora_rows[0][2].value, builder.lora_rows[0][3].value = 1.0, 1.0, 1
    builder.out_dir = tmp_path / "one"
    assert builder.run() is builder.results and builder.results.ok and len(builder.results.df) == 1
    assert builder.gallery.model.columns == []  # one image: no axes, one cell
    assert builder.gallery.model.detail(0).image.startswith(PNG)
    # a second builder reuses the first one's client (and its local server) instead of starting another
    assert SweepBuilder().client is builder.client


def test_builder_shows_run_errors_instead_of_raising(client, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    builder = SweepBuilder(client)
    builder.sizes.value = "256x256"
    builder.out_dir = blocker / "run"  # cannot be created
    assert builder.run() is None and builder.results is None
    assert "#aa1e1e" in builder.status.value and not builder.run_button.disabled


# ---------------------------------------------------------------- thumbnail table


def test_thumbnail_table_embeds_each_image_and_says_why_one_is_missing(run_dir):
    df = pd.read_parquet(run_dir / "results.parquet")
    table = thumbnail_table(df, root=run_dir, width=48)
    assert table.rows == table.shown == 8 and table.html.count("data:image/jpeg;base64,") == 8
    assert "<th>lora1_scale</th>" in table.html and "<th>status</th>" in table.html
    broken = df.copy()
    broken.loc[0, "image_path"] = "images/gone.png"
    table = thumbnail_table(broken, root=run_dir, max_rows=3)
    assert table.shown == 3 and "file missing: gone.png" in table.html and "first 3 of 8" in table.html
