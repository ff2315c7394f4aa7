"""When to ask about which job next, and on which endpoint: a pure planner that learns as it goes.

Peer clients poll at a fixed interval, so they waste calls (0.1 s) or notice results late (2 s).
zlab's waiters share one `Pacer`, which holds the caller's live jobs (`Track`s) and learns from
what the server says. Nothing in it models the server's capacity or simulates its queue: the queue
may hold other users' jobs and capacity may change, so the planner only trusts what it reads.

Run time, from bounds rather than spans. A finished job ran at most `finished_at − (last time it was
seen queued, or created_at)` and at least `finished_at − (first time it was seen running)`; the
server's clock is mapped onto the caller's monotonic clock by comparing `created_at` with the
midpoint of the submit. The estimate is the upper end of the intersection of the most recent
intervals (exact for a steady server), else the median of recent ones (jittery run times). Each
image size has its own estimate; an unseen size is extrapolated linearly in megapixels. An estimate
not yet confirmed by a job that started after the first finish (the first wave may have been a cold
start) sends one "scout" job probing early, so faster warm runs are noticed after one job.

Queued jobs: only the frontier is asked. A job sent while one of the caller's own jobs still waits
is taken as queued (the queue is first come, first served) and not asked until it reaches the
front, where it is asked at once unless a finish of the caller's is about to start it (so a service
that grew is noticed within a round trip); any other new job gets one /status. After that, only the
caller's first queued job is asked again: once per detected finish of the caller's (a slot it may
take), on a timer from how fast its position drains (0.1–0.5 of the run time near the front; far
back, after 70% of the expected wait, at most one run time), and at once after it started with no
finish of the caller's to explain it (other users' jobs ended, or the server grew), because then the
next one may have started too.

Running jobs: one /result just after start + run time; an early answer is followed up after 3% of
the run time (or half the spread of recent run times, if larger: fine steps only add calls across
a jittery server's spread), growing ×1.5, capped at 10% of the time run so far. Before any run time
is known: probe at +0.2 s, then every 50% of the time run. Every finish re-plans every waiter.

Limits no poller beats: with lognormal σ = 0.3 jitter, few calls and small lag cannot both hold;
at concurrency = capacity the server idles between a finish and the next submit.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable
from typing import Literal

from zlab.core.runtimes import Bound, Estimate, extrapolate, from_bounds, size_key, spread
from zlab.core.status import Phase, TrackPhase

Endpoint = Literal["status", "result"]


@dataclasses.dataclass(slots=True, eq=False)
class Track:
    """What the caller knows of one job (mutable; its waiter and the shared `Pacer` update it).

    `sent` (when the submit left) and `submitted` (when its answer came) bracket the server's
    `created_at`, which maps the server's clock onto `time.monotonic()`. `megapixels` selects the
    run-time estimate for the job's image size.
    """

    submitted: float
    sent: float | None = None
    megapixels: float | None = None
    phase: TrackPhase = "unknown"
    position: int | None = None  # as the server counts it (0- or 1-based), last read
    position_at: float | None = None  # when it was read (send time of that call)
    inferred: bool = False  # taken as queued behind the caller's own queued jobs, never asked yet
    previous_position: tuple[float, int] | None = None  # the read before, for the position's drain rate
    last_queued: float | None = None  # send time of the last call that said queued
    seen_running: float | None = None  # arrival time of the first answer that said running
    last_running: float | None = None  # send time of the last answer that said running
    started: float | None = None  # estimated monotonic time it began running
    start_window: tuple[float, float] | None = None  # when the start is a guess: it lies in here
    last_poll: float | None = None
    early: int = 0  # /result answers in a row that came before the job was done
    polls: int = 0
    order: int = 0  # registration order, the tie-break for "first queued"


@dataclasses.dataclass(frozen=True, slots=True)
class Poll:
    """The next call for one job: `endpoint` at monotonic time `at`."""

    at: float
    endpoint: Endpoint


@dataclasses.dataclass(slots=True)
class _SizeClass:
    bounds: collections.deque[Bound] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=64))
    first_finish: float | None = None  # when the first of these jobs finished (caller's clock)
    confirmed: bool = False


@dataclasses.dataclass(eq=False)
class Pacer:
    """The shared planner: the caller's live jobs, learned run times and the queue frontier's state.

    One per client; every waiter registers its `Track` (`register`), asks `plan` when to poll, and
    reports each answer (`saw`); `saw` returns True when the other waiters should re-plan.
    """

    first_probe_s: float = 0.2  # before any run time is known: the first probe after the start
    probe_ratio: float = 0.5  # ... then every 50% of the time run so far
    follow_first: float = 0.03  # after an early answer: 3% of the run time, growing ×1.5,
    follow_growth: float = 1.5
    follow_cap: float = 0.10  # capped at 10% of the time run so far
    follow_spread: float = 0.5  # ... and no finer than half the run times' spread
    frontier_min: float = 0.1  # the frontier's timer, as a fraction of the run time
    frontier_max: float = 0.5
    approach: float = 0.7  # far from the front: the next read after this fraction of the expected wait,
    approach_max: float = 1.0  # ... but within a run time (a later read widens a start's window: tail lag)
    max_gap_s: float = 10.0  # the longest a waiter sleeps before re-planning (not a poll)
    stale_s: float = 60.0  # a queued job behind the frontier is asked again after this long anyway
    min_gap_s: float = 0.005
    intersect_min: int = 3  # agreeing recent bounds needed before their intersection is trusted

    live: dict[int, Track] = dataclasses.field(default_factory=dict)
    # Server epoch seconds minus caller monotonic seconds lies in [offset_low, offset_high]: a job is
    # created after its submit left and before the answer came, and finished before /result said so.
    offset_low: float = -math.inf
    offset_high: float = math.inf
    kicks: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    cascade: bool = False  # the frontier started with nothing of ours to explain it: ask the next now
    frontier_read_at: float | None = None
    drain_pairs: collections.deque[tuple[int, float]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=8)
    )
    frees: collections.deque[float] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=64))
    zero_seen: bool = False  # a position 0 was read: positions count from 0
    min_position: int | None = None
    frontier_starts: int = 0
    _classes: dict[float, _SizeClass] = dataclasses.field(default_factory=dict)
    _order: itertools.count[int] = dataclasses.field(default_factory=itertools.count)
    # Called with a track whenever an answer changed its phase (e.g. a sweep's limiter: a job seen
    # running leaves room for the next submit). Kept off the planner's decisions.
    listeners: list[Callable[[Track], None]] = dataclasses.field(default_factory=list)

    # -- the registry of live jobs ------------------------------------------------------------

    def register(self, track: Track) -> None:
        """Count `track` among the caller's live jobs (its waiter calls this before its first poll)."""
        if id(track) not in self.live:
            track.order = next(self._order)
            if track.phase == "unknown" and track.sent is not None and self._behind_queued(track):
                # The queue is first come, first served: a job just sent behind one of the caller's
                # that waits waits too, so its first /status would only say so; it is asked when it
                # reaches the front. (Not a job collected by id: it may have run long ago.)
                track.phase, track.last_queued, track.inferred = "queued", track.sent, True
            self.live[id(track)] = track

    def _behind_queued(self, track: Track) -> bool:
        rank = self._rank(track)
        return any(t.phase == "queued" and self._rank(t) < rank for t in self.live.values())

    def forget(self, track: Track) -> None:
        """The waiter of `track` is done (finished, timed out or cancelled)."""
        self.live.pop(id(track), None)

    def frontier(self) -> Track | None:
        """The caller's first queued job: the queue is first come, first served, so the earliest submitted.

        (Not the lowest position: a job sent later may read a lower position later than an earlier
        job last read its own, and would starve it.)"""
        return min((t for t in self.live.values() if t.phase == "queued"), key=self._rank, default=None)

    @staticmethod
    def _rank(track: Track) -> tuple[float, int]:
        return (track.submitted, track.order)

    # -- learning -------------------------------------------------------------------------------

    @property
    def position_base(self) -> int:
        """0 or 1: how the server counts positions (1 once three frontier jobs started and no 0 was seen)."""
        if self.zero_seen or self.min_position is None:
            return 0
        return 1 if self.min_position >= 1 and self.frontier_starts >= 3 else 0

    def overdue(self, track: Track, now: float) -> bool:
        """Whether `track`, seen running, is past its expected end: most likely it has finished and its
        slot went to the next queued job (its /result, due about now, will tell)."""
        if track.phase != "running":
            return False
        est = self.estimate(track.megapixels)
        started = track.started if track.started is not None else track.submitted
        return est is not None and now >= self._due(started, est.seconds)

    def estimate(self, megapixels: float | None) -> Estimate | None:
        """The run time for a job of `megapixels`, or None before anything finished."""
        key = size_key(megapixels)
        own = self._classes.get(key)
        if own is not None and own.bounds:
            return Estimate(from_bounds(own.bounds, self.intersect_min), own.confirmed, spread(own.bounds))
        known = [(k, from_bounds(c.bounds, self.intersect_min)) for k, c in self._classes.items() if c.bounds]
        if not known:
            return None
        return Estimate(extrapolate(known, key), False)

    def _learn(self, track: Track, bound: Bound, finished: float) -> None:
        cls = self._classes.setdefault(size_key(track.megapixels), _SizeClass())
        if cls.first_finish is None:
            cls.first_finish = finished
        elif not cls.confirmed and bound.started >= cls.first_finish - 1e-6:
            cls.confirmed = True
            old = from_bounds(cls.bounds, self.intersect_min)
            if not old / 1.5 <= bound.likely <= old * 1.5:
                cls.bounds.clear()  # the first wave ran differently (a cold start): forget it
        cls.bounds.append(bound)

    @property
    def offset(self) -> float | None:
        """Server clock minus the caller's: the middle of what is known, or the tightest lower bound."""
        if not math.isfinite(self.offset_low):
            return None
        return (self.offset_low + self.offset_high) / 2 if math.isfinite(self.offset_high) else self.offset_low

    @property
    def offset_error(self) -> float:
        """How far `offset` may be off (a few ms when submits' send times are known)."""
        if not math.isfinite(self.offset_low):
            return math.inf
        return (self.offset_high - self.offset_low) / 2 if math.isfinite(self.offset_high) else 0.01

    def _learn_offset(self, track: Track, received: float, created: float | None, finished: float | None) -> None:
        if finished is not None:
            self.offset_low = max(self.offset_low, finished - received)
        if created is not None:
            self.offset_low = max(self.offset_low, created - track.submitted)
            if track.sent is not None:
                self.offset_high = min(self.offset_high, created - track.sent)
        if self.offset_high < self.offset_low:  # clocks stepped, or the server's stamps lie: trust the latest
            self.offset_high = math.inf

    def _local(self, server_time: float | None) -> float | None:
        return None if server_time is None or self.offset is None else server_time - self.offset

    # -- answers --------------------------------------------------------------------------------

    def saw(
        self,
        track: Track,
        sent: float,
        received: float,
        phase: Phase,
        position: int | None = None,
        *,
        endpoint: Endpoint = "status",
        created: float | None = None,
        finished: float | None = None,
    ) -> bool:
        """Record one answer about `track` (a call sent at `sent`, answered at `received`, monotonic).

        `created`/`finished` are the server's timestamps (epoch seconds) from a finished /result.
        Returns True when the other waiters should re-plan (a finish, or the frontier moved).
        """
        before = track.phase
        wake = self._saw(track, sent, received, phase, position, endpoint, created, finished)
        if track.phase != before:
            for listener in list(self.listeners):
                listener(track)
        return wake

    def _saw(
        self,
        track: Track,
        sent: float,
        received: float,
        phase: Phase,
        position: int | None,
        endpoint: Endpoint,
        created: float | None,
        finished: float | None,
    ) -> bool:
        track.polls += 1
        track.last_poll = sent
        was_frontier = track.phase == "queued" and self.frontier() is track
        # A frontier seen started takes the oldest slot freed by one of the caller's finishes, if any.
        kicked = self.kicks.popleft() if was_frontier and self.kicks and phase != "queued" else None
        if was_frontier:
            self.frontier_read_at = sent
            self.cascade = False
        if phase == "queued":
            if was_frontier:  # every slot freed before this read went to a job ahead of it
                while self.kicks and self.kicks[0] <= sent:
                    self.kicks.popleft()
            self._saw_queued(track, sent, position, was_frontier)
            return was_frontier
        if phase == "running":
            if track.phase != "running":
                self._saw_start(track, sent, received, kicked, was_frontier)
                track.phase, track.early = "running", 0
            elif endpoint == "result":
                track.early += 1
            track.last_running = sent
            return was_frontier
        if phase == "completed" or (endpoint == "status" and phase in ("failed", "cancelled")):
            if track.phase == "queued":  # it started and ended between two looks
                self._saw_start(track, sent, received, kicked, was_frontier)
                track.seen_running = None
            track.phase = "finished"  # its /result comes next
            return True
        self._saw_end(track, received, phase, created, finished)
        return True

    def _saw_queued(self, track: Track, sent: float, position: int | None, was_frontier: bool) -> None:
        if position is not None:
            if position == 0:
                self.zero_seen = True
            self.min_position = position if self.min_position is None else min(self.min_position, position)
            if was_frontier and track.position is not None and track.position_at is not None:
                self.drain_pairs.append((track.position - position, sent - track.position_at))
            if track.position is not None and track.position_at is not None:
                track.previous_position = (track.position_at, track.position)
            track.position, track.position_at = position, sent
        track.phase, track.last_queued, track.early, track.inferred = "queued", sent, 0, False
        # The queue is first come, first served: the caller's jobs behind this one were queued then too.
        rank = self._rank(track)
        for other in self.live.values():
            if other.phase == "queued" and self._rank(other) > rank:
                other.last_queued = max(other.last_queued or sent, sent)

    def _saw_start(self, track: Track, sent: float, received: float, kicked: float | None, frontier: bool) -> None:
        track.seen_running = received
        if track.last_queued is None:  # never seen queued: it started about when it was created
            track.started = (track.sent + track.submitted) / 2 if track.sent is not None else track.submitted
            return
        low = track.last_queued
        if frontier:
            self.frontier_starts += 1
            if track.position is not None and track.position_at is not None:
                ahead = max(0, track.position - self.position_base) + 1
                self.drain_pairs.append((ahead, max(received - track.position_at, 1e-3)))
            if kicked is None:
                self.cascade = True  # no finish of ours freed its slot: more may have started
        if kicked is not None and low <= kicked <= received:
            track.started = kicked
            return
        track.start_window = (low, received)
        track.started = self._guess_start(low, received)

    def _guess_start(self, low: float, high: float) -> float:
        """The latest slot the caller saw freed in the window, else its middle."""
        freed = [f for f in self.frees if low <= f <= high]
        return max(freed) if freed else (low + high) / 2

    def _saw_end(
        self, track: Track, received: float, phase: Phase, created: float | None, finished: float | None
    ) -> None:
        self._learn_offset(track, received, created, finished)
        local = self._local(finished)
        end = received if local is None else min(local, received)
        if phase != "cancelled":  # a slot freed: the first queued job may take it
            self.frees.append(end)
            if any(t.phase == "queued" for t in self.live.values()):
                self.kicks.append(end)
            for other in self.live.values():  # a start guessed before this finish was known may be it
                if other.phase == "running" and other.start_window is not None:
                    other.started = self._guess_start(*other.start_window)
        if phase == "succeeded":
            bound = self._bound(track, received, end, created, finished)
            if bound is not None:
                self._learn(track, bound, end)
        track.phase = "finished"
        self.forget(track)

    def _bound(
        self, track: Track, received: float, end: float, created: float | None, finished: float | None
    ) -> Bound | None:
        highs = []
        if created is not None and finished is not None:
            highs.append(finished - created)  # the server's own span: queueing included, so an upper bound
        slack = self.offset_error if math.isfinite(self.offset_error) else 0.0  # the clock mapping's own error
        after = track.last_queued if track.last_queued is not None else track.sent
        if after is not None:
            highs.append(end - after + slack)
        low = 0.0
        if track.seen_running is not None:
            low = max(low, end - track.seen_running - slack)
            if track.last_running is not None:
                low = max(low, track.last_running - track.seen_running)
        if track.position is not None and track.position_at is not None:
            # k jobs ahead of it then: it had started by the (k+1)-th slot the caller saw freed since.
            ahead = max(0, track.position - self.position_base)
            since = sorted(f for f in self.frees if f >= track.position_at)
            if len(since) > ahead:
                low = max(low, end - since[ahead] - slack)
        high = min(highs, default=math.inf)
        if not math.isfinite(high) or high <= 0:
            return None
        low = min(low, high)
        started = track.started if track.started is not None else track.submitted
        return Bound(low, high, min(max(end - started, low), high), started)

    # -- planning -------------------------------------------------------------------------------

    def plan(self, track: Track, now: float) -> Poll:
        """The next call for `track` (pure: planning twice at the same moment gives the same answer)."""
        if track.phase == "unknown":
            return Poll(now, "status")  # every new job is asked once where it stands
        if track.phase == "finished":
            return Poll(now, "result")
        est = self.estimate(track.megapixels)
        if track.phase == "queued":
            if self.frontier() is not track:
                last = track.last_poll if track.last_poll is not None else track.submitted
                return Poll(max(now, last + self.stale_s), "status")
            return Poll(max(now, self._frontier_at(track, self._draining())), "status")
        return Poll(max(now, self._running_at(track, est)), "result")

    def _frontier_at(self, track: Track, est: Estimate | None) -> float:
        if self.cascade:
            return -math.inf  # it started with nothing of ours to explain it: the next may have too
        if track.inferred and not self.kicks:
            return -math.inf  # never asked, and no finish of ours explains a start: has the service grown?
        if self.kicks:
            # A slot freed. Asking is not urgent (the server starts the job by itself, and the freed
            # moment dates its start): let the burst of /result calls that finishes bring go first.
            return self.kicks[0] + (self.frontier_min * est.seconds if est is not None else 0.0)
        last = track.last_poll if track.last_poll is not None else track.submitted
        base = max(last, self.frontier_read_at or last)
        if est is None:  # nothing finished yet: probe at growing intervals (a finish kicks it anyway)
            return base + max(self.first_probe_s, self.probe_ratio * (base - track.submitted))
        run = est.seconds
        expected = base + self.frontier_max * run
        rate = self._drain_rate(track)
        if rate is not None and track.position is not None and track.position_at is not None:
            ahead = max(0, track.position - self.position_base) + 1
            expected = track.position_at + ahead / rate if rate > 0 else math.inf
        # Far from the front, approach the expected start in steps (each read refines the rate);
        # near it, ask at least every `frontier_max` of a run time.
        far = min(self.approach * (expected - base), self.approach_max * run)
        return min(max(expected, base + self.frontier_min * run), base + max(self.frontier_max * run, far))

    def _draining(self) -> Estimate | None:
        """The run time that paces the queue: the median over the caller's running jobs (whatever their
        size: they free the slots), else over every size seen."""
        running = [e for t in self.live.values() if t.phase == "running" and (e := self.estimate(t.megapixels))]
        if not running:
            running = [
                Estimate(from_bounds(c.bounds, self.intersect_min), c.confirmed)
                for c in self._classes.values()
                if c.bounds
            ]
        if not running:
            return None
        return Estimate(statistics.median(e.seconds for e in running), all(e.confirmed for e in running))

    def _drain_rate(self, track: Track) -> float | None:
        """Positions per second: between this job's last two reads, else over recent frontier reads.

        The queue often moves in bursts (a wave of finishes), so a position that did not move since
        the last read means "not soon": the timer stretches to its maximum rather than averaging."""
        if track.previous_position is not None and track.position is not None and track.position_at is not None:
            at, was = track.previous_position
            if track.position_at - at > 1e-3:
                return max(0.0, (was - track.position) / (track.position_at - at))
        dropped = sum(d for d, _ in self.drain_pairs)
        spent = sum(s for _, s in self.drain_pairs)
        return dropped / spent if spent > 0 else None

    def _running_at(self, track: Track, est: Estimate | None) -> float:
        started = track.started if track.started is not None else track.submitted
        last = track.last_poll if track.last_poll is not None else started
        ran = max(0.0, last - started)
        if est is None:
            # Nothing learned: one job per size probes closely; the rest more sparsely, since the
            # first finish wakes them all.
            if self._is_scout(track):
                return max(started + self.first_probe_s, last + self.probe_ratio * ran)
            return max(started + 2 * self.first_probe_s, last + 2 * self.probe_ratio * ran)
        due = self._due(started, est.seconds)
        if not est.confirmed:
            # The estimate may be a cold first wave's or another size's. One job (the scout) probes
            # towards it and follows up closely past it; the rest wait for it (its finish wakes them),
            # asking only sparsely once past their own due.
            scout = self._is_scout(track)
            if last < due:
                return min(max(started + self.first_probe_s, last + self.probe_ratio * ran), due) if scout else due
            if not track.early:
                return due
        elif not track.early:
            return due
        # Steps sized to how much run times vary: fine for a steady server (its estimate is exact),
        # coarser for a jittery one, where fine steps would only add calls across its spread.
        first = max(self.follow_first * est.seconds, self.follow_spread * est.spread)
        gap = first * self.follow_growth ** (track.early - 1)
        gap = min(gap, max(self.follow_cap * max(last - started, est.seconds), first))
        return max(due, last + max(gap, self.min_gap_s))

    def _due(self, started: float, run: float) -> float:
        # Just after: an answer a hair early costs a second call.
        return started + run + max(0.003, 0.01 * run)

    def _is_scout(self, track: Track) -> bool:
        """The earliest-started running job of its size since that size's first finish probes for all."""
        key = size_key(track.megapixels)
        cls = self._classes.get(key)
        since = cls.first_finish if cls is not None and cls.first_finish is not None else -math.inf
        mates = [
            t
            for t in self.live.values()
            if t.phase == "running" and size_key(t.megapixels) == key and (t.started or t.submitted) >= since - 1e-6
        ]
        first = min(mates, key=lambda t: (t.started or t.submitted, t.order), default=None)
        return first is track
