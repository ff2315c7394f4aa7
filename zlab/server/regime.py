"""Queue regimes: the hosted queue's conditions beyond the caller's own jobs, as the scheduler plays them.

A real queue is shared and uneven. `Regime` describes how, and the scheduler applies it:

    other_load     other users' jobs arrive (Poisson) at this load, a fraction of capacity: 0.5 keeps
                   about half the slots busy on average; their jobs take slots and queue positions
                   but are invisible to the client except through positions and waiting
    burst_size / burst_every   besides, `burst_size` of their jobs arrive at once every `burst_every` s
    other_seconds  how long their jobs run (None: the latency model at one megapixel)
    jitter         run times vary lognormally with this sigma (mean kept: exp(σZ − σ²/2))
    capacity_steps capacity changes over time: `parse_capacity("4,8@5,16@10")` is 4 slots, 8 from
                   t = 5 s, 16 from t = 10 s (t counts from the server's start)
    cold_factor / cold_jobs    the first `cold_jobs` jobs to start (None: the first wave, as many as
                   the starting capacity) run `cold_factor` times slower

>>> parse_capacity("4,8@5,16@10")
(4, ((5.0, 8), (10.0, 16)))
>>> capacity_at(4, ((5.0, 8), (10.0, 16)), 7.5)
8

The functions here are pure; `seed` makes the draws the scheduler takes from them repeatable.
"""

from __future__ import annotations

import dataclasses
import math

from zlab.errors import ConfigError

CapacitySteps = tuple[tuple[float, int], ...]
MIN_OTHER_SECONDS = 0.01  # other users' jobs never take 0 s: a zero run time would mean an infinite arrival rate


@dataclasses.dataclass(frozen=True)
class Regime:
    """How the shared queue behaves beyond the caller's own jobs; the default is an idle, steady queue."""

    other_load: float = 0.0
    burst_size: int = 0
    burst_every: float = 0.0
    other_seconds: float | None = None
    jitter: float = 0.0
    capacity_steps: CapacitySteps = ()
    cold_factor: float = 1.0
    cold_jobs: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.other_load < 10:
            raise ConfigError(f"other_load is a fraction of capacity (0 to 10), not {self.other_load}")
        if self.burst_size < 0 or self.burst_every < 0 or (self.burst_size > 0) != (self.burst_every > 0):
            raise ConfigError("bursts need both burst_size (jobs) and burst_every (seconds) above 0, or neither")
        if self.other_seconds is not None and not 0 < self.other_seconds < math.inf:
            raise ConfigError(f"other_seconds must be a positive number of seconds, not {self.other_seconds}")
        if not 0 <= self.jitter <= 3:
            raise ConfigError(f"jitter is a lognormal sigma from 0 to 3, not {self.jitter}")
        if not 1 <= self.cold_factor < math.inf or (self.cold_jobs is not None and self.cold_jobs < 0):
            raise ConfigError("cold starts need cold_factor >= 1 and cold_jobs >= 0 (None: the first wave)")
        times = [since for since, _ in self.capacity_steps]
        if times != sorted(times) or any(t <= 0 for t in times) or any(c < 1 for _, c in self.capacity_steps):
            raise ConfigError("capacity_steps must be (seconds > 0, capacity >= 1) pairs in increasing time")

    def replace(self, **changes: object) -> Regime:
        """A copy with some settings changed, checked again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def parse_capacity(value: int | str) -> tuple[int, CapacitySteps]:
    """A capacity or a schedule, "4,8@5,16@10": the starting capacity and the later (since, capacity) steps."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, ()
    problem = ConfigError(f"capacity {value!r} not understood; write a number like '4' or a schedule '4,8@5,16@10'")
    if not isinstance(value, str) or not value.strip():
        raise problem
    first, *rest = value.replace(" ", "").split(",")
    try:
        steps = tuple((float(since), int(cap)) for cap, since in (part.split("@") for part in rest))
        start = int(first)
    except ValueError:
        raise problem from None
    if "@" in first or start < 1:
        raise problem
    Regime(capacity_steps=steps)  # checks the steps
    return start, steps


def parse_burst(text: str) -> tuple[int, float]:
    """Other users' bursts, "8/10": 8 jobs at once every 10 seconds ("" for none)."""
    if not text.strip():
        return 0, 0.0
    size, _, every = text.replace(" ", "").partition("/")
    try:
        burst = int(size), float(every)
    except ValueError:
        raise ConfigError(f"burst {text!r} not understood; write jobs/seconds, e.g. '8/10'") from None
    Regime(burst_size=burst[0], burst_every=burst[1])  # checks them
    return burst


def format_capacity(start: int, steps: CapacitySteps) -> str:
    """The schedule as `parse_capacity` reads it."""
    return ",".join([str(start), *(f"{cap}@{since:g}" for since, cap in steps)])


def capacity_at(start: int, steps: CapacitySteps, t: float) -> int:
    """The capacity `t` seconds after the server started."""
    capacity = start
    for since, cap in steps:
        if t >= since:
            capacity = cap
    return capacity


def jittered(seconds: float, sigma: float, normal: float) -> float:
    """`seconds` scaled by a lognormal factor with mean 1: `normal` is a standard normal draw."""
    return seconds * math.exp(sigma * normal - sigma * sigma / 2) if sigma else seconds


def is_cold(regime: Regime, started_before: int, start_capacity: int) -> bool:
    """Whether the job that starts after `started_before` others runs cold (slower)."""
    limit = start_capacity if regime.cold_jobs is None else regime.cold_jobs
    return regime.cold_factor > 1 and started_before < limit


def arrival_gap(load: float, capacity: int, run_seconds: float, uniform: float) -> float | None:
    """Seconds until the next of other users' jobs arrives (Poisson at `load` × capacity), None when none do.

    A load of 1 would keep every slot busy: `capacity / run_seconds` jobs arrive per second.
    """
    rate = load * capacity / max(run_seconds, MIN_OTHER_SECONDS)
    if rate <= 0:
        return None
    return -math.log(1.0 - uniform) / rate
