"""Sweeps through the local server: results, resume, rerun, failures, budget, the command's exit codes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from zlab import cli
from zlab.client import Client
from zlab.core.request import LoRA, Request
from zlab.runs.ledger import RESULT_COLUMNS
from zlab.runs.sweep import Sweep
from zlab.server import Faults, LocalServer

BASE = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256, seed=1)


def sweep(**axes):
    return Sweep(BASE, axes=axes or {"lora1_scale": [0, 0.5, 1.0], "seed": [1, 2]})


def test_run_writes_the_contract(server, tmp_path):
    with Client(base_url=server.base_url) as client:
        result = client.run(sweep(size=["256x256", "256x384"], seed=[1, 2]), tmp_path / "run", progress=False)
    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert list(df.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS) and "size" in df.columns
    assert result.ok and (df.status == "succeeded").all() and len(df) == 4
    assert df.key.is_unique and df.request_id.notna().all() and (df.base_url == server.base_url).all()
    for row in df.itertuples():
        with Image.open(tmp_path / "run" / row.image_path) as image:
            assert image.size == (row.width, row.height)
            embedded = json.loads(image.text["zlab:request"])
            assert embedded["input"]["seed"] == row.seed and Request.from_input(embedded["input"]).key == row.key
    assert set(server.stats.accepted().values()) == {1}


def test_rerun_sends_nothing_and_other_dirs_use_the_cache(server, tmp_path):
    with Client(base_url=server.base_url) as client:
        client.run(sweep(), tmp_path / "a", progress=False)
        calls = dict(server.stats.calls)
        again = client.run(sweep(), tmp_path / "a", progress=False)
        assert server.stats.calls == calls and again.calls == {} and again.ok
        lines = []
        elsewhere = client.run(sweep(), tmp_path / "b", progress=False, echo=lines.append, budget=0.0)
        assert server.stats.calls == calls and elsewhere.df.cached.all() and elsewhere.ok
        assert "6 from the cache" in lines[0] and "to send: 0 cells" in lines[0]  # and a $0 budget is enough
        fresh = client.run(sweep(), tmp_path / "c", progress=False, cache=False)
        assert server.stats.calls["submit"] == calls["submit"] + 6 and not fresh.df.cached.any()


def test_failures_are_recorded_and_a_rerun_sends_exactly_them(tmp_path):
    with LocalServer(latency=0.02, capacity=4, faults=Faults(seed=3, job_failure=0.4)) as srv:
        with Client(base_url=srv.base_url) as client:
            first = client.run(sweep(seed=[1, 2, 3, 4]), tmp_path / "run", progress=False, cache=False)
            failed = first.df[first.df.status == "failed"]
            assert 0 < len(failed) < len(first.df) and not first.ok
            assert failed.error.str.contains("failed on the server").all()
            srv.set_faults(Faults())
            submitted = srv.stats.calls["submit"]
            second = client.run(sweep(seed=[1, 2, 3, 4]), tmp_path / "run", progress=False, cache=False)
    assert second.ok and srv.stats.calls["submit"] - submitted == len(failed)
    resent = [s.key for s in srv.stats.submissions[submitted:]]
    assert sorted(resent) == sorted(failed.key)


def test_random_seeds_are_recorded_and_reused_on_resume(server, tmp_path):
    spec = Sweep(BASE.replace(seed=-1), axes={"seed": [-1, -1]})
    with Client(base_url=server.base_url) as client:
        first = client.run(spec, tmp_path / "run", progress=False)
        again = client.run(Sweep(BASE.replace(seed=-1), axes={"seed": [-1, -1]}), tmp_path / "run", progress=False)
    assert sorted(first.df.seed) == sorted(again.df.seed) and -1 not in set(first.df.seed)
    assert server.stats.calls["submit"] == 2


def test_the_run_draws_the_sheet_the_spec_asks_for(server, tmp_path):
    spec = Sweep(BASE, axes={"lora1_scale": [0, 1], "seed": [1, 2]}, sheet={"x": "lora1_scale", "y": "seed"})
    with Client(base_url=server.base_url) as client:
        client.run(spec, tmp_path / "run", progress=False)
    with Image.open(tmp_path / "run" / "sheet.png") as sheet:
        assert sheet.width >= 2 * 128


def write_spec(path, axes='{lora1_scale: "0-1 [3]", seed: [1, 2]}', extra=""):
    path.write_text(
        f'prompt: "t3chnic4lly fox"\nloras: [{{path: a/b, scale: 1}}]\nwidth: 256\nheight: 256\nseed: 1\n'
        f"axes: {axes}\n{extra}"
    )
    return path


@pytest.mark.parametrize(
    ("axes", "words"),
    [
        ("{lora2_scale: [1]}", "add a LoRA #2"),
        ('{lora1_scale: "0-9 [3]"}', "0 to 4"),
        ("{sead: [1]}", "did you mean 'seed'"),
        ('{size: ["1x1"]}', "WxH"),
    ],
)
def test_bad_sweep_files_exit_2_before_anything_is_sent(server, tmp_path, monkeypatch, capsys, axes, words):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    assert cli.main(["run", str(write_spec(tmp_path / "s.yaml", axes)), "--out", str(tmp_path / "o")]) == 2
    assert words in capsys.readouterr().err and server.stats.calls == {}


def test_budget_and_dry_run_send_nothing(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    spec = str(write_spec(tmp_path / "s.yaml"))
    assert cli.main(["run", spec, "--out", str(tmp_path / "o"), "--budget", "0.001"]) == 2
    assert "over the budget of $0.00" in capsys.readouterr().err
    assert cli.main(["run", spec, "--out", str(tmp_path / "d"), "--dry-run"]) == 0
    paid_calls = {k: n for k, n in server.stats.calls.items() if k != "price"}  # asking the price is free
    assert "6 cells" in capsys.readouterr().err and paid_calls == {} and not (tmp_path / "d").exists()
    assert cli.main(["run", spec, "--out", str(tmp_path / "o"), "--budget", "5"]) == 0
    assert server.stats.calls["submit"] == 6


def test_run_exits_1_when_cells_fail(tmp_path, monkeypatch):
    with LocalServer(latency=0.01, faults=Faults(job_failure=1.0)) as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        assert cli.main(["run", str(write_spec(tmp_path / "s.yaml")), "--out", str(tmp_path / "o"), "--no-cache"]) == 1
    assert (pd.read_parquet(tmp_path / "o" / "results.parquet").status == "failed").all()


def test_unknown_submits_are_never_resent_unless_asked(tmp_path):
    with LocalServer(latency=0.01, faults=Faults(seed=5, drop_submit_after=0.5, endpoints=())) as srv:
        with Client(base_url=srv.base_url) as client:
            first = client.run(sweep(), tmp_path / "run", progress=False, cache=False)
            unknown = set(first.df.key[first.df.status == "unknown"])
            assert unknown and "--retry-unknown" in first.summary()
            srv.set_faults(Faults())
            calls = srv.stats.calls["submit"]
            client.run(sweep(), tmp_path / "run", progress=False, cache=False)
            assert srv.stats.calls["submit"] == calls  # not resent by default: they may have been billed
            last = client.run(sweep(), tmp_path / "run", progress=False, cache=False, retry_unknown=True)
    assert last.ok and {s.key for s in srv.stats.submissions[calls:]} == unknown


def test_a_run_primes_the_sheet_thumbnails_with_the_sheets_own_recipe(server, tmp_path):
    from zlab.sheet.thumbs import cache_dir, cache_key, decode_thumbnail

    with Client(base_url=server.base_url) as client:
        result = client.run(sweep(), tmp_path / "run", progress=False)
    for row in result.df.itertuples():
        image = tmp_path / "run" / row.image_path
        entry = cache_dir(tmp_path / "run") / cache_key(image, image.stat(), 256)
        with Image.open(entry) as cached:
            assert cached.tobytes() == decode_thumbnail(image, 256).tobytes()


def test_a_result_is_its_sweeps_view_and_the_directory_keeps_every_cell(server, tmp_path):
    with Client(base_url=server.base_url) as client:
        client.run(sweep(lora1_scale=[0, 0.5, 1.0], seed=[1, 2, 3]), tmp_path / "run", progress=False)
        second = client.run(sweep(lora1_scale=[0, 0.5, 1.0], seed=[4]), tmp_path / "run", progress=False)
    assert list(second.df.seed) == [4, 4, 4] and len(pd.read_parquet(tmp_path / "run" / "results.parquet")) == 12
