"""Polling under every queue regime: zlab beside fixed-interval pollers and the serial loop, same run.

Regimes (64 cells, 8 slots, 0.5 s jobs unless the regime says otherwise): base; other users' load at
50% and 85% of capacity; autoscaling 4 → 8 → 16 slots; a cold first wave 10× slower; size-dependent
run time (0.1 s + 0.4 s/MP over four sizes); 1-based queue positions; 2 s jobs; lognormal jitter
σ = 0.3. Each regime runs all queued at once, at concurrency = capacity, and with the automatic
concurrency (`auto`, the default: what runs at the service plus as many queued); `auto` also runs
at 2, 8 and 32 slots.

Two stands, both reported:

* **simulated** (`zlab.testing.queuesim`): a discrete-event queue with 4 ms round trips; every contender
  sees the same draws (run times, other users' arrivals), so differences are the pollers' alone.
  The ideal is the makespan of the same jobs with a client that notices every finish at once and
  resubmits at once. Cheap: every regime, every contender, several seeds.
* **local server** (`zlab.server.LocalServer` in its own process, switched into each regime): zlab's
  real runner over loopback HTTP, against fixed 0.25 s and 1 s /status pollers written with plain
  httpx and (base regime) the serial loop; calls counted by an httpx transport wrapper, lag from the
  server's `finished_mono` to the arrival of the `succeeded` /result answer. The ideal is the
  simulated one for the same regime (the mean over seeds where the regime draws at random): the
  local server's own schedule depends on when each client submits.

Targets (all queued): ≤ 1.15× ideal, ≤ 4 status+result calls per image (≤ 4.5 with other users or
size-dependent run time), median lag ≤ 10% of the run time, in the base, other-users, size,
1-based, cold and 2 s rows; ≤ 1.2× with autoscaling; at concurrency = capacity ≤ 1.25× (issue 22:
≤ 1.15×); auto ≤ 1.05× at 2 and 8 slots (≤ 1.25× at 32 slots for 64 cells) with ≤ 4.5 calls. The
ideal for `auto` is a client that notices every start and finish at once under the same policy.
Jitter has no call target: with σ = 0.3, ≤ 4 calls and ≤ 10% lag cannot both hold.

Run alone: ``python benchmarks/bench_polling.py [--quick] [--sim-only]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench_sweep import PROMPT, RecordingTransport, ServerProcess, _fixed, lags, run_naive

from zlab import AsyncClient, Request, Sweep
from zlab.testing.queuesim import Scenario, ideal, simulate


@dataclasses.dataclass(frozen=True)
class Regime:
    """One row of the regime table: the simulator's scenario and the local server's switches."""

    name: str
    scenario: Scenario
    server: dict[str, Any]  # LocalServer keyword arguments
    sizes: tuple[str, ...] = ("512x512",)
    calls_target: float = 4.0
    wall_target: float = 1.15
    targeted: bool = True  # jitter: reported, no target


def regimes(n: int = 64, capacity: int = 8, run_s: float = 0.5) -> list[Regime]:
    """The nine regimes of issue 12, at `n` cells on `capacity` slots of `run_s` seconds."""
    base = Scenario(jobs=n, capacity=capacity, base_s=run_s)
    srv: dict[str, Any] = {"latency": run_s, "capacity": capacity}
    step = 4 * run_s  # autoscaling: a step every four run times
    return [
        Regime("base", base, srv),
        Regime("other users 50%", dataclasses.replace(base, other_load=0.5), {**srv, "other_load": 0.5},
               calls_target=4.5),
        Regime("other users 85%", dataclasses.replace(base, other_load=0.85), {**srv, "other_load": 0.85},
               calls_target=4.5),
        Regime("autoscaling 4→8→16",
               dataclasses.replace(base, capacity=capacity // 2,
                                   capacity_steps=((step, capacity), (2 * step, 2 * capacity))),
               {**srv, "capacity": f"{capacity // 2},{capacity}@{step:g},{2 * capacity}@{2 * step:g}"},
               wall_target=1.2),
        Regime("cold first wave 10×", dataclasses.replace(base, cold_factor=10), {**srv, "cold_factor": 10}),
        Regime("size-dependent run time",
               dataclasses.replace(base, base_s=run_s / 5, per_mp_s=run_s * 0.8, sizes=(0.262, 0.786, 1.049, 1.573),
                                   grouped=True),
               {**srv, "latency": f"{run_s / 5:g}+{run_s * 0.8:g}/mp"},
               sizes=("512x512", "1024x768", "1024x1024", "1024x1536"), calls_target=4.5),
        Regime("1-based positions", dataclasses.replace(base, positions="1"), {**srv, "quirks": ["position_1based"]}),
        Regime("2 s jobs", dataclasses.replace(base, base_s=2.0), {**srv, "latency": 2.0}),
        Regime("jitter σ=0.3", dataclasses.replace(base, jitter=0.3), {**srv, "jitter": 0.3}, targeted=False),
    ]


@dataclasses.dataclass
class Figure:
    """One contender in one regime and mode: wall/ideal, calls per image, median lag (s and % of run)."""

    regime: str
    mode: str  # "all queued", "concurrency = capacity" or "auto"
    contender: str
    wall_x: float
    calls: float
    lag_s: float
    lag_pct: float
    stand: str  # "simulated" or "local server"


def modes(capacity: int) -> list[tuple[str, Any]]:
    """(mode, the scenario's concurrency): all queued, a cap at the capacity, automatic."""
    return [("all queued", None), ("concurrency = capacity", capacity), ("auto", "auto")]


def _random(sc: Scenario) -> bool:
    return sc.other_load > 0 or sc.jitter > 0


def simulated(regs: list[Regime], seeds: int, say: Callable[[str], None] = print) -> list[Figure]:
    """Every regime, both modes, every contender, in the simulator (means over `seeds` where random)."""
    out = []
    for reg in regs:
        for mode, conc in modes(reg.scenario.capacity):
            runs: dict[str, list[tuple[float, float, float, float]]] = {}
            for seed in range(seeds if _random(reg.scenario) else 1):
                sc = dataclasses.replace(reg.scenario, concurrency=conc, seed=seed)
                best = ideal(sc)
                contenders = [("zlab", "zlab", 0.0), ("fixed 0.25 s", "fixed", 0.25), ("fixed 1 s", "fixed", 1.0)]
                if conc == "auto":  # the fixed pollers stand beside it at a cap (the other two modes)
                    contenders = contenders[:1]
                if conc is None:  # the serial loop ignores the mode: one job at a time either way
                    contenders.append(("serial loop (1 s)", "serial", 1.0))
                for name, client, interval in contenders:
                    r = simulate(sc, client, interval=interval)  # type: ignore[arg-type]
                    runs.setdefault(name, []).append((r.wall_s / best, r.polls_per_image, r.median_lag,
                                                      r.lag_fraction))
            for name, vals in runs.items():
                w, c, lag, frac = (statistics.fmean(v[k] for v in vals) for k in range(4))
                out.append(Figure(reg.name, mode, name, w, c, lag, 100 * frac, "simulated"))
        z = [f for f in out if f.regime == reg.name and f.contender == "zlab"]
        say(f"  simulated {reg.name}: " + "; ".join(f"{f.mode} {f.wall_x:.2f}× {f.calls:.1f} calls "
                                                   f"{f.lag_pct:.0f}% lag" for f in z))
    return out


@contextlib.contextmanager
def server(kwargs: dict[str, Any]) -> Iterator[ServerProcess]:
    """The local server in its own process, switched into a regime by `kwargs` (LocalServer's)."""
    with ServerProcess(**kwargs) as srv:
        yield srv


def sweep_for(reg: Regime, n: int) -> Sweep:
    """n cells cycling through the regime's sizes (seeds make them distinct)."""
    sizes = list(reg.sizes)
    per = n // len(sizes)
    return Sweep(Request(PROMPT, seed=1), axes={"size": sizes, "seed": list(range(1, per + 1))})


async def _zlab(url: str, sweep: Sweep, out: Path, conc: int | str) -> tuple[float, RecordingTransport]:
    transport = RecordingTransport()
    async with AsyncClient(base_url=url, transport=transport) as client:
        t0 = time.perf_counter()
        await client.run(sweep, out, concurrency=conc, progress=False, cache=False, echo=lambda line: None)
        return time.perf_counter() - t0, transport


def on_server(regs: list[Regime], n: int, naive: bool,
              say: Callable[[str], None] = print) -> list[Figure]:
    """zlab and the fixed pollers against the local server in each regime (and the serial loop in base)."""
    out = []
    for reg in regs:
        sweep = sweep_for(reg, n)
        payloads = [c.request.to_input() for c in sweep.cells()]
        for mode, conc in modes(reg.scenario.capacity):
            sc = dataclasses.replace(reg.scenario, jobs=n, concurrency=conc)
            best = statistics.fmean(ideal(dataclasses.replace(sc, seed=s)) for s in range(3 if _random(sc) else 1))
            run_mean = statistics.fmean(sc.run_s(sc.size_of(i)) for i in range(n))
            conc = n if conc is None else conc
            names = ("zlab",) if conc == "auto" else ("zlab", "fixed 0.25 s", "fixed 1 s")  # the pollers: a cap only
            for name in names:
                with tempfile.TemporaryDirectory(prefix="zlab-bench-poll-") as tmp, server(reg.server) as srv:
                    if name == "zlab":
                        wall, transport = asyncio.run(_zlab(srv.url, sweep, Path(tmp), conc))
                    else:
                        interval = 0.25 if name == "fixed 0.25 s" else 1.0
                        wall, transport = _fixed_run(srv, payloads, Path(tmp), interval, conc)
                    found = lags(transport, srv.jobs())
                calls = (transport.calls.get("status", 0) + transport.calls.get("result", 0)) / n
                lag = statistics.median(found) if found else math.nan
                out.append(Figure(reg.name, mode, name, wall / best, calls, lag, 100 * lag / run_mean, "local server"))
            z = out[-len(names)]
            say(f"  local server {reg.name}, {mode}: zlab {z.wall_x:.2f}× {z.calls:.1f} calls {z.lag_pct:.0f}% lag")
        if naive and reg.name == "base":
            with tempfile.TemporaryDirectory(prefix="zlab-bench-poll-") as tmp, server(reg.server) as srv:
                result = run_naive(srv.url, sweep, Path(tmp))
            best = ideal(dataclasses.replace(reg.scenario, jobs=n))
            out.append(Figure(reg.name, "all queued", "serial loop (1 s)", result.wall_s / best, result.polls_per_image,
                              math.nan, math.nan, "local server"))
    return out


def _fixed_run(srv: ServerProcess, payloads: list[dict[str, Any]], out: Path, interval: float,
               cap: int) -> tuple[float, RecordingTransport]:
    transport = RecordingTransport()
    t0 = time.perf_counter()
    asyncio.run(_fixed(srv.url, payloads, out, interval, cap, transport))
    return time.perf_counter() - t0, transport


def verdict(reg: Regime, f: Figure) -> bool | None:
    """Whether zlab's figure meets its regime's target (None: no target)."""
    if f.contender != "zlab" or not reg.targeted:
        return None
    if f.mode == "concurrency = capacity":
        return f.wall_x <= 1.25
    if f.mode == "auto":
        return f.wall_x <= 1.05 and f.calls <= 4.5
    return f.wall_x <= reg.wall_target and f.calls <= reg.calls_target and f.lag_pct <= 10


def table(regs: list[Regime], figures: list[Figure], stand: str) -> list[str]:
    """Markdown: one row per regime and mode, zlab beside the fixed pollers and the serial loop."""
    lines = [
        "| regime | mode | zlab ×ideal · calls/img · lag | fixed 0.25 s | fixed 1 s | serial loop | target | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(f.regime, f.mode, f.contender): f for f in figures if f.stand == stand}
    for reg in regs:
        for mode, _ in modes(0):
            z = by.get((reg.name, mode, "zlab"))
            if z is None:
                continue

            def cell(name: str, mode: str = mode, regime: str = reg.name) -> str:
                f = by.get((regime, mode, name))
                if f is None:
                    return "—"
                lag = "" if math.isnan(f.lag_pct) else f" · {f.lag_s * 1000:.0f} ms ({f.lag_pct:.0f}%)"
                return f"{f.wall_x:.2f}× · {f.calls:.1f}{lag}"

            serial = by.get((reg.name, mode, "serial loop (1 s)"))
            serial_cell = "—" if serial is None else f"{serial.wall_x:.2f}× · {serial.calls:.1f}"
            if mode == "all queued":
                target = (f"≤{reg.wall_target:g}× · ≤{reg.calls_target:g} · ≤10%" if reg.targeted else "report")
            elif mode == "auto":
                target = "≤1.05× · ≤4.5" if reg.targeted else "≤1.05×"
            else:
                target = "≤1.25×" if reg.targeted else "report"
            met = verdict(reg, z)
            result = "—" if met is None else "met" if met else "**missed**"
            lines.append(f"| {reg.name} | {mode} | {cell('zlab')} | {cell('fixed 0.25 s')} | {cell('fixed 1 s')} | "
                         f"{serial_cell} | {target} | {result} |")
    return lines


def by_capacity(seeds: int, capacities: tuple[int, ...] = (2, 8, 32)) -> list[str]:
    """Markdown: zlab's automatic concurrency at several capacities, beside concurrency = capacity and
    the fixed 0.25 s poller at concurrency = capacity (64 cells, simulated, means over seeds)."""
    head = " | ".join(f"{c} slots: auto · at capacity · fixed 0.25 s at capacity" for c in capacities)
    lines = [f"| regime | {head} |", "|---|" + "---|" * len(capacities)]
    for name in [r.name for r in regimes()]:
        cells = []
        for cap in capacities:
            reg = next(r for r in regimes(capacity=cap) if r.name == name)
            got = []
            for conc, client in (("auto", "zlab"), (cap, "zlab"), (cap, "fixed")):
                figs = []
                for seed in range(seeds if _random(reg.scenario) else 1):
                    sc = dataclasses.replace(reg.scenario, concurrency=conc, seed=seed)
                    r = simulate(sc, client, interval=0.25)  # type: ignore[arg-type]
                    figs.append((r.wall_s / ideal(sc), r.polls_per_image))
                got.append(tuple(statistics.fmean(f[k] for f in figs) for k in range(2)))
            cells.append(" · ".join(f"{w:.2f}× {c:.1f}" for w, c in got))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def run(quick: bool, sim_only: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Both stands; returns the figures, the regimes and the Markdown tables."""
    regs = regimes()
    say(f"polling regimes: simulated, {len(regs)} regimes × 2 modes × 4 contenders ...")
    sim = simulated(regs, seeds=2 if quick else 5, say=say)
    real: list[Figure] = []
    n = 16 if quick else 64
    if not sim_only:
        chosen = [r for r in regs if r.name == "base"] if quick else regs
        say(f"polling regimes: local server, {len(chosen)} regime(s), {n} cells ...")
        real_regs = [dataclasses.replace(r, scenario=dataclasses.replace(r.scenario, jobs=n)) for r in chosen]
        real = on_server(real_regs, n, naive=not quick, say=say)
    say("polling regimes: auto at 2, 8 and 32 slots (simulated) ...")
    capacities = by_capacity(seeds=2 if quick else 5)
    return {"regimes": regs, "figures": sim + real, "simulated": table(regs, sim, "simulated"),
            "server": table(regs, real, "local server") if real else [], "cells": n, "capacities": capacities}


if __name__ == "__main__":
    result = run("--quick" in sys.argv, "--sim-only" in sys.argv)
    print("\n".join(["", "Simulated:", *result["simulated"], "", "Auto by capacity (simulated):", *result["capacities"],
                     "", "Local server:", *result["server"]]))
