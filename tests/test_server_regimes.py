"""Queue regimes: other users' load and bursts, run-time jitter, a capacity schedule, cold starts.

Server behaviour is checked through what a client sees (statuses, positions) and what the server
recorded (`Stats.jobs`: each job's planned run time and its times); the draws behind the regime are
pure functions, checked directly.
"""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import sys
import time

import httpx
import pytest
from gates import Gate
from waiting import wait_for

from zlab.core.request import MODEL_ID
from zlab.errors import ConfigError
from zlab.server import LocalServer
from zlab.server.regime import (
    Regime,
    arrival_gap,
    capacity_at,
    format_capacity,
    is_cold,
    jittered,
    parse_burst,
    parse_capacity,
)

SUBMIT = f"/v1/models/{MODEL_ID}"
SMALL = {"prompt": "a red fox", "width": 256, "height": 256, "seed": 5}


def submit(api: httpx.Client, seed: int = 5) -> str:
    answer = api.post(SUBMIT, json={**SMALL, "seed": seed})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["request_id"])


def statuses(api: httpx.Client, ids: list[str]) -> list[str]:
    return [api.get(f"/v1/requests/{rid}/status").json()["status"] for rid in ids]


def planned(srv: LocalServer, ids: list[str]) -> list[float]:
    """Each job's planned run time as the server recorded it."""
    return [round(srv.stats.jobs[rid].latency, 6) for rid in ids]


def test_capacity_grows_on_schedule() -> None:
    with LocalServer(latency=60, capacity="1,3@0.5") as srv, httpx.Client(base_url=srv.base_url) as api:
        ids = [submit(api, seed) for seed in range(4)]
        wait_for(lambda: statuses(api, ids) == ["in_progress"] * 3 + ["in_queue"])
        assert api.get(f"/v1/requests/{ids[3]}/status").json()["queue_position"] == 0
        assert (srv.capacity, srv.regime.capacity_steps) == (1, ((0.5, 3),))
        started = srv.stats.started_mono
        assert started is not None and started <= time.monotonic()
        step = time.time() - (time.monotonic() - started) + 0.5  # t = 0.5 s on the wall clock
        jobs = [srv.stats.jobs[rid] for rid in ids]
        # The second and third job waited for the step, however late they were sent (no time window).
        assert all(job.started_at is not None and job.started_at >= step - 0.05 for job in jobs[1:3])
        assert jobs[0].started_at is not None and jobs[0].started_at - jobs[0].created_at < 1  # not at the step


def test_a_shrinking_capacity_lets_running_jobs_finish_and_starts_no_more() -> None:
    gate = Gate(capacity=2, seeds=range(3))
    with LocalServer(renderer=gate) as srv, httpx.Client(base_url=srv.base_url) as api:
        ids = [submit(api, seed) for seed in range(3)]
        assert statuses(api, ids) == ["in_progress", "in_progress", "in_queue"]
        srv.set_capacity(1)
        gate.open(1)
        wait_for(lambda: statuses(api, ids)[1] == "completed")
        # With 2 slots the third job would have started as the second finished; with 1 it waits for the first.
        assert statuses(api, ids) == ["in_progress", "completed", "in_queue"]
        gate.open(0)
        wait_for(lambda: statuses(api, ids) == ["completed", "completed", "in_progress"])
        srv.set_capacity(3)  # growing starts nothing that is not queued, and breaks nothing running
        gate.open(2)
        wait_for(lambda: statuses(api, ids) == ["completed"] * 3)


def test_a_capacity_below_one_is_refused() -> None:
    with LocalServer(latency=0.01) as srv, pytest.raises(ConfigError, match="capacity"):
        srv.set_capacity(0)


@pytest.mark.parametrize(("cold_jobs", "expected"), [(None, [0.15, 0.15, 0.05, 0.05]), (1, [0.15, 0.05, 0.05, 0.05])])
def test_cold_starts_slow_the_first_wave_or_the_first_jobs(cold_jobs: int | None, expected: list[float]) -> None:
    with (
        LocalServer(latency=0.05, capacity=2, cold_factor=3, cold_jobs=cold_jobs) as srv,
        httpx.Client(base_url=srv.base_url) as api,
    ):
        ids = [submit(api, seed) for seed in range(4)]
        wait_for(lambda: all(srv.stats.jobs[rid].finished_at for rid in ids))
        assert planned(srv, ids) == expected


def run_times(seed: int) -> list[float]:
    with (
        LocalServer(latency=10, capacity=16, jitter=0.5, seed=seed) as srv,
        httpx.Client(base_url=srv.base_url) as api,
    ):
        return planned(srv, [submit(api, s) for s in range(8)])


def test_jitter_varies_run_times_repeatably_per_seed() -> None:
    first = run_times(3)
    assert len(set(first)) == 8 and all(t > 0 for t in first)
    assert run_times(3) == first
    assert run_times(4) != first


