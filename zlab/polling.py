"""When to ask about a job next, and which endpoint to ask: a pure planner that learns as it goes.

Peer clients poll at a fixed interval, so they either waste calls (0.1 s) or notice results late
(2 s). zlab predicts instead. It learns how long a job runs from the server's own timestamps
(`finished_at - created_at` of jobs that never queued), then:

- a job that is running is asked once, just after it should have finished (on /result, which
  answers with the outputs, so a finished job costs one call);
- a queued job is asked (on /status, which says the queue position) when the job ahead of it is
  expected to finish, taken from the predicted finishes of the caller's own running jobs;
- an early answer is followed by short, growing follow-ups, so a late job is never far behind;
- before anything is learned it probes at growing intervals, and one finished job re-plans all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

Endpoint = Literal["status", "result"]


@dataclasses.dataclass(slots=True)
class Track:
    """What the caller knows of one job (mutable, owned by one waiter)."""

    submitted: float  # monotonic time the submit was answered
    phase: Literal["unknown", "queued", "running"] = "unknown"
    position: int | None = None
    started: float | None = None  # estimated monotonic time it began running
    last_poll: float | None = None
    early: int = 0  # answers in a row that came before the job was done
    queued_once: bool = False  # its server-side span then includes queueing: not a run-time sample
    polls: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Poll:
    at: float
    endpoint: Endpoint


@dataclasses.dataclass(slots=True)
class Pacer:
    """Learned run time (EWMA) plus the knobs that bound every wait."""

    run_s: float | None = None
    samples: int = 0
    alpha: float = 0.3
    first_probe_s: float = 0.25
    max_gap_s: float = 10.0
    min_gap_s: float = 0.02

    def learn(self, seconds: float) -> None:
        """Fold in one observed run time (seconds a job spent running)."""
        if seconds <= 0:
            return
        self.run_s = seconds if self.run_s is None else (1 - self.alpha) * self.run_s + self.alpha * seconds
        self.samples += 1

    def follow_up_s(self, track: Track) -> float:
        """After an early answer: a short gap that grows, scaled to the run time."""
        scale = self.run_s if self.run_s is not None else self.first_probe_s * 4
        return min(self.max_gap_s, max(self.min_gap_s, 0.04 * scale * 2**track.early))

    def plan(self, track: Track, now: float, running_finishes: Sequence[float] = ()) -> Poll:
        """The next poll for `track`. `running_finishes`: predicted finish times of the caller's running jobs."""
        if track.phase == "queued":
            return Poll(max(now + self.min_gap_s, self._start_estimate(track, now, running_finishes)), "status")
        if self.run_s is None:  # nothing learned yet: probe at growing intervals from the submit
            gap = self.first_probe_s * 2 ** min(track.polls, 6)
            return Poll(min(max(now, track.submitted + gap), now + self.max_gap_s), "result")
        started = track.started if track.started is not None else track.submitted
        due = started + self.run_s * 1.01 + 0.005  # just after: an answer a hair early costs a second call
        if track.early or due <= now:
            due = max(due, now + self.follow_up_s(track))
        return Poll(min(due, now + self.max_gap_s), "result")

    def _start_estimate(self, track: Track, now: float, running_finishes: Sequence[float]) -> float:
        position = track.position or 0
        run_s = self.run_s if self.run_s is not None else self.first_probe_s * 4
        finishes = sorted(f for f in running_finishes if f > now) or [now + run_s]
        waves, slot = divmod(position, len(finishes))
        return finishes[slot] + waves * run_s


def next_running_start(track: Track, now: float) -> float:
    """When a job first seen running most likely started: mid-gap after a queued answer, else at submit."""
    if track.phase == "queued":
        earliest = track.last_poll if track.last_poll is not None else track.submitted
        return (earliest + now) / 2
    return track.submitted
