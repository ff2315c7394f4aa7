"""The local server's job queue: at most `capacity` jobs run at once, the rest wait in FIFO order.

A job moves `in_queue → in_progress → succeeded | failed`, or `in_queue → cancelled`. How long it
runs comes from a `Latency` model (fixed, or base + per megapixel). Completion is an event-loop
timer at `start + latency`, so a job finishes within about a millisecond of when it should: client
benchmarks measure how long a poller takes to notice, and that needs an exact reference.

A `Regime` (zlab.server.regime) adds what a shared queue does: other users' hidden jobs, run-time
jitter, a capacity that changes over time, cold starts. `start()` begins its timers on the loop.

The scheduler reports to `Stats` (zlab.server.stats) as jobs are accepted, start and finish. All
`Scheduler` methods run on the server's event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import math
import random
import secrets
import time
from typing import Literal

from zlab.core.request import Request
from zlab.errors import ConfigError
from zlab.server import regime as regimes
from zlab.server.backend import Rendered, Renderer
from zlab.server.faults import BadOutput
from zlab.server.regime import Regime
from zlab.server.stats import JobState, JobTimes, Stats, Submission  # Stats and JobTimes are also imported from here

WireStatus = Literal["in_queue", "in_progress", "completed", "cancelled"]
CancelOutcome = Literal["cancelled", "not_cancellable"]
TERMINAL: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})


@dataclasses.dataclass(frozen=True)
class Latency:
    """How long a job runs: `base` seconds plus `per_mp` seconds per megapixel.

    >>> Latency.parse("0.5+0.2/mp").seconds(2.0)
    0.9
    """

    base: float = 0.0
    per_mp: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.base < math.inf and 0 <= self.per_mp < math.inf):
            raise ConfigError(f"latency must be finite and >= 0 (got base={self.base}, per_mp={self.per_mp})")

    def seconds(self, megapixels: float) -> float:
        """How long a job of `megapixels` runs."""
        return self.base + self.per_mp * megapixels

    @classmethod
    def parse(cls, value: str | float | Latency) -> Latency:
        """Accept a Latency, seconds as a number, or text: "0.5", "0.5+0.2/mp", "0.2/mp"."""
        if isinstance(value, Latency):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(float(value))
        text = value.replace(" ", "").lower() if isinstance(value, str) else ""
        base, plus, per = text.partition("+")
        if not plus and base.endswith("/mp"):
            base, per = "", base
        problem = ConfigError(f"latency {value!r} not understood; write seconds like '0.5' or '0.5+0.2/mp'")
        if not text or (plus and not per) or (per and not per.endswith("/mp")):
            raise problem
        try:
            return cls(float(base) if base else 0.0, float(per.removesuffix("/mp")) if per else 0.0)
        except (ValueError, ConfigError):
            raise problem from None

    def __str__(self) -> str:
        if not self.per_mp:
            return f"{self.base:g}"
        return f"{self.base:g}+{self.per_mp:g}/mp" if self.base else f"{self.per_mp:g}/mp"


@dataclasses.dataclass(eq=False)
class Job:
    """One job's live record; only the `Scheduler` changes it."""

    request_id: str
    request: Request  # as rendered: a seed of -1 is already resolved
    token_hash: str | None
    latency: float
    will_fail: bool
    bad_output: BadOutput | None
    ticket: int
    created_at: float
    created_mono: float
    state: JobState = "in_queue"
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None  # a Renderer's render, while it runs
    output: Rendered | None = None  # what a Renderer made (the synthetic backend draws on fetch instead)
    error: str | None = None  # why a Renderer's render failed
    hidden: bool = False  # another user's job: takes a slot and a queue place, never visible by id
    polls: int = 0  # status/result/cancel calls that reached this job (for eventual-consistency faults)

    @property
    def wire_status(self) -> WireStatus:
        """The /status vocabulary: a failed job shows `completed`, as on RunComfy."""
        if self.state in ("succeeded", "failed"):
            return "completed"
        return self.state  # type: ignore[return-value]

    def times(self) -> JobTimes:
        """A frozen snapshot for `Stats`."""
        return JobTimes(
            self.request_id,
            self.state,
            self.latency,
            self.created_at,
            self.started_at,
            self.finished_at,
            self.finished_mono,
        )


_OTHER_REQUEST = Request("another user's job", loras=(), width=1024, height=1024, seed=0)


def new_request_id() -> str:
    """An unguessable id of `[A-Za-z0-9_-]` (144 random bits)."""
    return secrets.token_urlsafe(18)


