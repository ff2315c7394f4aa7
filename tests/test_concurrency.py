"""The automatic concurrency: its pure decisions, the limiter, the simulator, and a sweep on the local server."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import threading

import pytest
from gates import Gate
from waiting import wait_for

from zlab import cli, errors
from zlab.client import Client
from zlab.core.concurrency import MIN_QUEUED, InFlight, Limiter, headroom, may_send, parse_concurrency
from zlab.core.request import LoRA, Request
from zlab.runs.sweep import Sweep
from zlab.server import LocalServer
from zlab.server.faults import Faults
from zlab.testing.queuesim import Scenario, ideal, simulate


@pytest.mark.parametrize(("given", "parsed"), [("auto", "auto"), (" AUTO ", "auto"), (8, 8), ("8", 8), (256, 256)])
def test_concurrency_is_auto_or_a_cap(given, parsed):
    assert parse_concurrency(given) == parsed


@pytest.mark.parametrize("bad", [0, 257, -1, "x", "", True, 1.5, None, "8.0"])
def test_other_concurrencies_are_refused(bad):
    with pytest.raises(errors.ValidationError, match="concurrency"):
        parse_concurrency(bad)


@pytest.mark.parametrize(
    ("policy", "held", "running", "collecting", "allowed"),
    [
        ("auto", 0, 0, 0, True),  # nothing seen yet: send the minimum headroom
        ("auto", MIN_QUEUED, 0, 0, False),
        ("auto", MIN_QUEUED, MIN_QUEUED, 0, True),  # all started: the service has room, or will once they end
        ("auto", 2 * MIN_QUEUED, MIN_QUEUED, 0, False),  # as many running as queued
        ("auto", 2 * MIN_QUEUED + 3, MIN_QUEUED, 2, True),  # two being downloaded: they just ran there
        ("auto", 2 * MIN_QUEUED + 4, MIN_QUEUED, 2, False),
        ("auto", MIN_QUEUED + 1, 0, 2, True),  # jobs that end before anyone sees them run still show room
        ("auto", MIN_QUEUED + 2, 0, 2, False),
        ("auto", 63, 32, 0, True),  # the headroom grows with what runs
        ("auto", 64, 32, 0, False),
        ("auto", 256, 250, 0, False),  # never past the ceiling
        (8, 7, 0, 0, True),  # a number is a hard cap on cells in flight, whatever runs
        (8, 8, 8, 0, False),
        (8, 8, 0, 8, True),  # ... on jobs at the service: finished ones being downloaded hold no place
        (8, 16, 0, 8, False),
    ],
)
def test_may_send(policy, held, running, collecting, allowed):
    assert may_send(policy, InFlight(held, running, collecting)) is allowed


def test_jobs_past_their_expected_end_count_neither_as_running_nor_as_queued():
    assert may_send("auto", InFlight(held=MIN_QUEUED + 3, running=0, collecting=0, overdue=4))  # 1 short
    assert not may_send("auto", InFlight(held=MIN_QUEUED + 4, running=0, collecting=0, overdue=4))
    assert InFlight(held=8, running=2, collecting=1, overdue=4).waiting == 1


def test_the_headroom_follows_what_runs():
    assert [headroom(r) for r in (0, 1, MIN_QUEUED, MIN_QUEUED + 1, 32)] == [MIN_QUEUED] * 3 + [MIN_QUEUED + 1, 32]


def test_the_limiter_admits_a_waiting_submit_when_woken_by_a_start():
    seen = {"running": 0}

    async def scenario() -> list[str]:
        limiter = Limiter("auto", lambda: (seen["running"], 0))
        order: list[str] = []

        async def cell(name: str, release: asyncio.Event) -> None:
            async with limiter:
                order.append(f"in {name}")
                await release.wait()

        n = MIN_QUEUED + 1
        releases = [asyncio.Event() for _ in range(n)]
        tasks = [asyncio.create_task(cell(str(i), releases[i])) for i in range(n)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        order.append("the minimum in, one waits")
        seen["running"] = 1  # the first seen running: one fewer queued → room for one more
        limiter.wake()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for release in releases:
            release.set()
        await asyncio.gather(*tasks)
        assert limiter.held == 0
        return order

    first = [f"in {i}" for i in range(MIN_QUEUED)]
    assert asyncio.run(scenario()) == [*first, "the minimum in, one waits", f"in {MIN_QUEUED}"]


def test_a_cancelled_waiter_takes_no_place():
    async def scenario() -> int:
        limiter = Limiter(2, lambda: (0, 0, 0))
        async with limiter, limiter:
            waiting = asyncio.create_task(limiter.__aenter__())
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        async with limiter:  # both places free again, and the cancelled waiter is not admitted later
            return limiter.held

    assert asyncio.run(scenario()) == 1


# On the simulator: every regime, capacities 2 and 8 (targets of issue 22) ----------------------------

REGIMES = {
    "base": Scenario(),
    "other users 50%": Scenario(other_load=0.5),
    "jitter σ=0.3": Scenario(jitter=0.3),
    "size-dependent": Scenario(base_s=0.1, per_mp_s=0.4, sizes=(0.262, 0.786, 1.049, 1.573)),
    "1-based positions": Scenario(positions="1"),
    "cold first wave 10×": Scenario(cold_factor=10),
    "2 s jobs": Scenario(base_s=2.0),
}


@pytest.mark.parametrize("name", list(REGIMES))
@pytest.mark.parametrize("capacity", [2, 8])
def test_auto_stays_near_the_ideal_in_every_regime(name, capacity):
    sc = dataclasses.replace(REGIMES[name], capacity=capacity, concurrency="auto")
    got = simulate(sc)
    assert got.wall_s / ideal(sc) <= 1.05
    # Issue 22's ≤ 4.5 calls per image; with σ = 0.3 jitter few calls and a small lag cannot both hold
    # (4.2–4.8 over seeds, at a 10–13% median lag), so that regime gets a looser bound.
    assert got.polls_per_image <= (5.0 if REGIMES[name].jitter else 4.5)


def test_auto_follows_a_service_that_grows():
    for capacity in (2, 8):  # half the slots, then the full number after 2 s, then twice as many after 4 s
        sc = Scenario(capacity=capacity // 2, capacity_steps=((2.0, capacity), (4.0, 2 * capacity)), concurrency="auto")
        got = simulate(sc)
        assert got.wall_s / ideal(sc) <= 1.05 and got.polls_per_image <= 4.5


def test_with_other_users_auto_stays_near_the_ideal_at_32_slots():
    sc = Scenario(capacity=32, other_load=0.85, concurrency="auto")
    seeded = [dataclasses.replace(sc, seed=s) for s in range(4)]
    ratios = [simulate(one).wall_s / ideal(one) for one in seeded]
    assert statistics.fmean(ratios) <= 1.25  # finding the capacity costs a wave


def test_auto_beats_concurrency_at_capacity_and_matches_all_queued():
    sc = Scenario(capacity=8)
    auto = simulate(dataclasses.replace(sc, concurrency="auto")).wall_s
    at_capacity = simulate(dataclasses.replace(sc, concurrency=8)).wall_s
    all_queued = ideal(sc)  # every job queued at once, every finish noticed at once
    assert auto < at_capacity and auto / all_queued <= 1.05


@pytest.mark.parametrize("capacity", [2, 8, 32])
def test_what_is_in_flight_follows_the_capacity(capacity):
    got = simulate(Scenario(jobs=256, capacity=capacity, concurrency="auto"))
    # Once the first wave has passed: typically what runs plus as many queued. (A finish not yet noticed
    # counts as running for a moment, so when a whole wave turns over at once a few more may be queued
    # briefly: harmless, queued jobs cost nothing.)
    later = [n for at, n in got.in_flight if 2.0 <= at <= got.wall_s * 0.75]
    assert capacity < statistics.median(later) <= capacity + max(MIN_QUEUED, capacity)
    assert got.peak_in_flight <= 4 * capacity + MIN_QUEUED


def test_a_shrinking_service_gets_fewer_jobs_in_flight():
    steady = simulate(Scenario(jobs=128, capacity=8, concurrency="auto"))
    shrunk = simulate(Scenario(jobs=128, capacity=8, capacity_steps=((2.0, 2),), concurrency="auto"))
    # 2 running + the minimum queued (+ finishes being collected), against 8 running + 8 queued
    assert shrunk.in_flight_after(3.0) <= 2 + MIN_QUEUED + 2 and steady.in_flight_after(3.0) >= 14


# On the local server: a freed slot is taken by a queued job at once ---------------------------------


def test_auto_keeps_the_service_busy_between_a_finish_and_the_next_submit(tmp_path):
    base = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256, seed=1)
    sweep = Sweep(base, axes={"seed": list(range(8))})
    gate = Gate(capacity=2, seeds=range(8))
    lines: list[str] = []
    with LocalServer(renderer=gate) as srv, Client(base_url=srv.base_url) as client:

        def states() -> dict[int, str]:
            seeds = {s.request_id: s.input["seed"] for s in srv.stats.submissions}
            return {seeds[rid]: job.state for rid, job in srv.stats.jobs.items()}

        def count(state: str) -> int:
            return sum(s == state for s in states().values())

        done: dict[str, object] = {}
        options = {"progress": False, "cache": False, "echo": lines.append}
        runner = threading.Thread(target=lambda: done.update(result=client.run(sweep, tmp_path / "run", **options)))
        runner.start()
        try:
            while (left := 8 - count("succeeded")) > 0:
                # Two run; while cells remain to send, auto keeps more of them queued at the service.
                wait_for(
                    lambda left=left: (
                        count("in_progress") == min(2, left) and (count("in_queue") >= 1 or len(states()) == 8)
                    )
                )
                queued = count("in_queue")
                first = min(seed for seed, state in states().items() if state == "in_progress")
                gate.open(first)
                wait_for(lambda first=first: states()[first] == "succeeded")
                if queued:  # the service started a queued job as this one ended: no slot waited for a submit
                    assert count("in_progress") == 2
        finally:
            gate.close()
            runner.join(60)
    result = done["result"]
    assert result.ok and len(srv.stats.submissions) == 8  # type: ignore[attr-defined]
    assert any("concurrency auto" in line for line in lines), lines


def test_the_command_runs_auto_by_default_and_takes_a_cap(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text('prompt: "t3chnic4lly fox"\nwidth: 256\nheight: 256\nseed: 1\naxes: {seed: [1, 2, 3]}\n')
    with LocalServer(latency=0.01) as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        assert cli.main(["run", str(spec), "--out", str(tmp_path / "a"), "--dry-run"]) == 0
        assert "at concurrency auto" in capsys.readouterr().err
        assert cli.main(["run", str(spec), "--out", str(tmp_path / "b"), "--concurrency", "3", "--dry-run"]) == 0
        assert "at concurrency 3" in capsys.readouterr().err
        with pytest.raises(SystemExit) as refused:
            cli.main(["run", str(spec), "--out", str(tmp_path / "c"), "--concurrency", "0"])
        assert refused.value.code == 2 and "auto or an integer" in capsys.readouterr().err
        assert srv.stats.calls.get("submit", 0) == 0


def test_a_cap_counts_jobs_at_the_service_not_downloads(tmp_path):
    base = Request("t3chnic4lly a fox", width=256, height=256, seed=1)
    sweep = Sweep(base, axes={"seed": [1, 2]})
    delay = 3.0  # each output file answers this late: far longer than noticing a finish and submitting
    with LocalServer(latency=0.05, faults=Faults(file_delay=delay)) as srv, Client(base_url=srv.base_url) as client:
        result = client.run(sweep, tmp_path / "run", concurrency=1, progress=False, cache=False, echo=lambda _: None)
        first, second = sorted(srv.stats.jobs.values(), key=lambda job: job.created_at)
    assert result.ok and first.finished_at is not None
    # At concurrency 1 the second job was sent while the first one's image was still on its way.
    assert second.created_at < first.finished_at + delay
