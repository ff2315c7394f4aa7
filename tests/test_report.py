"""zlab report: parameters, real papermill kernels, HTML output, failures, deadlines and secrets."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nbformat
import pytest
from browser_check import CHROMIUM, MISSING, screenshot

from zlab.cli import main
from zlab.errors import ValidationError
from zlab.report import Report, kernel_for_current_python, parse_param_pairs, report

NOTEBOOKS = Path(__file__).parent / "notebooks"
ECHO, FAILS, PLOT = NOTEBOOKS / "params_echo.ipynb", NOTEBOOKS / "fails.ipynb", NOTEBOOKS / "plot.ipynb"
CANARY_TOKEN = "canary-token-7f3a9c1e5b2d"
CANARY_KEY = "canary-apikey-0d4e8b6a2c91"
PLOT_RGB = (23, 201, 119)  # what plot.ipynb draws


def echoed(notebook: Path) -> dict:
    """The JSON params_echo.ipynb prints on its 'ECHO ' line."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("ECHO "):
                    return json.loads(line[5:])
    raise AssertionError(f"no ECHO line in {notebook}")


# ---------------------------------------------------------------- no kernel needed


def test_param_values_are_read_as_yaml():
    got = parse_param_pairs(
        [
            ("seeds", "[5, 6]"),
            ("prompt", "a fox"),
            ("scale", "0.5"),
            ("n", "3"),
            ("flag", "true"),
            ("empty", ""),
            ("odd", "a: b: c"),
            ("scale", "0.75"),
        ]
    )
    assert got == {
        "seeds": [5, 6],
        "prompt": "a fox",
        "scale": 0.75,
        "n": 3,
        "flag": True,
        "empty": "",
        "odd": "a: b: c",
    }


def test_unknown_parameter_names_the_valid_ones(tmp_path):
    with pytest.raises(ValidationError) as info:
        report(ECHO, {"sedes": [1]}, tmp_path / "out")
    assert info.value.field == "sedes"
    assert "prompt, scale, seeds" in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


@pytest.mark.parametrize("name", ["token", "RUNCOMFY_TOKEN", "api_key", "ApiKey", "my_secret", "PASSWORD"])
def test_secret_looking_parameters_are_refused(name, tmp_path):
    with pytest.raises(ValidationError) as info:
        report(ECHO, {name: CANARY_TOKEN}, tmp_path / "out")
    assert info.value.field == name
    assert "RUNCOMFY_TOKEN" in str(info.value) and "environment" in str(info.value)
    assert CANARY_TOKEN not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_parameters_for_a_notebook_without_a_parameters_cell_are_refused(tmp_path):
    with pytest.raises(ValidationError, match="no cell tagged 'parameters'"):
        report(NOTEBOOKS / "no_params.ipynb", {"x": 1}, tmp_path / "out")


def test_missing_notebook_is_a_validation_error(tmp_path):
    with pytest.raises(ValidationError, match=r"existing \.ipynb"):
        report(tmp_path / "nope.ipynb")


def test_out_dir_that_would_overwrite_the_notebook_is_refused(tmp_path):
    src = tmp_path / "params_echo.ipynb"
    shutil.copy(ECHO, src)
    before = src.read_bytes()
    with pytest.raises(ValidationError, match="overwrite"):
        report(src, out=tmp_path)
    assert src.read_bytes() == before


