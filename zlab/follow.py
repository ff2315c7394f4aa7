"""The one waiting loop: follow a job by id until it ends, asking the pure planner (`zlab.polling`) when.

Every wait has a deadline. A finished job's server timestamps teach the planner, and every waiter
sleeping on the shared `Signal` wakes when an estimate changes, so all re-plan at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from zlab import errors
from zlab.api import API
from zlab.polling import Pacer, Poll, Track, next_running_start
from zlab.protocol import Outcome


class Signal:
    """Wakes every sleeping waiter at once (e.g. when the run-time estimate changes, so all re-plan)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def sleep_until(self, at: float) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), delay)


async def follow(
    api: API,
    request_id: str,
    track: Track,
    pacer: Pacer,
    *,
    deadline: float,
    running_starts: Callable[[], Sequence[float]] = tuple,
    signal: Signal | None = None,
) -> Outcome:
    """Poll until the job ends; return its /result outcome. Raises WaitTimeout at `deadline` (monotonic).

    `running_starts` gives when the caller's other running jobs started: from them the planner
    learns the server's slots and predicts when a queued job will start.
    """
    signal = signal or Signal()
    fetch_result_now = False
    while True:
        now = time.monotonic()
        starts = running_starts()
        pacer.see_running(len(starts))
        poll = Poll(now, "result") if fetch_result_now else pacer.plan(track, now, starts)
        if poll.at > deadline:
            await signal.sleep_until(deadline)
            if time.monotonic() >= deadline:
                raise errors.WaitTimeout(
                    f"request {request_id} had not finished by its deadline", request_id=request_id
                )
            continue
        if poll.at > now:
            await signal.sleep_until(poll.at)
            if time.monotonic() < poll.at - 0.001:  # woken early by a new estimate: plan again
                continue
        now = time.monotonic()
        track.polls += 1
        if poll.endpoint == "status":
            status = await api.status(request_id)
            fetch_result_now = status.terminal
            _note(track, status.phase, status.queue_position, now, pacer, poll.start)
        else:
            outcome = await api.result(request_id)
            fetch_result_now = False
            if outcome.phase in ("succeeded", "failed", "cancelled"):
                _learn(pacer, track, outcome, now)
                if pacer.samples == 1:
                    signal.fire()
                return outcome
            _note(track, outcome.phase, None, now, pacer, poll.start)
        track.last_poll = now


def _note(
    track: Track, phase: str, position: int | None, now: float, pacer: Pacer, predicted_start: float | None
) -> None:
    if phase == "queued":
        track.phase, track.position, track.position_at = "queued", position, now
        track.early, track.queued_once = 0, True
    elif phase == "running":
        if track.phase != "running":
            track.started = next_running_start(track, now, pacer, predicted_start)
            track.phase, track.position = "running", None
        else:
            track.early += 1
    # "completed": the caller fetches /result next


def _learn(pacer: Pacer, track: Track, outcome: Outcome, now: float) -> None:
    """Record when the job held its slot; learn run time only from jobs that never queued (their
    server-side span is pure running time)."""
    span = None
    if outcome.created_at and outcome.finished_at:
        span = (outcome.finished_at - outcome.created_at).total_seconds()
    if outcome.phase == "succeeded" and not track.queued_once:
        pacer.learn(span if span is not None else now - (track.started or track.submitted))
    started = track.started if track.started is not None else track.submitted
    run_s = span if span is not None and not track.queued_once else pacer.run_s
    pacer.finished(started, min(now, started + run_s) if run_s is not None else now)
