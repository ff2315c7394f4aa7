"""Money safety under hostile conditions: two writers, another API, eventual consistency, odd ids, broken files
after success, seeds, orphans, local failures, waits that must end, and input that must be refused.

Each test runs through real processes or the real client against the local server over loopback HTTP,
and asserts what a user cares about: nothing paid twice, no paid image dropped, nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from waiting import wait_for

from zlab import cli, errors
from zlab.client import AsyncClient, Client
from zlab.core.request import LoRA, Request
from zlab.core.retry import RetryPolicy
from zlab.runs.sweep import Sweep
from zlab.server import Faults, LocalServer

BASE = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256, seed=1)
SWEEP = Sweep(BASE, axes={"lora1_scale": [0, 0.5, 1.0], "seed": [1, 2]})  # 6 cells
SPEC = "prompt: fox\nloras: [{path: a/b, scale: 1}]\nwidth: 256\nheight: 256\naxes: {seed: [1, 2, 3, 4, 5, 6]}\n"


def run(client: Client, out: Path, sweep: Sweep = SWEEP, **kw):
    return client.run(sweep, out, progress=False, cache=kw.pop("cache", False), **kw)


def start_run(tmp_path: Path, base_url: str, *extra: str) -> subprocess.Popen:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "ZLAB_BASE_URL": base_url}
    cmd = [sys.executable, "-m", "zlab.cli", "run", str(spec), "--out", str(tmp_path / "run"), "--no-cache", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Paid twice -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_the_same_directory_says_who_holds_it_and_pays_nothing(tmp_path, capsys):
    with LocalServer(latency=0.5, capacity=2) as srv:
        first = start_run(tmp_path, srv.base_url, "--concurrency", "2")
        wait_for(lambda: len(srv.stats.submissions) >= 1)
        submitted = len(srv.stats.submissions)
        code = cli.main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"), "--no-cache"])
        err = capsys.readouterr().err
        assert code == 5 and f"pid {first.pid}" in err and "--wait" in err
        with Client(base_url=srv.base_url) as client, pytest.raises(errors.RunDirBusy):  # the notebook path too
            run(client, tmp_path / "run")
        assert len(srv.stats.submissions) - submitted <= 2  # only the first run's own in-flight submits
        assert first.wait(30) == 0
        waited = cli.main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"), "--wait", "10"])
    assert waited == 0 and set(srv.stats.accepted().values()) == {1}


def test_accepted_jobs_are_collected_only_at_the_api_that_accepted_them(tmp_path):
    with LocalServer(latency=1.0, capacity=8) as first_api:
        with Client(base_url=first_api.base_url) as client:
            left = run(client, tmp_path / "run", cell_timeout=0.3)  # running at the deadline: left accepted
        assert (left.df.status == "pending").all()
        with LocalServer(latency=0.05) as other_api, Client(base_url=other_api.base_url) as client:
            moved = run(client, tmp_path / "run")
            assert other_api.stats.calls.get("submit", 0) == 0 and (moved.df.status == "pending").all()
            assert f"set ZLAB_BASE_URL={first_api.base_url}" in moved.summary()
        with Client(base_url=first_api.base_url) as client:
            back = run(client, tmp_path / "run")
        assert back.ok and set(first_api.stats.accepted().values()) == {1}


@pytest.mark.parametrize(
    "faults",
    [Faults(eventual_404_calls=3), Faults(odd_ids="punct"), Faults(odd_ids="long")],
    ids=["eventual-404", "odd-ids", "long-ids"],
)
def test_fresh_404s_and_odd_ids_are_collected_once(faults, tmp_path):
    with LocalServer(latency=0.05, capacity=4, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        result = run(client, tmp_path / "run")
        again = run(client, tmp_path / "run")
    assert result.ok and again.ok and set(srv.stats.accepted().values()) == {1}
    assert set(result.df.request_id) == set(srv.stats.jobs)  # recorded as given


@pytest.mark.parametrize(
    "faults",
    [
        Faults(file_problem="html_200"),
        Faults(file_problem="empty"),
        Faults(file_problem="redirect_loop"),
        Faults(file_expire_after=0.0),
    ],
    ids=["html-200", "empty", "redirect-loop", "expired-url"],
)
def test_a_broken_file_after_success_is_collected_again_never_paid_again(faults, tmp_path):
    with LocalServer(latency=0.05, capacity=4, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        broken = run(client, tmp_path / "run")
        assert (broken.df.status == "pending").all() and "image download failed" in broken.summary()
        assert not any((tmp_path / "run" / "images").iterdir())
        srv.set_faults(Faults())  # the CDN recovers
        healed = run(client, tmp_path / "run")
    assert healed.ok and set(srv.stats.accepted().values()) == {1}


def test_drawn_seeds_belong_to_the_directory_and_are_never_redrawn(tmp_path):
    random = Sweep(BASE.replace(seed=-1), axes={"lora1_scale": [0, 1.0]})
    other = Sweep(BASE, axes={"seed": [7, 8]})
    with LocalServer(latency=0.02) as srv, Client(base_url=srv.base_url) as client:
        first = run(client, tmp_path / "run", random)
        run(client, tmp_path / "run", other)  # another sweep into the same directory
        back = run(client, tmp_path / "run", random)
        wider = run(client, tmp_path / "run", Sweep(BASE.replace(seed=-1), axes={"lora1_scale": [0, 1.0, 2.0]}))
        submits = srv.stats.calls["submit"]
    assert first.ok and back.ok and back.calls == {} and set(back.df.seed) == set(first.df.seed)
    assert wider.ok and set(wider.df.seed) == set(first.df.seed) and submits == 2 + 2 + 1


def test_images_already_in_the_directory_are_reused_when_the_ledger_is_gone(tmp_path):
    with LocalServer(latency=0.02) as srv, Client(base_url=srv.base_url) as client:
        run(client, tmp_path / "run")
        shutil.rmtree(tmp_path / "run" / ".zlab")
        again = run(client, tmp_path / "run")
    assert again.ok and again.calls == {} and set(srv.stats.accepted().values()) == {1}


def test_paid_jobs_of_cells_dropped_from_the_sweep_are_still_collected(tmp_path):
    with LocalServer(latency=0.8, capacity=8) as srv, Client(base_url=srv.base_url) as client:
        left = run(client, tmp_path / "run", cell_timeout=0.2)
        assert (left.df.status == "pending").all()
        narrower = Sweep(BASE, axes={"lora1_scale": [0], "seed": [1, 2]})
        result = run(client, tmp_path / "run", narrower)
        assert result.ok and "collected 4 accepted job(s) of cells no longer in this sweep" in result.summary()
    images = list((tmp_path / "run" / "images").glob("*.png"))
    assert len(images) == 6 and set(srv.stats.accepted().values()) == {1}


# Local trouble never stops a sweep ------------------------------------------------------------------------


def test_an_unwritable_cache_and_an_unwritable_image_are_recorded_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("ZLAB_CACHE_DIR", str(blocker))  # every cache write fails
    key = SWEEP.cells()[0].key
    (tmp_path / "run" / "images" / f"{key}.png").mkdir(parents=True)  # this one image cannot be written
    with LocalServer(latency=0.02) as srv, Client(base_url=srv.base_url) as client:
        result = client.run(SWEEP, tmp_path / "run", progress=False)
        df = result.df.set_index("key")
        assert df.status[key] == "pending" and "local error" in result.summary()
        assert (df.drop(index=key).status == "succeeded").all()
        (tmp_path / "run" / "images" / f"{key}.png").rmdir()
        healed = client.run(SWEEP, tmp_path / "run", progress=False)
    assert healed.ok and set(srv.stats.accepted().values()) == {1}


# Every wait ends ----------------------------------------------------------------------------------------


def test_a_day_long_retry_after_fails_the_call_at_once(tmp_path):
    faults = Faults(rate_limited=1.0, retry_after=86400, endpoints=("submit",))
    with LocalServer(latency=0.02, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        start = time.monotonic()
        result = run(client, tmp_path / "run")
    assert time.monotonic() - start < 10 and (result.df.status == "failed").all()
    assert result.df.error.str.contains("86400 s").all() and srv.stats.accepted() == {}


def test_a_trickling_answer_cannot_hold_a_call(tmp_path):
    faults = Faults(trickle=5.0, trickle_on=("status", "result"))
    policy = RetryPolicy(base_s=0.01, attempts=2, call_s=0.5, deadline_s=3)
    with LocalServer(latency=0.02, faults=faults) as srv, Client(base_url=srv.base_url, retry=policy) as client:
        start = time.monotonic()
        result = run(client, tmp_path / "run", concurrency=6)
        took = time.monotonic() - start
        srv.set_faults(Faults())
        healed = run(client, tmp_path / "run")
    assert took < 15 and (result.df.status == "pending").all() and healed.ok
    assert set(srv.stats.accepted().values()) == {1}


def test_the_cell_deadline_counts_from_the_submit_and_cancels_queued_jobs(tmp_path):
    with LocalServer(latency=1.5, capacity=1) as srv, Client(base_url=srv.base_url) as client:
        result = run(client, tmp_path / "run", concurrency=3, cell_timeout=0.4)
        cancelled = srv.stats.cancelled()
    statuses = result.df.status.value_counts().to_dict()
    assert statuses.get("pending") == 1 and statuses.get("cancelled") == len(cancelled) >= 2
    assert "timed out in the queue" in result.summary()


# Input checked before anything happens ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write", "words"),
    [
        (lambda p: p.write_text("prompt: x\naxes: {seed: '0-999 [1000]', lora1_scale: '0-1 [1000]'}\n"), "cells"),
        (lambda p: p.write_text("prompt: x\nprompt: y\n"), "appears twice"),
        (lambda p: p.write_bytes(b"prompt: \xff\xfe caf\xe9\n"), "UTF-8"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: os.symlink(p, p), "readable"),
        (lambda p: os.mkfifo(p), "regular"),
        (lambda p: p.write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{c}: &{c} [*{p_},*{p_},*{p_},*{p_},*{p_},*{p_},*{p_},*{p_},*{p_}]\n"
            for p_, c in zip("abcdefghijklmnopqr", "bcdefghijklmnopqrs", strict=False))), "alias"),
    ],
    ids=["million-cells", "duplicate-key", "not-utf8", "directory", "symlink-loop", "fifo", "alias-bomb"],
)  # fmt: skip
def test_bad_sweep_files_exit_2_quickly_with_a_short_message(write, words, tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    write(path)
    start = time.monotonic()
    code = cli.main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err) < 2000 and time.monotonic() - start < 10


def test_a_utf16_sweep_file_is_read(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC, encoding="utf-16")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0


@pytest.mark.parametrize(
    ("env", "args", "words"),
    [
        ({"ZLAB_PRICE_PER_MP": "abc"}, [], "ZLAB_PRICE_PER_MP"),
        ({"ZLAB_PRICE_PER_IMAGE": "nan"}, [], "ZLAB_PRICE_PER_IMAGE"),
        ({"ZLAB_BASE_URL": "htps//typo"}, [], "ZLAB_BASE_URL"),
        ({"RUNCOMFY_TOKEN": "tøken", "ZLAB_BASE_URL": "http://127.0.0.1:9"}, [], "non-ASCII"),
        ({}, ["--out", "FILE"], "file"),
        ({}, ["--out", "JUNK_LEDGER"], "not a zlab ledger"),
    ],
    ids=["price-abc", "price-nan", "base-url", "token", "out-is-file", "junk-ledger"],
)
def test_bad_settings_exit_2_and_send_nothing(env, args, words, tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "JUNK_LEDGER" / ".zlab").mkdir(parents=True)
    (tmp_path / "JUNK_LEDGER" / ".zlab" / "ledger.sqlite").write_bytes(b"this is not sqlite" * 100)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = [a if a not in ("FILE", "JUNK_LEDGER") else str(tmp_path / a) for a in args]
    code = cli.main(["run", str(spec), *(args or ["--out", str(tmp_path / "run")])])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "tøken" not in err


@pytest.mark.parametrize("args", [["--budget", "nan"], ["--budget", "-1"], ["--cell-timeout", "0"]])
def test_budgets_and_timeouts_must_be_finite_and_sensible(args, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    with pytest.raises(SystemExit) as info:
        cli.main(["run", str(spec), "--out", str(tmp_path / "run"), *args])
    assert info.value.code == 2


def test_a_token_with_a_windows_line_ending_works_and_is_never_shown(tmp_path, monkeypatch, capsys):
    with LocalServer(token="secret-token-123", latency=0.02) as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        monkeypatch.setenv("RUNCOMFY_TOKEN", "secret-token-123\r\n")
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC)
        assert cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "secret-token-123" not in out.out + out.err


def test_generate_checks_its_output_path_before_paying(tmp_path, monkeypatch):
    with LocalServer(latency=0.02) as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        assert cli.main(["generate", "fox", "--width", "256", "--height", "256", "--out", str(tmp_path / "x.gif")]) == 2
        missing = tmp_path / "no" / "such" / "dir" / "x.png"
        assert cli.main(["generate", "fox", "--width", "256", "--height", "256", "--out", str(missing)]) == 2
        with pytest.raises(SystemExit):
            cli.main(["generate", "fox", "--out", str(tmp_path / "x.png"), "--timeout", "0"])
        assert srv.stats.calls.get("submit", 0) == 0
        assert cli.main(["generate", "fox", "--width", "256", "--height", "256", "--out", str(tmp_path / "x.png")]) == 0
        assert cli.main(["generate", "fox", "--width", "256", "--height", "256", "--out", str(tmp_path)]) == 0


def test_junk_beside_the_ledger_is_ignored_and_a_junk_parquet_is_a_clear_error(tmp_path, capsys):
    with LocalServer(latency=0.02) as srv, Client(base_url=srv.base_url) as client:
        run(client, tmp_path / "run")
        (tmp_path / "run" / "sweep.json").write_text("[1, 2")
        assert run(client, tmp_path / "run").ok
    (tmp_path / "run" / "results.parquet").write_bytes(b"PAR1 junk")
    assert cli.main(["sheet", str(tmp_path / "run"), "--x", "lora1_scale"]) == 2
    assert "results.parquet" in capsys.readouterr().err


# Clean stops ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_twice_still_leaves_the_ledger_true_and_prints_the_summary(tmp_path):
    with LocalServer(latency=2.0, capacity=1) as srv:
        proc = start_run(tmp_path, srv.base_url, "--concurrency", "6", "--no-progress")
        wait_for(lambda: len(srv.stats.submissions) == 6)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        cancelled = set(srv.stats.cancelled())
    assert proc.returncode == 130 and "zlab: 6 cells:" in err and "cancelled" in err
    with sqlite3.connect(tmp_path / "run" / ".zlab" / "ledger.sqlite") as db:
        rows = dict(db.execute("SELECT request_id, status FROM cells").fetchall())
    assert {rid for rid, status in rows.items() if status == "cancelled"} == cancelled and len(cancelled) >= 4


def test_an_interrupted_notebook_run_returns_its_result(tmp_path):
    async def interrupted():
        with LocalServer(latency=1.0, capacity=1) as srv:
            async with AsyncClient(base_url=srv.base_url) as client:
                task = asyncio.ensure_future(client.run(SWEEP, tmp_path / "run", concurrency=6, progress=False,
                                                        cache=False, on_interrupt="return"))  # fmt: skip
                await asyncio.sleep(0.5)
                task.cancel()
                return await task

    result = asyncio.run(interrupted())
    assert result.interrupted and result.exit_code == 130
    assert json.loads((tmp_path / "run" / "sweep.json").read_text())["axes"]
    assert pd.read_parquet(tmp_path / "run" / "results.parquet").status.isin(["cancelled", "pending"]).all()


def test_a_token_with_a_line_ending_is_scrubbed_from_reports_in_both_spellings():
    from zlab.report.scrub import scrub_text, secret_values

    secrets = secret_values({"RUNCOMFY_TOKEN": "tok-abcdef123\r\n"})
    text = "printed tok-abcdef123 and 'tok-abcdef123\\r\\n' here"
    assert "tok-abcdef123" not in scrub_text(text, secrets)
