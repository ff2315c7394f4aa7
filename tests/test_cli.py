"""The `zlab` command's smaller verbs, and Ctrl-C through the sync facade (the notebook path)."""

from __future__ import annotations

import os
import signal
import threading

import pandas as pd
import pytest
from PIL import Image

from zlab import cli, errors
from zlab.client import Client
from zlab.core.request import LoRA, Request
from zlab.runs.sweep import Sweep
from zlab.server import LocalServer


def test_generate_writes_the_image(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    out = tmp_path / "fox.png"
    argv = ["generate", "a fox", "--lora", "a/b:0.5", "--width", "256", "--height", "320", "--seed", "4"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (256, 320)
    sent = server.stats.submissions[0].input
    assert sent["loras"] == [{"path": "a/b", "scale": 0.5}] and sent["seed"] == 4
    assert str(out) in capsys.readouterr().out


def test_lora_flags_keep_url_colons():
    assert cli.parse_lora("https://host/x.safetensors:0.7") == ("https://host/x.safetensors", 0.7)
    assert cli.parse_lora("https://host/x.safetensors") == ("https://host/x.safetensors", 1.0)
    assert cli.parse_lora("owner/name") == ("owner/name", 1.0)
    with pytest.raises(errors.ValidationError, match="PATH:SCALE"):
        cli.parse_lora("owner/name:strong")


def test_generate_rejects_bad_input_with_exit_2(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    assert cli.main(["generate", "a fox", "--width", "100", "--out", str(tmp_path / "x.png")]) == 2
    assert "width: 100" in capsys.readouterr().err and server.stats.calls == {}


def test_sheet_command_draws_from_a_run_directory(server, tmp_path):
    sweep = Sweep(Request("fox", loras=[LoRA("a/b", 1)], width=256, height=256), axes={"seed": [1, 2]})
    with Client(base_url=server.base_url) as client:
        client.run(sweep, tmp_path / "run", progress=False)
    assert cli.main(["sheet", str(tmp_path / "run"), "--x", "seed", "--out", str(tmp_path / "s.png"), "--html"]) == 0
    assert (tmp_path / "s.png").is_file() and list(tmp_path.glob("*.html"))


@pytest.fixture
def interrupt_when():
    """`interrupt_when(ready)`: Ctrl-C this process, as Jupyter's interrupt button does, once `ready()` holds.

    Python's own Ctrl-C handler is installed for the test, as in a kernel: a process started in the
    background by a non-interactive shell (`nohup … &`) inherits SIGINT ignored, and would never see it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def arm(ready):
        def wait_then_interrupt():
            while not ready():
                threading.Event().wait(0.01)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=wait_then_interrupt, daemon=True).start()

    yield arm
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_a_notebook_cancels_queued_jobs_and_keeps_the_run_resumable(tmp_path, interrupt_when):
    """KeyboardInterrupt while the sync facade waits: queued jobs are cancelled, the rest recorded."""
    sweep = Sweep(Request("fox", loras=[LoRA("a/b", 1)], width=256, height=256), axes={"seed": list(range(6))})
    with LocalServer(latency=2.0, capacity=2) as srv, Client(base_url=srv.base_url) as client:
        interrupt_when(lambda: len(srv.stats.submissions) == 6)
        with pytest.raises(KeyboardInterrupt):
            client.run(sweep, tmp_path / "run", concurrency=6, progress=False, cache=False)
        df = pd.read_parquet(tmp_path / "run" / "results.parquet")
        assert (df.status == "cancelled").sum() == 4 and (df.status == "pending").sum() == 2
        assert sorted(j.state for j in srv.stats.jobs.values()).count("cancelled") == 4
        again = client.run(sweep, tmp_path / "run", concurrency=6, progress=False, cache=False)
    assert again.ok and len(srv.stats.submissions) == 6 + 4


def test_the_notebook_path_ends_an_interrupted_run_with_its_result(tmp_path, capsys, interrupt_when):
    """What `Client.run` does in a kernel: Ctrl-C gives back the interrupted run (one summary), no traceback."""
    from zlab.api import loop as _loop

    sweep = Sweep(Request("fox", loras=[LoRA("a/b", 1)], width=256, height=256), axes={"seed": list(range(6))})
    with LocalServer(latency=2.0, capacity=2) as srv, Client(base_url=srv.base_url) as client:
        interrupt_when(lambda: len(srv.stats.submissions) == 6)
        coro = client.aclient.run(sweep, tmp_path / "run", concurrency=6, progress=False, cache=False,
                                  on_interrupt="return")  # fmt: skip
        result = _loop.run_sync(coro, result_on_interrupt=True)
    assert result.interrupted and result.exit_code == 130 and result.counts == {"cancelled": 4, "pending": 2}
    assert capsys.readouterr().err.count("(interrupted: rerun to resume)") == 1
