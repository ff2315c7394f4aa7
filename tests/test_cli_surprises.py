"""The command without surprises: each point a new user tripped over, through the real command (in this
process or a subprocess) against the local server over loopback HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from zlab import cli
from zlab.client import Client
from zlab.core.request import Request
from zlab.runs.progress import ProgressState
from zlab.runs.sweep import Sweep
from zlab.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
GEN = ["generate", "a fox", "--width", "256", "--height", "256", "--seed", "3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spec(tmp_path: Path, axes: str = "seed: [1, 2]") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"prompt: a fox\nloras: []\nwidth: 256\nheight: 256\naxes:\n  {axes}\n", encoding="utf-8")
    return path


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_generate_honours_the_suffix_and_file_modes(server, tmp_path, monkeypatch, capsys, umask_022):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    assert cli.main([*GEN, "--out", str(tmp_path / "fox2.jpg")]) == 0
    with Image.open(tmp_path / "fox2.jpg") as image:
        assert image.format == "JPEG" and image.size == (256, 256)
    assert not (tmp_path / "fox2.png").exists() and "converted from PNG" in capsys.readouterr().out
    assert (tmp_path / "fox2.jpg").stat().st_mode & 0o777 == 0o644


def test_generate_refuses_a_suffix_it_cannot_write_before_paying(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    assert cli.main([*GEN, "--out", str(tmp_path / "fox.gif")]) == 2
    assert "--out" in capsys.readouterr().err and server.stats.calls == {} and not list(tmp_path.iterdir())


def test_generate_treats_a_directory_as_a_directory(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    assert cli.main([*GEN, "--out", str(tmp_path / "new")]) == 0  # not there yet, no suffix: a directory
    assert cli.main([*GEN, "--out", str(tmp_path / "new")]) == 0  # there: another file in it
    written = sorted((tmp_path / "new").iterdir())
    assert len(written) == 2 and all(p.suffix == ".png" for p in written) and not (tmp_path / "new.png").exists()
    said = capsys.readouterr().out
    assert all(str(path) in said for path in written)


def test_run_files_are_readable_by_others_under_the_usual_umask(server, tmp_path, monkeypatch, umask_022):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    assert cli.main(["run", str(spec(tmp_path)), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    images = list((tmp_path / "run" / "images").iterdir())
    assert images and {p.stat().st_mode & 0o777 for p in images} == {0o644}


def test_errors_name_the_commands_flags_not_python_keywords(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    big = tmp_path / "big.yaml"
    big.write_text(
        "prompt: a fox\nloras: [{path: a/b, scale: 1}]\naxes: {seed: '1-400 [400]', lora1_scale: '0-1 [400]'}\n"
    )
    assert cli.main(["run", str(big), "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert "--max-cells" in err and "max_cells=" not in err
    assert cli.main(["run", str(big), "--out", str(tmp_path / "big"), "--max-cells", "200000", "--dry-run"]) == 0
    with Client(base_url=server.base_url) as client:  # two seeds in one slot of a sheet across sizes only
        client.run(Sweep(Request("fox", width=256, height=256), axes={"seed": [1, 2], "size": ["256x256", "256x320"]}),
                   tmp_path / "run", progress=False)  # fmt: skip
    capsys.readouterr()
    code = cli.main(["sheet", str(tmp_path / "run"), "--x", "size", "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert code == 2 and "--stack" in err and "stack=True" not in err and "--y seed" in err and "y='" not in err
    assert cli.main(["sheet", str(tmp_path / "run"), "--x", "size", "--stack", "--out", str(tmp_path / "s.png")]) == 0


def test_the_summary_shows_what_was_paid_apart_from_the_estimate(tmp_path, monkeypatch, capsys):
    with LocalServer(latency=0, quirks=["price=0.01"]) as priced:
        monkeypatch.setenv("ZLAB_BASE_URL", priced.base_url)
        out = ["--out", str(tmp_path / "run"), "--no-progress", "--no-cache"]
        assert cli.main(["run", str(spec(tmp_path)), *out]) == 0
        first = capsys.readouterr().err
        assert "paid $0.02 for 2 new images (the service's cost), ≈$0.02 estimated" in first
        assert cli.main(["run", str(spec(tmp_path, "seed: [1, 2, 3]")), *out]) == 0
        second = capsys.readouterr().err
        assert "paid $0.01 for 1 new image (the service's cost)" in second and "$0.03 in the directory" in second
    with LocalServer(latency=0, tokens=["right"], quirks=["price=0.01"]) as guarded:
        monkeypatch.setenv("ZLAB_BASE_URL", guarded.base_url)
        monkeypatch.setenv("RUNCOMFY_TOKEN", "wrong")
        assert cli.main(["run", str(spec(tmp_path)), "--out", str(tmp_path / "refused"), "--no-progress"]) == 3
        assert "paid $0.00 for 0 new images" in capsys.readouterr().err


def test_a_run_refused_by_its_budget_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    with LocalServer(latency=0, quirks=["price=0.01"]) as priced:
        monkeypatch.setenv("ZLAB_BASE_URL", priced.base_url)
        assert cli.main(["run", str(spec(tmp_path)), "--out", str(tmp_path / "run"), "--budget", "0.001"]) == 2
    assert "--budget" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_an_unreachable_base_url_fails_at_once_naming_it(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    monkeypatch.setenv("ZLAB_BASE_URL", url)
    assert cli.main(["run", str(spec(tmp_path)), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"API at {url}" in err and "cannot reach" in err and "ConnectError" in err
    assert cli.main([*GEN, "--out", str(tmp_path / "x.png")]) == 2 and "cannot reach" in capsys.readouterr().err


def test_a_token_with_base_url_local_is_not_called_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", "local")
    monkeypatch.setenv("RUNCOMFY_TOKEN", "a-real-looking-token")
    monkeypatch.setenv("ZLAB_LOCAL_LATENCY", "0")
    with Client():
        pass
    said = capsys.readouterr()
    assert "ZLAB_BASE_URL=local" in said.out + said.err and "no RUNCOMFY_TOKEN" not in said.out + said.err


def test_a_missing_model_folder_fails_before_loading(capsys):
    assert cli.main(["serve", "--backend", "diffusers", "--model", "/nonexistent/zimage"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "no folder /nonexistent/zimage" in err and "loading" not in err  # nothing loaded


@pytest.mark.slow
def test_serve_publishes_a_zero_price_and_stops_on_ctrl_c_without_resume_talk(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zlab.cli", "serve", "--port", str(port), "--latency", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert "Ctrl-C stops it" in proc.stdout.readline()  # it listens once it says so
        body = httpx.get(f"http://127.0.0.1:{port}/v1/models/tongyi-mai/z-image/turbo/lora").json()
        assert body["base_price_usd"] == 0
        with Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.pricing().cost(Request("fox", width=512, height=512)) == 0
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "resume" not in err and "stopped" in err


def test_cache_hits_read_as_reused_not_as_a_rate():
    state = ProgressState(total=40)
    state.counts["waiting"] = 40
    for i in range(40):
        state.move("waiting", "reused", finished=True, now=100.0 + i * 1e-4)
    state.closed_at = 100.01
    text = state.text(now=100.01)
    assert "40 reused" in text and "img/s" not in text


def test_reports_are_not_committed():
    ignored = subprocess.run(["git", "check-ignore", "-q", "reports/x/report.html"], cwd=ROOT, check=False)
    assert ignored.returncode == 0


def test_the_html_sheet_moves_with_its_images(server, tmp_path):
    with Client(base_url=server.base_url) as client:
        client.run(
            Sweep(Request("fox", width=256, height=256), axes={"seed": [1, 2]}), tmp_path / "run", progress=False
        )
    page = tmp_path / "share" / "sheet.html"
    assert cli.main(["sheet", str(tmp_path / "run"), "--x", "seed", "--out", str(page), "--portable"]) == 0
    moved = tmp_path / "elsewhere"
    (tmp_path / "share").rename(moved)
    html = (moved / "sheet.html").read_text(encoding="utf-8")
    links = [part.split('"')[0] for part in html.split('<a href="')[1:]]
    assert len(links) == 2 and all((moved / link).is_file() for link in links)


AWAITED = textwrap.dedent(
    """
    import zlab
    from zlab.server import LocalServer
    srv = LocalServer(latency=30, capacity=1); srv.start()
    ac = zlab.AsyncClient(base_url=str(srv.base_url))
    print("starting", flush=True)
    res = await ac.run(zlab.Sweep(zlab.Request("fox", width=256, height=256), axes={"seed": [1, 2]}), OUT,
                       progress=False, cache=False)
    print("interrupted:", res.interrupted)
    """
)


@pytest.mark.slow
def test_an_awaited_run_ends_on_interrupt_with_its_summary_and_no_traceback(tmp_path):
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZLAB_CACHE_DIR": str(tmp_path / "cache")}
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        msg_id = kc.execute(AWAITED.replace("OUT", repr(str(tmp_path / "run"))))
        texts, errors, interrupted = [], [], False
        deadline = time.monotonic() + 120  # only to stop a hang
        while time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                texts.append(content["text"])
                if "zlab: plan:" in "".join(texts) and not interrupted:
                    km.interrupt_kernel()
                    interrupted = True
            elif kind == "error":
                errors.append(content["ename"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        output = "".join(texts)
        assert interrupted and errors == [], (errors, output)
        assert "interrupted: True" in output and "zlab: 2 cells" in output
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
