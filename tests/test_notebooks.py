"""The report notebooks, used as a person would: `zlab report` in a subprocess, real kernels, the HTML
opened in headless Chromium; plus checks that the committed notebooks are clean and parameterised."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from browser_check import CHROMIUM, MISSING, screenshot
from jlab import launch_chromium, missing
from PIL import Image

from zlab.report import report

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("lora_scale_sweep", "seed_grid", "size_sweep", "find_scale")
CANARY = "canary-token-3e9d1f7a5c20"
_PNG_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def parameters_of(name: str) -> dict:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), f"{name}: the parameters cell holds only assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNCOMFY_", "ZLAB_"))}
    env.update(ZLAB_LOCAL_LATENCY="0", ZLAB_CACHE_DIR=str(tmp_path / "cache"), **extra)
    return env


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def find_in(screen: np.ndarray, image: np.ndarray) -> tuple[float, int, int]:
    """(mean abs difference, top, left) of the best placement of `image` in `screen`, found by sliding
    one row of the image across every screen row (rendered 1:1, a loaded image matches exactly)."""
    h, w = image.shape[:2]
    probe = h // 2
    best = (float("inf"), -1, -1)
    for top in range(screen.shape[0] - h + 1):
        windows = np.lib.stride_tricks.sliding_window_view(screen[top + probe], (w, 3))[:, 0]
        diff = np.abs(windows - image[probe]).mean(axis=(1, 2))
        left = int(diff.argmin())
        if diff[left] < best[0]:
            best = (float(diff[left]), top, left)
            if best[0] == 0:
                break
    return best


# ---------------------------------------------------------------- the committed files


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_saved_clean_and_parameterised(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs must be cleared"
            assert "ipywidgets" not in cell.source  # zlab's widgets leave a static copy; bare ipywidgets do not
    params = parameters_of(name)
    assert json.loads(json.dumps(params)) == params  # plain JSON values: papermill and -p can set them
    assert params["runs_root"] == "../runs" and params["out_dir"] is None and {"seeds", "concurrency"} <= set(params)
    assert nb.cells[0].cell_type == "markdown" and "What this answers" in nb.cells[0].source


class _Unpriced:
    """Stands in for the notebook's client in its plan line (the plan's own default price)."""

    def pricing(self):
        return None


def run_dir_of(name: str, **params) -> str:
    """The run directory the notebook would run into with `params` (its code up to `client.run`)."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    space: dict = {"client": _Unpriced()}
    exec(code[0], space)
    space.update(params)
    exec("from zlab import LoRA, Request, ScaleSpec, Sweep", space)
    planned = next(c for c in code if "Sweep(" in c or "ScaleSpec." in c)  # the cell that names the run directory
    exec("\n".join(line for line in planned.splitlines() if not line.startswith(("found =", "print("))), space)
    exec(next(line for c in code for line in c.splitlines() if line.startswith("run_dir =")), space)
    return space["run_dir"]


@pytest.mark.parametrize("name", NAMES)
def test_other_parameters_run_into_another_directory(name):
    """A report with other parameters must never write into (and redraw the sheet of) the main job's run."""
    main = run_dir_of(name)
    assert main.startswith("../runs/") and main == run_dir_of(name)
    assert run_dir_of(name, seeds=[5, 6]) not in (main, run_dir_of(name, seeds=[5, 7]))
    assert run_dir_of(name, out_dir="/tmp/mine") == "/tmp/mine"  # a directory you name is the one used


# ---------------------------------------------------------------- running them


