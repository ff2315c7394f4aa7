"""Issue 18's scenarios about runs: images reused only when whole, cancels that land later, a ledger that cannot
take a request id for a while, and `zlab generate` interrupted after it paid. Real runs against the local server
(or a stand-in service), real files, real processes; each test failed before and passes now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from waiting import wait_for

from zlab import cli
from zlab.client import AsyncClient, Client
from zlab.core.request import Request
from zlab.core.retry import RetryPolicy
from zlab.runs.sweep import Sweep
from zlab.server import LocalServer
from zlab.server.dialect import Dialect

SMALL = Request("a fox", loras=[], width=256, height=256, seed=3)
SWEEP = Sweep(SMALL, {"seed": [1, 2, 3]})


def run(client: Client, out: Path, **kw):
    kw.setdefault("cache", False)
    return client.run(SWEEP, out, progress=False, sheet=False, **kw)


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Integrity on reuse ------------------------------------------------------------------------------------


def test_an_image_cut_short_in_the_run_directory_is_fetched_again_by_its_request_id(tmp_path):
    with LocalServer(latency=0.0) as srv, Client(base_url=srv.base_url) as client:
        first = run(client, tmp_path / "run")
        broken = tmp_path / "run" / first.df.image_path[0]
        cut_short(broken)
        lines: list[str] = []
        again = run(client, tmp_path / "run", echo=lines.append)
    assert again.ok and srv.stats.calls["submit"] == len(SWEEP.cells())  # nothing paid again
    with open(broken, "rb") as fh:
        assert len(fh.read()) > 0
    from PIL import Image

    with Image.open(broken) as image:
        image.load()
    assert "did not decode: fetched again by request id" in "\n".join(lines)


def test_an_image_cut_short_in_the_shared_cache_is_not_counted_done(tmp_path):
    cache = tmp_path / "cache"
    with LocalServer(latency=0.0) as srv, Client(base_url=srv.base_url) as client:
        run(client, tmp_path / "a", cache=cache)
        for image in cache.rglob("*.png"):
            cut_short(image)
        lines: list[str] = []
        second = run(client, tmp_path / "b", cache=cache, echo=lines.append)
    assert second.ok and not second.df.cached.any()
    assert "in the shared cache did not decode" in "\n".join(lines)
    from PIL import Image

    for path in second.df.image_path:
        with Image.open(tmp_path / "b" / path) as image:
            image.load()


# A cancel that lands later ---------------------------------------------------------------------------


def test_a_cancel_that_lands_a_moment_later_is_followed_and_counted_and_the_rerun_sends_again(tmp_path):
    later = dataclasses.replace(Dialect.from_seed(1), cancel="later", lag_s=0.0)
    lines: list[str] = []
    with LocalServer(latency=2.0, capacity=1) as srv:
        srv.set_dialect(later)

        async def interrupted() -> None:
            async with AsyncClient("t", srv.base_url) as client:
                options = dict(progress=False, cache=False, sheet=False, on_interrupt="return", echo=lines.append)
                task = asyncio.ensure_future(client.run(SWEEP, tmp_path / "run", **options))
                while len(srv.stats.submissions) < len(SWEEP.cells()):
                    await asyncio.sleep(0.01)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(interrupted())
        cancelled = len(srv.stats.cancelled())
        said = next(line for line in "\n".join(lines).splitlines() if "interrupted:" in line)
        assert cancelled == 2 and f"{cancelled} queued job(s) cancelled" in said
        with Client(token="t", base_url=srv.base_url) as client:
            rerun = run(client, tmp_path / "run")
    assert rerun.ok and sorted(srv.stats.accepted().values()) == [1, 2, 2]  # only the cancelled ones sent again


# The ledger cannot take the request id for a while -----------------------------------------------------


@pytest.mark.slow
def test_a_ledger_locked_by_another_process_keeps_the_id_and_never_pays_again(tmp_path):
    ledger = tmp_path / "run" / ".zlab" / "ledger.sqlite"
    held: list[sqlite3.Connection] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "/v1/models/" in request.url.path:
            answers.append(1)
            if not held:  # another process takes the write lock right as the first job is accepted
                blocker = sqlite3.connect(ledger, check_same_thread=False, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")
                held.append(blocker)
                threading.Timer(12.0, blocker.rollback).start()  # longer than the ledger's busy_timeout
            return httpx.Response(200, json={"request_id": f"job-{len(answers) - 1}"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "completed"})
        return httpx.Response(200, json={"status": "succeeded", "output": {"image": _png_uri()}})

    answers: list[int] = []
    transport = httpx.MockTransport(answer)
    retry = RetryPolicy(base_s=0.01)
    one = Sweep(SMALL, {"seed": [1]})
    with Client(token="t", base_url="http://api.test", transport=transport, retry=retry) as client:
        first = client.run(one, tmp_path / "run", progress=False, cache=False, sheet=False)
        again = client.run(one, tmp_path / "run", progress=False, cache=False, sheet=False)
    assert first.ok and again.ok and len(answers) == 1  # paid once (it was failed, then paid again)
    assert first.df.request_id[0] == "job-0"


def _png_uri() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (1, 2, 3)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# zlab generate interrupted after it paid ----------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_in_generate_says_what_was_paid_and_collect_fetches_it_without_paying(tmp_path, capsys, monkeypatch):
    out = tmp_path / "fox.png"
    with LocalServer(latency=3.0, capacity=1) as srv:
        env = {**os.environ, "ZLAB_BASE_URL": srv.base_url}
        cmd = [sys.executable, "-m", "zlab.cli", "generate", "a fox", "--no-lora", "--width", "256", "--height", "256",
               "--out", str(out)]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: srv.stats.jobs and next(iter(srv.stats.jobs.values())).started_at)  # running: paid
        request_id = srv.stats.submissions[0].request_id
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and f"--collect {request_id}" in err and "billed" in err
        assert "run the same command again" not in err
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        code = cli.main(["generate", "--collect", request_id, "--out", str(out), "--timeout", "30"])
    assert code == 0 and out.is_file() and srv.stats.calls["submit"] == 1
    assert request_id in capsys.readouterr().out
