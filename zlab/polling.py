"""When to ask about a job next, and which endpoint to ask: a pure planner that learns as it goes.

Peer clients poll at a fixed interval, so they either waste calls (0.1 s) or notice results late
(2 s). zlab predicts instead. It learns how long a job runs from the server's own timestamps
(`finished_at - created_at` of jobs that never queued) and how many jobs the server runs at once
(the most of the caller's jobs seen running together), then:

- a running job is asked once, just after it should have finished, on /result (which answers with
  the outputs, so a job that finishes on time costs one call);
- a queued job at position p (p jobs ahead) starts at the (p+1)-th slot to free up; the planner
  simulates the slots from the moment the position was read (the caller's running jobs free theirs
  when predicted, the rest spread over one run time) and asks /result once, at the predicted finish;
- an answer that shows a wrong guess corrects it: still queued → /status for a fresh position;
  running but unfinished → short follow-ups that grow, so a late job is never far behind;
- before anything is learned it probes at growing intervals; the first finished job re-plans all.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import math
from collections.abc import Sequence
from typing import Literal

Endpoint = Literal["status", "result"]


@dataclasses.dataclass(slots=True)
class Track:
    """What the caller knows of one job (mutable, owned by one waiter)."""

    submitted: float  # monotonic time the submit was answered
    phase: Literal["unknown", "queued", "running"] = "unknown"
    position: int | None = None  # jobs ahead of it in the queue, when last read
    position_at: float | None = None  # when that position was read
    started: float | None = None  # estimated monotonic time it began running
    last_poll: float | None = None
    early: int = 0  # answers in a row that came before the job was done
    polls: int = 0
    queued_once: bool = False  # its server-side span then includes queueing: not a run-time sample


@dataclasses.dataclass(frozen=True, slots=True)
class Poll:
    at: float
    endpoint: Endpoint
    start: float | None = None  # for a queued job: when it is expected to start running


@dataclasses.dataclass(slots=True)
class Pacer:
    """Learned run time (EWMA) and server slots, plus the knobs that bound every wait."""

    run_s: float | None = None
    samples: int = 0
    slots: int = 1  # jobs the server runs at once, as far as the caller has seen
    alpha: float = 0.3
    first_probe_s: float = 0.25
    probe_growth: float = 1.3  # before any run time is known: each probe waits 30% longer than the last
    max_gap_s: float = 10.0
    min_gap_s: float = 0.02
    # (start, finish) of the caller's finished jobs: when slots freed, which a stale queue position needs
    history: collections.deque[tuple[float, float]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=512)
    )

    def finished(self, started: float, finished: float) -> None:
        """Record that one of the caller's jobs ran from `started` to `finished` (monotonic times)."""
        self.history.append((started, finished))

    def last_free(self, after: float, until: float) -> float | None:
        """The latest moment one of the caller's jobs freed a slot within (after, until], if any."""
        return max((f for _, f in self.history if after < f <= until), default=None)

    def learn(self, seconds: float) -> None:
        """Fold in one observed run time (seconds a job spent running)."""
        if seconds <= 0:
            return
        self.run_s = seconds if self.run_s is None else (1 - self.alpha) * self.run_s + self.alpha * seconds
        self.samples += 1

    def see_running(self, count: int) -> None:
        """The caller has `count` jobs running at once: the server has at least that many slots."""
        self.slots = max(self.slots, count)

    def follow_up_s(self, track: Track) -> float:
        """After an early answer: a short gap that grows, scaled to the run time."""
        scale = self.run_s if self.run_s is not None else self.first_probe_s * 4
        return min(self.max_gap_s, max(self.min_gap_s, 0.04 * scale * 2**track.early))

    def plan(self, track: Track, now: float, running_starts: Sequence[float] = ()) -> Poll:
        """The next poll for `track`. `running_starts`: when the caller's running jobs started."""
        poll = self._plan(track, now, running_starts)
        return dataclasses.replace(poll, at=min(max(poll.at, now), now + self.max_gap_s))

    def _plan(self, track: Track, now: float, running_starts: Sequence[float]) -> Poll:
        if track.phase == "queued":
            if track.position is None:  # /result said queued but not where: ask /status now
                return Poll(now + self.min_gap_s, "status")
            if self.run_s is None:
                # It cannot start before one of the caller's running jobs ends, and the first job to end
                # wakes every waiter; only a caller with nothing running must probe.
                return Poll(now + (self.max_gap_s if running_starts else self._probe_s(track)), "status")
            start = self.start_estimate(track.position, track.position_at or now, running_starts)
            return Poll(self._due(start, track, now), "result", start)
        if self.run_s is None:  # nothing learned yet: probe at growing intervals from the submit
            return Poll(max(now, track.submitted + self._probe_s(track)), "result")
        started = track.started if track.started is not None else track.submitted
        return Poll(self._due(started, track, now), "result")

    def _probe_s(self, track: Track) -> float:
        """Probes 0.25, 0.33, 0.42, … s after the submit: late by at most 30% of the time waited so far."""
        return self.first_probe_s * self.probe_growth ** min(track.polls, 30)

    def _due(self, started: float, track: Track, now: float) -> float:
        assert self.run_s is not None
        due = started + self.run_s * 1.01 + 0.005  # just after: an answer a hair early costs a second call
        return max(due, now + self.follow_up_s(track)) if track.early or due <= now else due

    def start_estimate(self, position: int, read_at: float, running_starts: Sequence[float] = ()) -> float:
        """When the job `position` places back (read at `read_at`) should start: simulate the slots.

        At `read_at` every slot is busy. The caller knows when some of them free: its jobs running
        then (finished since, or still running and due at start + run time); the other slots are taken
        to free evenly over one run time. Each job ahead takes the next slot to free, for one run.
        """
        run_s = self.run_s if self.run_s is not None else self.first_probe_s * 4
        known = [f for s, f in self.history if s <= read_at < f]
        for start in running_starts:
            if start <= read_at:  # overdue (not yet seen finished): its slot has been taken over since
                due = start + run_s
                known.append(due + run_s * max(0, math.ceil((read_at - due) / run_s)))
        unknown = max(0, self.slots - len(known))
        frees = known + [read_at + run_s * (i + 1) / unknown for i in range(unknown)]
        heapq.heapify(frees)
        for _ in range(position):
            heapq.heappush(frees, heapq.heappop(frees) + run_s)
        return frees[0]


def next_running_start(track: Track, now: float, pacer: Pacer, predicted: float | None = None) -> float:
    """When a job first seen running most likely started.

    A job that never queued started at its submit. A queued one started when a slot freed since the
    last answer: the last such moment the caller saw (one of its jobs finishing), else the
    prediction if it fits, else the middle of the gap.
    """
    if track.phase != "queued":
        return track.submitted
    earliest = track.last_poll if track.last_poll is not None else track.submitted
    seen = pacer.last_free(earliest, now)
    if seen is not None:
        return seen
    if predicted is not None and earliest <= predicted <= now:
        return predicted
    return (earliest + now) / 2