@pytest.mark.slow
def test_lora_scale_sweep_report_from_the_command_line(tmp_path):
    out, run = tmp_path / "report", tmp_path / "run"
    # ZLAB_BASE_URL=local keeps the built-in server even with a token: the canary must reach no file.
    env = clean_env(tmp_path, ZLAB_BASE_URL="local", RUNCOMFY_TOKEN=CANARY)
    cmd = [
        sys.executable,
        "-m",
        "zlab.cli",
        "report",
        "notebooks/lora_scale_sweep.ipynb",
        "--out",
        str(out),
        "-p",
        "seeds",
        "[5, 6]",
        "-p",
        "scales",
        "[0, 0.75, 1.5]",
        "-p",
        "out_dir",
        str(run),
        "-p",
        "width",
        "256",
        "-p",
        "height",
        "256",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr  # e.g. no token had to be scrubbed from the report

    for where in (out, run, tmp_path / "cache"):
        assert files_containing(where, CANARY) == [], f"the token leaked under {where}"

    df = pd.read_parquet(run / "results.parquet")
    assert len(df) == 6 and set(df["status"]) == {"succeeded"} and not df["cached"].any()
    assert sorted(zip(df["lora1_scale"], df["seed"], strict=True)) == [
        (s, seed) for s in (0, 0.75, 1.5) for seed in (5, 6)
    ]
    assert set(df["width"]) == {256} and len(list((run / "images").iterdir())) == 6

    # The HTML embeds the contact sheet itself, pixel for pixel.
    sheet = np.asarray(Image.open(run / "sheet.png").convert("RGB")).astype(np.int16)
    html = next(out.glob("*.html")).read_text(encoding="utf-8")
    embedded = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(m))).convert("RGB")).astype(np.int16)
        for m in _PNG_URI.findall(html)
    ]
    assert any(e.shape == sheet.shape and np.array_equal(e, sheet) for e in embedded)
    executed = nbformat.read(next(out.glob("*.ipynb")), as_version=4)
    curve_cell = next(c for c in executed.cells if c.cell_type == "code" and "strength_curve(" in c.source)
    assert any("image/png" in o.get("data", {}) for o in curve_cell.outputs)  # the curve, drawn
    assert "zlab: 6 cells: 6 succeeded" in executed.cells[-1].outputs[0]["text"]  # the summary line

    # Opened in a browser, the sheet is drawn where the report puts it.
    if CHROMIUM is None:
        pytest.skip(MISSING)
    screen = screenshot(next(out.glob("*.html")), tmp_path / "shot.png", tmp_path / "chromium", size=(1400, 4000))
    screen = screen.astype(np.int16)
    diff, top, left = find_in(screen, sheet)
    assert diff < 2, f"the contact sheet is not visible in the rendered report (best match {diff:.1f})"
    region = screen[top : top + sheet.shape[0], left : left + sheet.shape[1]]
    assert np.abs(region - sheet).mean() < 2  # the whole sheet, not just one row of it
    assert len(np.unique(region.reshape(-1, 3), axis=0)) > 1000  # a picture, not a blank or an icon
    offline_page_shows_everything(next(out.glob("*.html")), executed, tmp_path)


def offline_page_shows_everything(html_file: Path, executed, tmp_path: Path) -> None:
    """The report opened with the network off: no request leaves the machine, and the sheet, the curve and
    the gallery's static view are pictures on the page (no widget error, no frozen progress, no repr)."""
    if missing():
        pytest.skip(missing())
    from playwright.sync_api import sync_playwright

    text = html_file.read_text(encoding="utf-8")
    assert "widget-view+json" not in text and "<script src=" not in text and "VBox(" not in text
    curve_cell = next(c for c in executed.cells if c.cell_type == "code" and "strength_curve(" in c.source)
    curve_png = next(o["data"]["image/png"] for o in curve_cell.outputs if "image/png" in o.get("data", {}))
    leaving: list[str] = []
    with sync_playwright() as pw:
        context = launch_chromium(pw, tmp_path / "offline-profile", offline=True)
        context.on(
            "request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else leaving.append(r.url)
        )
        page = context.new_page()
        page.goto(html_file.as_uri(), wait_until="load")
        loaded = "i => i.complete && i.naturalWidth > 0"
        gallery = page.locator(".zlab-static").first
        assert gallery.is_visible()
        thumbs = page.locator(".zlab-static img")
        assert thumbs.count() == 6 and all(thumbs.nth(i).evaluate(loaded) for i in range(6))
        curve = page.locator(f"img[src='data:image/png;base64,{curve_png.strip()}']")
        assert curve.count() == 1 and curve.evaluate(loaded)
        assert page.get_by_text("Error displaying widget").count() == 0
        context.close()
    assert leaving == [], f"the report fetched from the network: {leaving}"


