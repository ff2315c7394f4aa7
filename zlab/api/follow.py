"""The one waiting loop: follow a job by id until it ends, asking the pure planner (`zlab.core.polling`) when.

Every wait has a deadline and every sleep is bounded (`Pacer.max_gap_s`). Waiters that share a
`Pacer` share one wake-up signal: when an answer changes what the others should do (a finish, the
queue's frontier moving), every sleeping waiter wakes and re-plans at once.

    track = Track(time.monotonic(), sent=before_submit, megapixels=width * height / 1e6)
    outcome = await follow(api, request_id, track, pacer, deadline=time.monotonic() + 600)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref

from zlab import errors
from zlab.api.http import API
from zlab.core.polling import Pacer, Track
from zlab.core.protocol import Outcome
from zlab.core.status import is_finished


class Signal:
    """Wakes every sleeping waiter at once (e.g. when a job finished, so all re-plan)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def sleep_until(self, at: float) -> None:
        """Sleep until monotonic `at`, or until `fire` is called."""
        delay = at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), delay)


# One signal per (pacer, event loop): a client's waiters share it; a pacer reused from another loop
# (a second `asyncio.run`) gets a fresh one, since an asyncio.Event belongs to one loop.
_signals: weakref.WeakKeyDictionary[Pacer, tuple[asyncio.AbstractEventLoop, Signal]] = weakref.WeakKeyDictionary()


def signal_for(pacer: Pacer) -> Signal:
    """The wake-up signal shared by every waiter on `pacer` in the running event loop."""
    loop = asyncio.get_running_loop()
    held = _signals.get(pacer)
    if held is None or held[0] is not loop:
        held = (loop, Signal())
        _signals[pacer] = held
    return held[1]


async def follow(
    api: API,
    request_id: str,
    track: Track,
    pacer: Pacer,
    *,
    deadline: float,
) -> Outcome:
    """Poll until the job ends; return its terminal /result outcome (succeeded, failed or cancelled).

    `track` describes the job (set `sent`, the monotonic time just before its submit, and
    `megapixels` when known: they sharpen the clock mapping and the run-time estimate); `pacer` is
    the client's shared planner, which keeps `track` among its live jobs while this runs. Raises
    `WaitTimeout` at the monotonic `deadline`; API errors propagate.
    """
    signal = signal_for(pacer)
    pacer.register(track)
    said_finished = False
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise errors.WaitTimeout(
                    f"request {request_id} had not finished by its deadline", request_id=request_id
                )
            poll = pacer.plan(track, now)
            if poll.at > now:
                # Bounded: wake for the poll, the deadline, a re-plan after max_gap_s, or a signal.
                await signal.sleep_until(min(poll.at, deadline, now + pacer.max_gap_s))
                continue
            sent = time.monotonic()
            if poll.endpoint == "status":
                status = await api.status(request_id)
                wake = pacer.saw(track, sent, time.monotonic(), status.phase, status.queue_position)
                if status.terminal:
                    said_finished = True
            else:
                try:
                    outcome = await api.result(request_id)
                except errors.NotFoundError:
                    # /result may not know a job /status knows (its store lags): /status decides (a 404 there
                    # too propagates); a job it calls finished is followed as lagging.
                    if not said_finished:
                        said_finished = (await api.status(request_id)).terminal
                    outcome = Outcome("running", lagging=said_finished)
                received = time.monotonic()
                if not is_finished(outcome.phase) and (said_finished or outcome.lagging):
                    outcome = await _lagging(api, request_id, deadline)
                    received = time.monotonic()
                if is_finished(outcome.phase):
                    pacer.saw(
                        track,
                        sent,
                        received,
                        outcome.phase,
                        endpoint="result",
                        created=outcome.created_at.timestamp() if outcome.created_at else None,
                        finished=outcome.finished_at.timestamp() if outcome.finished_at else None,
                    )
                    signal.fire()  # every finish re-plans every waiter
                    return outcome
                # Not ready yet (HTTP 200 or the 400005 form alike): queued or running, maybe with no position.
                position = getattr(outcome, "queue_position", None)
                wake = pacer.saw(track, sent, received, outcome.phase, position, endpoint="result")
            if wake:
                signal.fire()
    finally:
        pacer.forget(track)


async def _lagging(api: API, request_id: str, deadline: float) -> Outcome:
    """The service said the job finished but /result does not show it yet: ask /result alone, waiting
    longer each time, until it ends or the policy's `lag_limit_s` (or the deadline) passes."""
    policy = api.retry
    started = time.monotonic()
    wait = policy.lag_first_s
    while True:
        now = time.monotonic()
        if now + wait > min(deadline, started + policy.lag_limit_s):
            if now + wait > deadline:
                raise errors.WaitTimeout(
                    f"request {request_id} had not shown its result by its deadline", request_id=request_id
                )
            raise errors.ProtocolError(
                f"request {request_id} finished but its result showed no image within {policy.lag_limit_s:.0f} s; "
                "it stays collectable by its request id"
            )
        await asyncio.sleep(wait)
        wait = min(wait * 2, policy.lag_cap_s)
        try:
            outcome = await api.result(request_id)
        except errors.NotFoundError:
            continue
        if is_finished(outcome.phase):
            return outcome