class Scheduler:
    """Runs jobs on the current event loop: `capacity` at once, FIFO queue, latency from `latency`."""

    def __init__(
        self,
        stats: Stats,
        capacity: int = 4,
        latency: Latency | None = None,
        expire_after: float | None = None,
        renderer: Renderer | None = None,
        regime: Regime | None = None,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"capacity must be at least 1 (got {capacity})")
        self.stats, self.capacity, self.expire_after = stats, capacity, expire_after
        self.latency = latency or Latency()
        self.renderer = renderer  # None: the synthetic backend (latency model, image drawn on fetch)
        self.regime = regime or Regime()
        self._start_capacity = capacity
        self._jitter_rng = random.Random(self.regime.seed)  # own streams: turning other users on
        self._arrival_rng = random.Random(self.regime.seed + 1)  # must not shift the jitter draws
        self._started_jobs = 0
        self._timers: list[asyncio.TimerHandle] = []  # capacity steps and bursts
        self._arrival: asyncio.TimerHandle | None = None
        self._others: set[Job] = set()
        self._jobs: dict[str, Job] = {}  # insertion order is creation order: pruning pops from the front
        self._queue: list[int] = []  # tickets of queued jobs, ascending: position is a bisect away
        self._by_ticket: dict[int, Job] = {}
        self._next_ticket = 0
        self._running = 0

    def submit(
        self,
        request: Request,
        token_hash: str | None,
        will_fail: bool = False,
        bad_output: BadOutput | None = None,
        request_id: str | None = None,
        render_as: Request | None = None,
    ) -> Job:
        """Accept a job: it starts at once if there is room, else waits at the back of the queue.

        `request` is recorded as sent; `render_as` (e.g. a snapped size) is what runs and renders.
        """
        loop = asyncio.get_running_loop()
        self._prune()
        rendered = render_as or request
        job = Job(
            request_id=request_id or new_request_id(),
            request=rendered.replace(seed=secrets.randbelow(2**31)) if rendered.seed == -1 else rendered,
            token_hash=token_hash,
            latency=self._run_seconds(self.latency.seconds(rendered.megapixels)),
            will_fail=will_fail,
            bad_output=bad_output,
            ticket=self._next_ticket,
            created_at=time.time(),
            created_mono=loop.time(),
        )
        self._next_ticket += 1
        self._jobs[job.request_id] = job
        self._by_ticket[job.ticket] = job
        self._queue.append(job.ticket)
        self.stats.record_submission(Submission(job.request_id, request.to_input(), token_hash, job.created_at))
        self.stats.record_job(job.times())
        self._start_ready()
        return job

    def submit_other(self) -> Job:
        """Another user's job: it queues and runs like any other, but no id or record reveals it."""
        loop = asyncio.get_running_loop()
        nominal = self.regime.other_seconds or max(self.latency.seconds(1.0), regimes.MIN_OTHER_SECONDS)
        job = Job(
            request_id="",
            request=_OTHER_REQUEST,
            token_hash="another user",
            latency=self._run_seconds(nominal),
            will_fail=False,
            bad_output=None,
            ticket=self._next_ticket,
            created_at=time.time(),
            created_mono=loop.time(),
            hidden=True,
        )
        self._next_ticket += 1
        self._by_ticket[job.ticket] = job
        self._queue.append(job.ticket)
        self._others.add(job)
        self.stats.count_other_job()
        self._start_ready()
        return job

    def start(self) -> None:
        """Begin the regime's timers (capacity steps, bursts) on the running loop; then `set_other_load`."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.stats.started_mono = time.monotonic()
        for since, capacity in self.regime.capacity_steps:
            self._timers.append(loop.call_at(t0 + since, self.set_capacity, capacity))
        if self.regime.burst_every > 0:
            self._timers.append(loop.call_at(t0 + self.regime.burst_every, self._burst))

    def set_other_load(self, load: float) -> None:
        """Change other users' load now (a fraction of capacity; 0 stops new arrivals)."""
        self.regime = self.regime.replace(other_load=load)
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None
        self._schedule_arrival()

    def _schedule_arrival(self) -> None:
        nominal = self.regime.other_seconds or self.latency.seconds(1.0)
        gap = regimes.arrival_gap(self.regime.other_load, self.capacity, nominal, self._arrival_rng.random())
        if gap is not None:
            self._arrival = asyncio.get_running_loop().call_later(gap, self._arrive)

    def _arrive(self) -> None:
        self._arrival = None
        self.submit_other()
        self._schedule_arrival()

    def _burst(self) -> None:
        for _ in range(self.regime.burst_size):
            self.submit_other()
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.regime.burst_every, self._burst))
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > loop.time()]

    def set_capacity(self, capacity: int) -> None:
        """Run at most `capacity` jobs from now on (a capacity step, or the server's owner changing it)."""
        if capacity < 1:
            raise ConfigError(f"capacity must be at least 1 (got {capacity})")
        self.capacity = capacity
        self._start_ready()  # a smaller capacity lets running jobs finish; a larger one starts queued ones now

    def _run_seconds(self, nominal: float) -> float:
        if not self.regime.jitter:
            return nominal
        return regimes.jittered(nominal, self.regime.jitter, self._jitter_rng.gauss())

    def get(self, request_id: str) -> Job | None:
        """The job, or None when the id is unknown or expired."""
        job = self._jobs.get(request_id)
        if job is None or self._expired(job, asyncio.get_running_loop().time()):
            return None
        return job

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs are ahead of `job` (0: it starts next), or None when it is not queued."""
        if job.state != "in_queue":
            return None
        return bisect.bisect_left(self._queue, job.ticket)

    def cancel(self, job: Job) -> CancelOutcome:
        """Cancel a queued job; a running or finished one is left alone. Cancelling twice is harmless."""
        if job.state == "cancelled":
            return "cancelled"
        if job.state != "in_queue":
            return "not_cancellable"
        self._dequeue(job)
        self._finish(job, "cancelled")
        return "cancelled"

    @property
    def running(self) -> int:
        """Jobs in progress now."""
        return self._running

    @property
    def queued(self) -> int:
        """Jobs waiting now."""
        return len(self._queue)

    def close(self) -> None:
        """Stop every pending timer (the server is shutting down)."""
        for timer in [*self._timers, *([self._arrival] if self._arrival else [])]:
            timer.cancel()
        for job in [*self._jobs.values(), *self._others]:
            if job.timer is not None:
                job.timer.cancel()
            if job.task is not None:
                job.task.cancel()

    def _expired(self, job: Job, now: float) -> bool:
        return self.expire_after is not None and now - job.created_mono > self.expire_after

    def _prune(self) -> None:
        """Forget finished jobs past their expiry, so a long benchmark does not grow without bound."""
        if self.expire_after is None:
            return
        now = asyncio.get_running_loop().time()
        while self._jobs:
            oldest = next(iter(self._jobs.values()))
            if oldest.state not in TERMINAL or not self._expired(oldest, now):
                break
            del self._jobs[oldest.request_id]

    def _dequeue(self, job: Job) -> None:
        index = bisect.bisect_left(self._queue, job.ticket)
        del self._queue[index]
        del self._by_ticket[job.ticket]

    def _start_ready(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.capacity and self._queue:
            job = self._by_ticket.pop(self._queue.pop(0))
            job.state, job.started_at = "in_progress", time.time()
            self._running += 1
            if regimes.is_cold(self.regime, self._started_jobs, self._start_capacity):
                job.latency *= self.regime.cold_factor
            self._started_jobs += 1
            if self.renderer is not None and not job.hidden:
                job.task = loop.create_task(self._render(job, self.renderer))
            else:
                # A timer on the loop, not a sleeping task: it fires at start + latency to the millisecond.
                job.timer = loop.call_at(loop.time() + job.latency, self._complete, job)
            if not job.hidden:
                self.stats.record_job(job.times())

    async def _render(self, job: Job, renderer: Renderer) -> None:
        """Run a real render; the job ends when it does (a failure fails the job with its message)."""
        started = time.monotonic()
        try:
            job.output = await renderer.render(job.request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any renderer failure is this job's failure, never the server's
            job.will_fail, job.error = True, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        job.latency = time.monotonic() - started
        job.task = None
        self._complete(job)

    def _complete(self, job: Job) -> None:
        self._running -= 1
        job.timer = None
        self._finish(job, "failed" if job.will_fail else "succeeded")
        if job.will_fail:
            self.stats.count_fault("job_failure")
        self._start_ready()

    def _finish(self, job: Job, state: JobState) -> None:
        job.state, job.finished_at, job.finished_mono = state, time.time(), time.monotonic()
        if job.hidden:
            self._others.discard(job)
        else:
            self.stats.record_job(job.times())