@pytest.mark.slow
def test_seed_grid_runs_with_its_relative_out_dir(tmp_path, monkeypatch):
    for k, v in clean_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("RUNCOMFY_") or k == "ZLAB_BASE_URL"]:
        monkeypatch.delenv(k)
    folder = tmp_path / "notebooks"  # a copy, so the default out_dir "../runs/…" lands under tmp_path
    folder.mkdir()
    shutil.copy(NOTEBOOKS / "seed_grid.ipynb", folder)
    rep = report(
        folder / "seed_grid.ipynb",
        {"seeds": [1, 2, 3], "width": 256, "height": 256, "prompts": ["a fox in snow", "a fox in a city"]},
        tmp_path / "out",
    )
    assert rep.ok, rep.error
    (run,) = (tmp_path / "runs").glob("seed_grid-*")  # named by the sweep: its parameters' own directory
    df = pd.read_parquet(run / "results.parquet")
    assert len(df) == 6 and set(df["status"]) == {"succeeded"}
    assert set(df["prompt"]) == {"a fox in snow", "a fox in a city"} and set(df["seed"]) == {1, 2, 3}
    assert (run / "sheet.png").is_file() and "data:image/png;base64" in rep.html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_size_sweep_runs_and_letterboxes(tmp_path, monkeypatch):
    for k, v in clean_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("RUNCOMFY_") or k == "ZLAB_BASE_URL"]:
        monkeypatch.delenv(k)
    run = tmp_path / "run"
    rep = report(
        NOTEBOOKS / "size_sweep.ipynb",
        {"sizes": ["256x256", "256x384", "384x256"], "seeds": [7], "out_dir": str(run)},
        tmp_path / "out",
    )
    assert rep.ok, rep.error
    df = pd.read_parquet(run / "results.parquet")
    assert sorted(zip(df["width"], df["height"], strict=True)) == [(256, 256), (256, 384), (384, 256)]
    assert set(df["status"]) == {"succeeded"}
    with Image.open(run / "sheet.png") as sheet:
        assert sheet.width > sheet.height  # three sizes across one seed row
    html = rep.html.read_text(encoding="utf-8")
    assert "megapixels" in html and "data:image/png;base64" in html  # the per-size table and the sheet


@pytest.mark.slow
def test_find_scale_runs_offline_with_papermill_and_shows_diagnosis_curves_and_savings(tmp_path, monkeypatch):
    for k, v in clean_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("RUNCOMFY_") or k == "ZLAB_BASE_URL"]:
        monkeypatch.delenv(k)
    run = tmp_path / "run"
    loras = ["owner/lora-12", "owner/lora-9"]  # the built-in server's known curves: one acts, one does nothing
    params = {"loras": loras, "seeds": [1, 2], "width": 256, "height": 256, "precision": 0.1, "out_dir": str(run)}
    rep = report(NOTEBOOKS / "find_scale.ipynb", params, tmp_path / "out")
    assert rep.ok, rep.error
    record = json.loads((run / "find_scale.json").read_text())
    assert [a["lora"] for a in record["answers"]] == loras and record["images"] * 4 <= record["grid_images"]
    assert record["answers"][1]["warnings"][0].startswith("does nothing")
    executed = nbformat.read(next((tmp_path / "out").glob("*.ipynb")), as_version=4)
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "onset in (" in text and "does nothing" in text and "of the grid's images" in text
    curve_cell = next(c for c in executed.cells if c.cell_type == "code" and "errorbar(" in c.source)
    assert any("image/png" in o.get("data", {}) for o in curve_cell.outputs)