def test_cli_exit_code_2_on_bad_parameter(tmp_path, capsys):
    assert main(["report", str(ECHO), "-p", "nope", "1", "--out", str(tmp_path / "out"), "--timeout", "60"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "prompt, scale, seeds" in err


# ---------------------------------------------------------------- one successful run, shared


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory):
    """`zlab report params_echo.ipynb -p ...` with canary secrets in the environment, default --out."""
    work = tmp_path_factory.mktemp("echo")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        mp.setenv("RUNCOMFY_TOKEN", CANARY_TOKEN)
        mp.setenv("RUNCOMFY_API_KEY", CANARY_KEY)
        mp.chdir(work)
        code = main(["report", str(ECHO), "-p", "seeds", "[5, 6]", "-p", "prompt", "a fox", "-p", "scale", "0.5"])
    dirs = list((work / "reports").iterdir())
    return {"code": code, "dirs": dirs, "stdout": out.getvalue(), "stderr": err.getvalue()}


@pytest.mark.slow
def test_run_writes_notebook_and_html_to_default_dir(echo_run):
    assert echo_run["code"] == 0, echo_run["stderr"]
    [out] = echo_run["dirs"]
    assert re.fullmatch(r"params_echo-\d{8}T\d{6}Z", out.name)
    assert sorted(p.name for p in out.iterdir()) == ["params_echo.html", "params_echo.ipynb"]
    assert "params_echo.html" in echo_run["stdout"]
    html = (out / "params_echo.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "ECHO" in html and "a fox" in html


@pytest.mark.slow
def test_parameters_reach_the_notebook_with_their_yaml_types(echo_run):
    [out] = echo_run["dirs"]
    got = echoed(out / "params_echo.ipynb")
    assert (got["prompt"], got["seeds"], got["scale"]) == ("a fox", [5, 6], 0.5)
    meta = nbformat.read(out / "params_echo.ipynb", as_version=4).metadata.papermill
    assert meta["parameters"] == {"seeds": [5, 6], "prompt": "a fox", "scale": 0.5}


@pytest.mark.slow
def test_kernel_is_this_interpreter_and_cwd_the_notebook_folder(echo_run):
    [out] = echo_run["dirs"]
    got = echoed(out / "params_echo.ipynb")
    assert got["python"] == sys.executable
    assert Path(got["cwd"]) == NOTEBOOKS.resolve()


@pytest.mark.slow
def test_token_printed_by_a_notebook_is_scrubbed_from_every_file(echo_run):
    [out] = echo_run["dirs"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for path in files:
        text = path.read_text(errors="replace")
        assert CANARY_TOKEN not in text and CANARY_KEY not in text, path
        assert "**********" in text, path  # the careless cell's output is there, masked
    nb_text = (out / "params_echo.ipynb").read_text()
    printed = base64.b64encode(f"Authorization: Bearer {CANARY_TOKEN}".encode()).decode()
    assert printed not in nb_text  # the notebook printed this base64; its token part is masked
    match = re.search(r"header: (\S+)", nb_text)
    assert match is not None
    header = match.group(1)
    assert "**********" in header and len(header.split("**********")[-1]) <= 6  # '=' padding, '\n"'
    assert "warning" in echo_run["stderr"] and "replaced by **********" in echo_run["stderr"]
    assert CANARY_TOKEN not in echo_run["stdout"] + echo_run["stderr"]


# ---------------------------------------------------------------- failures and deadlines


@pytest.mark.slow
def test_failing_cell_is_named_and_its_files_kept(tmp_path, capsys):
    assert main(["report", str(FAILS), "--out", str(tmp_path / "out"), "--timeout", "120"]) == 1
    err = capsys.readouterr().err
    assert "cell 3" in err  # index in the source notebook, not counting papermill's injected cells
    assert 'raise ValueError(f"boom {value + 1}")' in err
    assert "ValueError: boom 42" in err
    assert (tmp_path / "out" / "fails.ipynb").is_file()
    assert "boom 42" in (tmp_path / "out" / "fails.html").read_text()


@pytest.mark.slow
def test_deadline_stops_a_hanging_notebook(tmp_path):
    # The deadline covers the kernel's start, which on a busy machine may take longer than the first
    # deadline tried: then the run stops before the hanging cell, and the test tries a longer one. Each
    # try must still end near its deadline, well before the cell's 120 s sleep would.
    for timeout in (4, 8, 16, 32):
        started = time.monotonic()
        rep = report(FAILS, {"mode": "sleep"}, tmp_path / f"out-{timeout}", timeout=timeout)
        took = time.monotonic() - started
        assert isinstance(rep, Report) and not rep.ok
        assert took < timeout + 60, took  # the cell sleeps 120 s: the deadline, not the cell, ended the run
        assert rep.error is not None and f"within {timeout} s" in rep.error, rep.error
        if "cell 2" in rep.error:
            break
    assert "cell 2" in rep.error, rep.error
    assert rep.notebook.is_file()
    assert "failed" in rep._repr_html_() and "fails.ipynb" in rep._repr_html_()


@pytest.mark.slow
def test_falls_back_to_own_kernel_when_python3_is_another_interpreter(tmp_path, monkeypatch):
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": ["/nonexistent/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "someone else's python",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before every other folder
    name = kernel_for_current_python()
    assert name.startswith("zlab-")
    import numpy as np

    # from Python, numpy scalars and tuples arrive as plain values
    rep = report(ECHO, {"seeds": (7, 8), "scale": np.float64(0.25)}, tmp_path / "out", timeout=120)
    assert rep.ok, rep.error
    got = echoed(rep.notebook)
    assert got["python"] == sys.executable
    assert (got["seeds"], got["scale"]) == ([7, 8], 0.25)


# ---------------------------------------------------------------- the HTML, as a browser shows it


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
def test_html_report_shows_the_plot_in_a_browser_with_code_hidden(tmp_path):
    import numpy as np

    rep = report(PLOT, out=tmp_path / "out", hide_code=True, timeout=120)
    assert rep.ok and rep.html is not None, rep.error
    assert "SOURCE-MARKER" in rep.notebook.read_text()
    assert "SOURCE-MARKER" not in rep.html.read_text()  # hide_code drops the inputs
    pixels = screenshot(rep.html, tmp_path / "shot.png", tmp_path / "profile").astype(int)
    near = int((np.abs(pixels - np.array(PLOT_RGB)).max(axis=-1) <= 3).sum())
    assert near > 50_000, near  # the 480×320 image, about 150k pixels
