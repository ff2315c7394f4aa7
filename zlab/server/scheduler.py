"""The local server's job queue: at most `capacity` jobs run at once, the rest wait in FIFO order.

A job moves `in_queue → in_progress → succeeded | failed`, or `in_queue → cancelled`. How long it
runs comes from a `Latency` model (fixed, or base + per megapixel). Completion is an event-loop
timer at `start + latency`, so a job finishes within about a millisecond of when it should: client
benchmarks measure how long a poller takes to notice, and that needs an exact reference.

`Stats` records, thread-safely, what happened: calls per endpoint, injected faults, every accepted
submit, and each job's times, so a test can assert "each cell accepted exactly once" and a benchmark
can measure detection lag. All `Scheduler` methods run on the server's event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import math
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

from zlab.errors import ConfigError
from zlab.request import MODEL_ID, Request, request_key
from zlab.server.backend import Rendered, Renderer
from zlab.server.faults import BadOutput

JobState = Literal["in_queue", "in_progress", "succeeded", "failed", "cancelled"]
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


@dataclasses.dataclass(frozen=True)
class Submission:
    """One accepted submit: its id, the input as sent (every field explicit) and who sent it."""

    request_id: str
    input: Mapping[str, Any]
    token_hash: str | None
    at: float  # time.time() when it was accepted

    @property
    def key(self) -> str:
        """The request key (as `zlab.Request.key`) of the input, for "accepted exactly once" checks."""
        return request_key(MODEL_ID, self.input)


@dataclasses.dataclass(frozen=True)
class JobTimes:
    """A job's state and times: wall clock (`time.time()`) and, for finishing, `time.monotonic()` too."""

    request_id: str
    state: JobState
    latency: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None  # compare with a client's time.monotonic() on the same machine


class Stats:
    """What the server saw, safe to read from any thread; every accessor returns a copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (jobs keep running)."""
        with self._lock:
            self._calls: collections.Counter[str] = collections.Counter()
            self._faults: collections.Counter[str] = collections.Counter()
            self._submissions: list[Submission] = []
            self._jobs: dict[str, JobTimes] = {}

    def count_call(self, endpoint: str) -> None:
        """Count one call to `endpoint`."""
        with self._lock:
            self._calls[endpoint] += 1

    def count_fault(self, kind: str) -> None:
        """Count one injected fault of `kind`."""
        with self._lock:
            self._faults[kind] += 1

    def record_submission(self, submission: Submission) -> None:
        """Remember an accepted submit."""
        with self._lock:
            self._submissions.append(submission)

    def record_job(self, times: JobTimes) -> None:
        """Remember a job's latest state and times."""
        with self._lock:
            self._jobs[times.request_id] = times

    @property
    def calls(self) -> dict[str, int]:
        """Calls per endpoint: submit, status, result, cancel, file (faulted calls included)."""
        with self._lock:
            return dict(self._calls)

    @property
    def faults(self) -> dict[str, int]:
        """Injected faults by kind (`rate_limited`, `drop_submit_after`, `job_failure`, `file_error`, ...)."""
        with self._lock:
            return dict(self._faults)

    @property
    def submissions(self) -> list[Submission]:
        """Every accepted submit in order, including those whose answer was then dropped."""
        with self._lock:
            return list(self._submissions)

    def accepted(self) -> collections.Counter[str]:
        """How many times each request key was accepted: a sweep that never duplicates shows only 1s."""
        return collections.Counter(s.key for s in self.submissions)

    def job(self, request_id: str) -> JobTimes | None:
        """The latest record of one job, or None if this server never accepted it."""
        with self._lock:
            return self._jobs.get(request_id)

    @property
    def jobs(self) -> dict[str, JobTimes]:
        """Every job's latest record, by request id."""
        with self._lock:
            return dict(self._jobs)


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
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"capacity must be at least 1 (got {capacity})")
        self.stats, self.capacity, self.expire_after = stats, capacity, expire_after
        self.latency = latency or Latency()
        self.renderer = renderer  # None: the synthetic backend (latency model, image drawn on fetch)
        self._jobs: dict[str, Job] = {}  # insertion order is creation order: pruning pops from the front
        self._queue: list[int] = []  # tickets of queued jobs, ascending: position is a bisect away
        self._by_ticket: dict[int, Job] = {}
        self._next_ticket = 0
        self._running = 0

    def submit(
        self, request: Request, token_hash: str | None, will_fail: bool = False, bad_output: BadOutput | None = None
    ) -> Job:
        """Accept a job: it starts at once if there is room, else waits at the back of the queue."""
        loop = asyncio.get_running_loop()
        self._prune()
        job = Job(
            request_id=new_request_id(),
            request=request.replace(seed=secrets.randbelow(2**31)) if request.seed == -1 else request,
            token_hash=token_hash,
            latency=self.latency.seconds(request.megapixels),
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
        for job in self._jobs.values():
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
            if self.renderer is not None:
                job.task = loop.create_task(self._render(job, self.renderer))
            else:
                # A timer on the loop, not a sleeping task: it fires at start + latency to the millisecond.
                job.timer = loop.call_at(loop.time() + job.latency, self._complete, job)
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
        self.stats.record_job(job.times())
