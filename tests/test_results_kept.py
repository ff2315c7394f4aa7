"""Results never shrink: results.parquet holds every cell its directory's ledger has, a sweep's result is
its view of them, and picks made by two galleries at once are all kept and seen live."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pandas as pd
import pytest

from zlab.client import Client
from zlab.core.request import LoRA, Request
from zlab.runs.sweep import Sweep
from zlab.runs.tables import load_results, read_picks, set_pick
from zlab.server import LocalServer
from zlab.views.gallery_model import GalleryModel

BASE = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256, seed=1)


@pytest.fixture(scope="module")
def client():
    with LocalServer(latency=0, capacity=8) as server, Client(base_url=str(server.base_url)) as c:
        yield c


def run(client, out, **axes):
    sweep = Sweep(BASE, axes=axes)
    return client.run(sweep, out, progress=False, cache=False, sheet=False, echo=lambda _line: None)


def test_a_sweeps_rerun_keeps_the_galleries_rerun_and_other_sweeps_cells(client, tmp_path):
    out = tmp_path / "run"
    first = run(client, out, lora1_scale=[0, 1.0], seed=[1, 2])
    rerun = GalleryModel(first, client=client).rerun(first.df["key"].iat[0], seed=77)
    other = run(client, out, lora1_scale=[0.5], seed=[9])
    again = run(client, out, lora1_scale=[0, 1.0], seed=[1, 2])  # the notebook's sweep cell, run once more
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["key"]) == {*first.df["key"], rerun, *other.df["key"]} and len(table) == 6
    assert (table["status"] == "succeeded").all() and table["key"].is_unique
    assert list(again.df["key"]) == list(first.df["key"])  # the sweep's own view: a filter of the directory
    assert set(GalleryModel(again).rows["key"]) == set(table["key"])  # a gallery of the result shows the rerun


def test_a_result_and_a_gallery_see_picks_made_after_the_run(client, tmp_path):
    res = run(client, tmp_path / "run", seed=[1, 2])
    gallery = GalleryModel(tmp_path / "run")
    assert not res.df["favourite"].any()
    res.df["mine"] = 1  # a column added to the result stays while the picks do not change
    assert "mine" in res.df.columns
    key = res.df["key"].iat[1]
    set_pick(tmp_path / "run", key, favourite=True, rating=3)  # e.g. another kernel's gallery
    assert res.df.loc[res.df["key"] == key, ["favourite", "rating"]].values.tolist() == [[True, 3]]
    assert gallery.df.loc[gallery.df["key"] == key, "rating"].tolist() == [3]


STAR = textwrap.dedent(
    """
    import sys
    from zlab.runs.tables import set_pick
    for n in range(int(sys.argv[3])):
        set_pick(sys.argv[1], f"{sys.argv[2]}{n}", favourite=True, rating=n % 6)
    """
)


def test_galleries_starring_at_once_keep_every_star(tmp_path):
    """Two processes and two threads star 4 × 60 cells of one directory at the same time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", STAR, str(tmp_path), name, "60"], env=env) for name in ("p", "q")]
    threads = [
        threading.Thread(target=lambda n=name: [set_pick(tmp_path, f"{n}{i}", favourite=True) for i in range(60)])
        for name in ("t", "u")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    picks = read_picks(tmp_path)
    assert len(picks) == 240 and all(p["favourite"] for p in picks.values())
    assert picks["p7"]["rating"] == 1 and picks["q11"]["rating"] == 5


def test_a_run_dir_loaded_as_a_table_has_every_cell(client, tmp_path):
    run(client, tmp_path / "run", seed=[1, 2, 3])
    run(client, tmp_path / "run", seed=[4])
    assert sorted(load_results(tmp_path / "run")["seed"]) == [1, 2, 3, 4]
