"""How many jobs a sweep keeps at the service: a fixed cap, or automatic (the default).

A hosted queue runs what it has room for and queues the rest; a queued job costs nothing until it
runs. A caller that keeps exactly as many jobs in flight as the service runs leaves each freed slot
idle until it notices the finish and its next submit arrives. The automatic setting instead keeps
some of its jobs *queued* at the service beyond those it has seen running, so a freed slot is taken
at once by the service itself:

    in flight  =  running  +  queued headroom,   headroom = max(MIN_QUEUED, ceil(HEADROOM × running))

`running` counts only the caller's jobs its poller saw running, so the number in flight follows the
service: when the service grows, more of the queued jobs start, the headroom is refilled and grows
with them (the first wave doubles per round trip until the capacity is found); at least 6 stay
queued, so a small service shared with other users still finds some of the caller's jobs waiting
(with 4, a 2- or 8-slot service where others keep 85% busy ran the sweep 1.02-1.08x slower than an
omniscient client under the same rule; with 6, 1.02-1.04x); when it shrinks, fewer run and fewer
are sent. Jobs whose result is being collected no longer hold a place at the service. Other users'
jobs ahead in the queue only delay the caller's queued ones; they are never counted. The headroom
covers a whole wave finishing at once (the same run time on every slot).

An explicit number is a hard cap on jobs at the service: sent and not yet seen finished there. A
finished job's download does not hold its place, so at N = the service's capacity a freed slot
waits only for the finish to be noticed, not for the image to arrive.

>>> policy = parse_concurrency("auto")
>>> may_send(policy, InFlight(held=16, running=6, collecting=0))  # 10 queued: the headroom is 6
False
>>> may_send(policy, InFlight(held=11, running=6, collecting=0))
True
>>> may_send(parse_concurrency(8), InFlight(held=7, running=0, collecting=0))
True
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
from collections.abc import Callable
from typing import Literal

from zlab import errors

Concurrency = int | Literal["auto"]
MAX_IN_FLIGHT = 256  # never more cells between submit and collected, whatever the service runs
MIN_QUEUED = 6  # the automatic headroom never drops below this many queued jobs
HEADROOM = 1.0  # ... and covers this fraction of the jobs seen running (a wave finishing together)
ASSUMED_CAPACITY = 8  # what plans assume of an unseen service under `auto` (its estimate's waves)


@dataclasses.dataclass(frozen=True, slots=True)
class InFlight:
    """The caller's cells between submit and collected: `held` in all; `running` of them seen running at
    the service (and not past their expected end); `collecting`: finished there, being downloaded;
    `overdue`: seen running but past their expected end, most likely finished and their slot taken by
    the next queued job (counted neither as running nor as queued). The rest are queued or just sent."""

    held: int
    running: int
    collecting: int
    overdue: int = 0

    @property
    def waiting(self) -> int:
        """Cells sent but not seen running: queued at the service, or their submit still on its way."""
        return max(0, self.held - self.running - self.collecting - self.overdue)


def parse_concurrency(value: object) -> Concurrency:
    """`"auto"` or an integer from 1 to 256 (also as text, as the command line gives it)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IN_FLIGHT:
        return value
    raise errors.ValidationError("concurrency", value, f'"auto" or an integer from 1 to {MAX_IN_FLIGHT}')


def headroom(running: int) -> int:
    """How many of the caller's jobs `auto` keeps queued beyond the `running` ones."""
    return max(MIN_QUEUED, math.ceil(HEADROOM * running))


def may_send(policy: Concurrency, now: InFlight) -> bool:
    """Whether one more cell may be submitted now.

    Under `auto`, jobs being collected count towards the headroom as if running: the service ran them
    just now, and with jobs that finish almost at once (a fast or idle service) nothing is ever seen
    running, so without them the headroom would stay at its minimum and the service wait for us."""
    if policy != "auto":
        return now.held - now.collecting < policy
    return now.held < MAX_IN_FLIGHT and now.waiting < headroom(now.running + now.collecting)


def describe(policy: Concurrency) -> str:
    """For the plan line: "concurrency 8" or "concurrency auto (what runs + a wave queued)"."""
    if policy == "auto":
        return "concurrency auto (the jobs running at the service + as many queued)"
    return f"concurrency {policy}"


class Limiter:
    """The async gate in front of each submit: `async with limiter:` holds one place until the cell is done.

    `count()` reports the caller's jobs running, being collected and overdue (see `InFlight`; the
    runner reads its own tracks); `wake()` is called whenever one of them changes phase, so a waiting
    submit re-checks at once rather than on a timer. Waiters are admitted first come, first served,
    and only as many as the policy allows are woken (a sweep of 20,000 cells has as many waiting: waking
    them all on every phase change would cost O(cells) each time). Single event loop; no locks needed.
    """

    def __init__(self, policy: Concurrency, count: Callable[[], tuple[int, int, int]]) -> None:
        self.policy = policy
        self._count = count
        self.held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def wake(self, *_: object) -> None:
        """Something changed: admit waiting submits while the policy allows (oldest first)."""
        while self._waiters and may_send(self.policy, self.in_flight()):
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter cancelled meanwhile is skipped
                self.held += 1  # its place is taken now, so the next check counts it
                waiter.set_result(None)

    def in_flight(self) -> InFlight:
        """The numbers the policy decides on, now."""
        return InFlight(self.held, *self._count())

    async def __aenter__(self) -> Limiter:
        if not self._waiters and may_send(self.policy, self.in_flight()):
            self.held += 1
            return self
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # admitted just as it was cancelled: give it back
                self.held -= 1
                self.wake()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.held -= 1
        self.wake()
