"""A discrete-event stand-in for a hosted queue, to measure pollers on a simulated clock.

The server runs at most `capacity` jobs at once (it may change over time), the rest wait FIFO with
positions (0-based, 1-based or missing); other users' jobs arrive at random and share the slots; run
times may depend on image size, vary lognormally, or start cold. Clients (zlab's `Pacer`, a
fixed-interval poller, the serial loop) submit and poll through calls that take a round trip, and
the simulation records every call and when each finish was noticed. Nothing here sleeps: a whole
64-job sweep runs in milliseconds, so tests assert calls and lag exactly and benchmarks compare
pollers on the same draws.

>>> result = simulate(Scenario(jobs=16, capacity=4), "zlab")
>>> result.wall_s / ideal(Scenario(jobs=16, capacity=4)) < 1.15
True
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable
from typing import Any, Literal

from zlab.core.concurrency import Concurrency, InFlight, may_send
from zlab.core.polling import Endpoint, Pacer, Track
from zlab.core.status import Phase

Positions = Literal["0", "1", "missing"]
CLIENT_CLOCK = 1000.0  # the client's monotonic clock reads sim time + this
SERVER_EPOCH = 1.7e9  # the server's wall clock reads sim time + this: the client must learn the offset


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One regime: the caller's jobs, the server's slots and run times, other users, positions.

    A job of `mp` megapixels runs `base_s + per_mp_s * mp` seconds (× a lognormal factor of sigma
    `jitter`, mean kept; × `cold_factor` for the first `capacity` jobs to start). `capacity_steps`
    are (time, slots) changes. `other_load` keeps that fraction of capacity busy with other users'
    jobs (Poisson, 1-megapixel jobs, arriving from well before the sweep). `concurrency` None sends
    every job at once; a number keeps that many in flight; "auto" follows `zlab.core.concurrency`
    (what the client has seen running, plus a queued headroom).
    """

    jobs: int = 64
    capacity: int = 8
    base_s: float = 0.5
    per_mp_s: float = 0.0
    sizes: tuple[float, ...] = (1.0,)
    grouped: bool = False  # sizes in blocks (a sweep whose size axis comes first), else interleaved
    jitter: float = 0.0
    cold_factor: float = 1.0
    capacity_steps: tuple[tuple[float, int], ...] = ()
    other_load: float = 0.0
    positions: Positions = "0"
    concurrency: Concurrency | None = None
    rtt_s: float = 0.004
    submit_gap_s: float = 0.002
    seed: int = 0

    def size_of(self, i: int) -> float:
        """Megapixels of the caller's i-th job."""
        n = len(self.sizes)
        return self.sizes[i * n // self.jobs] if self.grouped else self.sizes[i % n]

    def run_s(self, mp: float) -> float:
        return self.base_s + self.per_mp_s * mp

    def capacity_at(self, t: float) -> int:
        slots = self.capacity
        for since, n in self.capacity_steps:
            if t >= since:
                slots = n
        return slots


@dataclasses.dataclass(eq=False)
class _Job:
    ours: bool
    run_s: float
    megapixels: float
    created: float = math.nan
    started: float | None = None
    finished: float | None = None
    on_start: Callable[[], None] | None = None  # the instant client's ears
    on_finish: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """One client's run: wall time (first submit to last finish noticed), calls, detection lags."""

    wall_s: float
    calls: dict[str, int]
    lags: tuple[float, ...]
    mean_run_s: float
    in_flight: tuple[tuple[float, int], ...] = ()  # (time, the caller's jobs between submit and noticed)

    @property
    def peak_in_flight(self) -> int:
        return max((n for _, n in self.in_flight), default=0)

    def in_flight_after(self, t: float) -> int:
        """The most jobs the caller had in flight from time `t` on."""
        return max((n for at, n in self.in_flight if at >= t), default=0)

    @property
    def polls_per_image(self) -> float:
        return (self.calls.get("status", 0) + self.calls.get("result", 0)) / max(len(self.lags), 1)

    @property
    def median_lag(self) -> float:
        return statistics.median(self.lags) if self.lags else math.nan

    @property
    def lag_fraction(self) -> float:
        """Median lag as a fraction of the mean run time."""
        return self.median_lag / self.mean_run_s


class _Sim:
    """The event loop, the server, and the caller's jobs."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.t = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.queue: collections.deque[_Job] = collections.deque()
        self.running: set[_Job] = set()
        self.started_count = 0
        self.calls: collections.Counter[str] = collections.Counter()
        rng = random.Random(sc.seed)
        self.ours = [self._draw(rng, sc.size_of(i), True) for i in range(sc.jobs)]
        if sc.other_load > 0:
            other = sc.run_s(1.0)
            rate = sc.other_load * sc.capacity / other
            t = -20 * other  # start well before the sweep, so the queue is in its steady state at 0
            horizon = 50 * other + 4 * sc.jobs * sc.run_s(max(sc.sizes)) / sc.capacity
            while t < horizon:
                t += rng.expovariate(rate)
                self.at(t, self._arrive, self._draw(rng, 1.0, False))
        for since, _ in sc.capacity_steps:
            self.at(since, self._fill)
        self.t = -math.inf

    def _draw(self, rng: random.Random, mp: float, ours: bool) -> _Job:
        sigma = self.sc.jitter
        factor = math.exp(sigma * rng.gauss(0, 1) - sigma * sigma / 2) if sigma else 1.0
        return _Job(ours, self.sc.run_s(mp) * factor, mp)

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), lambda: fn(*args)))

    def run(self) -> None:
        while self._heap:
            t, _, fn = heapq.heappop(self._heap)
            self.t = max(self.t, t)
            fn()

    # -- the server -----------------------------------------------------------------------------

    def _arrive(self, job: _Job) -> None:
        job.created = self.t
        self.queue.append(job)
        self._fill()

    def _fill(self) -> None:
        while self.queue and len(self.running) < self.sc.capacity_at(self.t):
            job = self.queue.popleft()
            job.started = self.t
            run = job.run_s * (self.sc.cold_factor if self.started_count < self.sc.capacity else 1.0)
            self.started_count += 1
            self.running.add(job)
            self.at(self.t + run, self._finish, job)
            if job.on_start is not None:
                job.on_start()

    def _finish(self, job: _Job) -> None:
        job.finished = self.t
        self.running.discard(job)
        self._fill()
        if job.on_finish is not None:
            job.on_finish()

    def read(self, job: _Job, endpoint: str) -> tuple[Phase, int | None]:
        """What /status or /result says about `job` now."""
        self.calls[endpoint] += 1
        if job.finished is not None:
            return ("succeeded" if endpoint == "result" else "completed"), None
        if job.started is not None:
            return "running", None
        if endpoint == "result" or self.sc.positions == "missing":
            return "queued", None
        return "queued", self.queue.index(job) + (1 if self.sc.positions == "1" else 0)

    # -- the caller -----------------------------------------------------------------------------

    def submit(self, job: _Job, then: Callable[[float, float], None]) -> None:
        """Send a submit now; the job arrives half a round trip later; `then(sent, answered)`."""
        sent = self.t
        self.calls["submit"] += 1
        self.at(sent + self.sc.rtt_s / 2, self._arrive, job)
        self.at(sent + self.sc.rtt_s, then, sent, sent + self.sc.rtt_s)

    def call(self, job: _Job, endpoint: str, then: Callable[[float, float, Phase, int | None], None]) -> None:
        """A /status or /result call now: read at the server half a round trip later, answered after one."""
        sent = self.t

        def reach() -> None:
            phase, position = self.read(job, endpoint)
            self.at(sent + self.sc.rtt_s, then, sent, sent + self.sc.rtt_s, phase, position)

        self.at(sent + self.sc.rtt_s / 2, reach)


Client = Literal["zlab", "fixed", "serial", "instant"]
Start = Callable[[int, float, float], None]  # (job index, submit sent, submit answered)
Done = Callable[[int], None]
Saw = Callable[[int, str], None]  # (job index, what the client now believes: "queued", "running", "finished")


def simulate(
    sc: Scenario, client: Client = "zlab", interval: float = 0.25, pacer: Pacer | None = None, sent_known: bool = True
) -> Result:
    """Run `sc` with one client: zlab's planner (`pacer`, default a fresh one), a fixed-`interval`
    /status poller, the serial loop (one job at a time, /status every `interval`), or an instant
    client (it knows every finish at once, over a network that takes no time: the ideal).
    `sent_known=False`: zlab's tracks lack the submit's send time (a caller that does not set it)."""
    if client == "instant":
        sc = dataclasses.replace(sc, rtt_s=0.0, submit_gap_s=0.0)
    sim = _Sim(sc)
    noticed: dict[int, float] = {}
    policy: Concurrency = 1 if client == "serial" else sc.concurrency or sc.jobs
    pending = iter(range(sc.jobs))
    pacer = pacer or Pacer()
    tracks: dict[int, Track] = {}  # zlab's, by job index
    held = 0
    timeline: list[tuple[float, int]] = []
    phases: dict[int, str] = {}  # what the client last saw of each job in flight ("running", "finished", …)

    def pump() -> None:
        """Send as many jobs as the concurrency allows now (spaced by the submit gap)."""
        nonlocal held
        k = 0
        while may_send(policy, _in_flight(held, phases, pacer if client == "zlab" else None, sim.t, tracks)):
            i = next(pending, None)
            if i is None:
                return
            held += 1
            timeline.append((max(sim.t, 0.0), held))
            sim.at(sim.t + k * sc.submit_gap_s, send, i)
            k += 1

    def send(i: int) -> None:
        sim.submit(sim.ours[i], lambda sent, answered: start(i, sent, answered))

    def saw(i: int, phase: str) -> None:
        phases[i] = phase
        pump()

    def done(i: int) -> None:
        nonlocal held
        noticed[i] = sim.t
        held -= 1
        timeline.append((sim.t, held))
        phases.pop(i, None)
        pump()

    if client == "instant":
        start = _instant(sim, done, saw)
    elif client == "zlab":
        start = _zlab(sim, done, saw, pacer, tracks, sent_known)
    else:
        start = _fixed(sim, done, saw, interval, first=0.0 if client == "serial" else interval)
    sim.at(0.0, pump)
    sim.run()
    if len(noticed) != sc.jobs:
        raise RuntimeError(f"{client}: only {len(noticed)} of {sc.jobs} jobs were noticed finished")
    lags = tuple(noticed[i] - (sim.ours[i].finished or 0.0) for i in sorted(noticed))
    mean_run = statistics.fmean(sc.run_s(sc.size_of(i)) for i in range(sc.jobs))
    return Result(max(noticed.values(), default=0.0), dict(sim.calls), lags, mean_run, tuple(timeline))


def _in_flight(held: int, phases: dict[int, str], pacer: Pacer | None, t: float, tracks: dict[int, Track]) -> InFlight:
    """What the client believes it has at the service (zlab's: running until a job's expected end)."""
    seen = collections.Counter(phases.values())
    if pacer is None:
        return InFlight(held, seen["running"], seen["finished"])
    overdue = sum(pacer.overdue(track, t + CLIENT_CLOCK) for track in tracks.values())
    return InFlight(held, seen["running"] - overdue, seen["finished"], overdue)


def _instant(sim: _Sim, done: Done, saw: Saw) -> Start:
    def start(i: int, sent: float, answered: float) -> None:
        job = sim.ours[i]
        job.on_start, job.on_finish = lambda: saw(i, "running"), lambda: done(i)
        saw(i, "running" if job.started is not None else "queued")

    return start


def _fixed(sim: _Sim, done: Done, saw: Saw, interval: float, first: float) -> Start:
    """/status every `interval` until completed, then /result."""

    def start(i: int, sent: float, answered: float) -> None:
        sim.at(sim.t + first, ask, i)

    def ask(i: int) -> None:
        sim.call(sim.ours[i], "status", lambda s, r, phase, pos: heard(i, phase))

    def heard(i: int, phase: Phase) -> None:
        saw(i, "finished" if phase == "completed" else phase)
        if phase == "completed":
            sim.call(sim.ours[i], "result", lambda *_: done(i))
        else:
            sim.at(sim.t + interval, ask, i)

    return start


def _zlab(sim: _Sim, done: Done, saw: Saw, planner: Pacer, tracks: dict[int, Track], sent_known: bool) -> Start:
    """zlab's waiters as `follow` runs them: plan, sleep (re-planning when woken), call, report."""
    versions: collections.Counter[int] = collections.Counter()
    busy: set[int] = set()

    def start(i: int, sent: float, answered: float) -> None:
        tracks[i] = Track(
            answered + CLIENT_CLOCK,
            sent=sent + CLIENT_CLOCK if sent_known else None,
            megapixels=sim.ours[i].megapixels,
        )
        planner.register(tracks[i])
        replan(i)

    def replan(i: int) -> None:
        if i in busy or i not in tracks:
            return
        versions[i] += 1
        poll = planner.plan(tracks[i], sim.t + CLIENT_CLOCK)
        sim.at(max(sim.t, poll.at - CLIENT_CLOCK), fire, i, versions[i], poll.endpoint)

    def fire(i: int, version: int, endpoint: Endpoint) -> None:
        if versions[i] != version or i in busy:
            return  # re-planned since
        busy.add(i)
        sim.call(sim.ours[i], endpoint, lambda s, r, phase, pos: heard(i, endpoint, s, r, phase, pos))

    def heard(i: int, endpoint: Endpoint, sent: float, got: float, phase: Phase, pos: int | None) -> None:
        busy.discard(i)
        job = sim.ours[i]
        final = endpoint == "result" and phase == "succeeded"
        wake = planner.saw(
            tracks[i],
            sent + CLIENT_CLOCK,
            got + CLIENT_CLOCK,
            phase,
            pos,
            endpoint=endpoint,
            created=job.created + SERVER_EPOCH if final else None,
            finished=(job.finished or 0.0) + SERVER_EPOCH if final else None,
        )
        if final:
            del tracks[i]
            done(i)
        else:
            saw(i, tracks[i].phase)
        for j in list(tracks) if wake or final else [i]:
            replan(j)

    return start


def ideal(sc: Scenario) -> float:
    """The makespan of the same jobs, same draws, with a client that notices every start and finish at
    once (and so, under "auto", keeps exactly the intended headroom queued)."""
    return simulate(sc, "instant").wall_s