def test_jitter_keeps_the_mean_run_time() -> None:
    rng = random.Random(1)
    samples = [jittered(2.0, 0.5, rng.gauss()) for _ in range(20_000)]
    assert statistics.fmean(samples) == pytest.approx(2.0, rel=0.03)
    assert statistics.median(samples) < 2.0  # lognormal: a long right tail
    assert jittered(2.0, 0.0, 5.0) == 2.0


def test_bursts_of_other_users_take_queue_places_invisibly() -> None:
    with (
        LocalServer(latency=60, capacity=1, burst_size=3, burst_every=0.2, other_seconds=60) as srv,
        httpx.Client(base_url=srv.base_url) as api,
    ):
        wait_for(lambda: srv.stats.other_jobs >= 3)
        mine = submit(api)
        body = api.get(f"/v1/requests/{mine}/status").json()
        assert body["status"] == "in_queue" and body["queue_position"] >= 2
        assert list(srv.stats.jobs) == [mine] and srv.stats.calls == {"submit": 1, "status": 1}


def test_other_load_keeps_slots_busy() -> None:
    with (
        LocalServer(latency=60, capacity=2, other_load=4, other_seconds=0.5) as srv,
        httpx.Client(base_url=srv.base_url) as api,
    ):
        wait_for(lambda: srv.stats.other_jobs >= 4)
        mine = submit(api)
        assert api.get(f"/v1/requests/{mine}/status").json()["status"] == "in_queue"
        assert srv.regime.other_load == 4


def test_arrival_gaps_follow_the_load() -> None:
    rng = random.Random(2)
    gaps = [arrival_gap(0.5, 4, 2.0, rng.random()) for _ in range(20_000)]
    assert statistics.fmean(g for g in gaps if g is not None) == pytest.approx(1.0, rel=0.03)  # 0.5×4/2 = 1 per s
    assert arrival_gap(0.0, 4, 2.0, 0.5) is None
    assert arrival_gap(1.0, 4, 0.0, 0.5) is not None  # a zero run time still gives a finite rate


def test_capacity_schedules_parse_and_format() -> None:
    assert parse_capacity(4) == (4, ())
    assert parse_capacity("4") == (4, ())
    assert parse_capacity("4,8@5,16@10") == (4, ((5.0, 8), (10.0, 16)))
    assert format_capacity(*parse_capacity("4,8@5,16@10")) == "4,8@5,16@10"
    assert [capacity_at(4, ((5.0, 8), (10.0, 16)), t) for t in (0, 4.9, 5, 9.9, 10, 1e6)] == [4, 4, 8, 8, 16, 16]


@pytest.mark.parametrize("bad", ["", "four", "0", "4,8", "4,8@-1", "4,8@5,2@3", "4,0@5", "4@1"])
def test_bad_capacity_schedules_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="capacity"):
        parse_capacity(bad)


def test_bursts_parse() -> None:
    assert parse_burst("") == (0, 0.0) and parse_burst("8/10") == (8, 10.0)
    for bad in ("8", "8/x", "0/10", "8/0"):
        with pytest.raises(ConfigError):
            parse_burst(bad)


def test_is_cold_counts_jobs_started() -> None:
    wave = Regime(cold_factor=2)
    assert [is_cold(wave, n, 3) for n in range(5)] == [True, True, True, False, False]
    assert not is_cold(Regime(cold_jobs=5), 0, 3)  # a factor of 1 is no cold start


@pytest.mark.parametrize(
    "settings",
    [
        {"other_load": -1},
        {"burst_size": 3},
        {"burst_every": 2.0},
        {"other_seconds": 0},
        {"jitter": -0.1},
        {"cold_factor": 0.5},
        {"cold_jobs": -1},
    ],
)
def test_regimes_refuse_impossible_settings(settings: dict) -> None:
    with pytest.raises(ConfigError):
        Regime(**settings)


def test_zlab_serve_takes_regime_flags() -> None:
    args = [sys.executable, "-m", "zlab.cli", "serve", "--port", "0", "--latency", "60", "--capacity", "1"]
    args += ["--burst", "3/0.1", "--other-seconds", "60", "--jitter", "0.2", "--cold-factor", "2", "--seed", "1"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
        assert url
        with httpx.Client(base_url=url.group(0), timeout=5) as api:

            def queued_behind_others() -> bool:
                try:
                    mine = submit(api)
                except httpx.ConnectError:  # the line is printed just before uvicorn starts accepting
                    return False
                if api.get(f"/v1/requests/{mine}/status").json().get("queue_position", 0) >= 2:
                    return True
                api.post(f"/v1/requests/{mine}/cancel")  # leave no job of ours queued: only theirs count
                return False

            wait_for(queued_behind_others)
    finally:
        process.terminate()
        process.wait(timeout=10)
