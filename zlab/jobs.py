"""Job handles, generations, and the one waiting loop that every caller uses (each wait has a deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from zlab import errors
from zlab.api import API
from zlab.polling import Pacer, Poll, Track, next_running_start
from zlab.protocol import Outcome, Status
from zlab.request import Request

if TYPE_CHECKING:
    from zlab.client import AsyncClient


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


@dataclasses.dataclass(frozen=True, eq=False)
class Generation:
    """One finished image: the picture, what asked for it, and how long it took."""

    request: Request | dict[str, Any]
    request_id: str
    url: str
    data: bytes = dataclasses.field(repr=False)
    image: Image.Image = dataclasses.field(repr=False)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    queue_s: float | None = None
    run_s: float | None = None

    def save(self, path: str | Path) -> Path:
        """Write the image bytes exactly as downloaded (no re-encoding)."""
        from zlab.download import write_atomic

        target = Path(path)
        write_atomic(target, self.data)
        return target

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        return f"<Generation {self.request_id} {self.image.width}x{self.image.height}>"


@dataclasses.dataclass(frozen=True)
class Job:
    """A submitted job (async handle). Obtain from `AsyncClient.submit`; `Client.submit` wraps it."""

    request_id: str
    request: Request | dict[str, Any] | None
    model: str
    _client: AsyncClient = dataclasses.field(repr=False, compare=False)
    _track: Track = dataclasses.field(repr=False, compare=False, default_factory=lambda: Track(time.monotonic()))

    async def status(self) -> Status:
        """The current state (one /status call)."""
        return await self._client.api.status(self.request_id)

    async def result(self) -> Outcome:
        """The /result answer now: outputs if finished, else the current phase."""
        return await self._client.api.result(self.request_id)

    async def cancel(self) -> str:
        """Cancel if still queued; returns `cancelled` or `not_cancellable`. Twice is harmless."""
        return await self._client.api.cancel(self.request_id)

    async def wait(self, timeout: float = 600.0) -> Outcome:
        """Wait until the job ends (adaptive polling); raise JobFailed / JobCancelled / WaitTimeout."""
        deadline = time.monotonic() + timeout
        outcome = await follow(self._client.api, self.request_id, self._track, self._client.pacer, deadline=deadline)
        if outcome.phase == "failed":
            raise errors.JobFailed(
                f"request {self.request_id} failed: {outcome.error!r}", request_id=self.request_id, detail=outcome.error
            )
        if outcome.phase == "cancelled":
            raise errors.JobCancelled(f"request {self.request_id} was cancelled", request_id=self.request_id)
        return outcome

    async def download(self, timeout: float = 600.0) -> Generation:
        """Wait, then download and check the first output image."""
        outcome = await self.wait(timeout)
        return await self._client.collect(self, outcome)
