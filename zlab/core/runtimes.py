"""Run times from what a poller saw: bounds on each finished job's run, and the estimate they give.

A finished job ran for somewhere in [low, high] seconds (see `zlab.core.polling` for how the bounds
are found). For a steady server the intersection of recent bounds pins the run time; for a jittery
one their median is the best guess. Each image size keeps its own estimate, and an unseen size is
extrapolated linearly in megapixels, on the long side.

>>> from_bounds([Bound(0.48, 0.52, 0.5, 0.0), Bound(0.49, 0.505, 0.5, 1.0), Bound(0.495, 0.51, 0.5, 2.0)], 3)
0.505
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable

ANY_SIZE = -1.0  # the size class of jobs whose size the caller did not say


@dataclasses.dataclass(frozen=True, slots=True)
class Bound:
    """A finished job's run time lies in [low, high] seconds, most likely `likely` (from its estimated
    start); `started` (caller's clock) dates it."""

    low: float
    high: float
    likely: float
    started: float


@dataclasses.dataclass(frozen=True, slots=True)
class Estimate:
    """A run time for one image size; `confirmed` once a job that started after the first finish agreed."""

    seconds: float
    confirmed: bool
    spread: float = 0.0  # how far recent run times stray from it (seconds, about one standard deviation)


def size_key(megapixels: float | None) -> float:
    return ANY_SIZE if megapixels is None else round(megapixels, 3)


def from_bounds(bounds: Iterable[Bound], intersect_min: int) -> float:
    """From the longest run of recent bounds that agree (if long enough): the upper end of their
    intersection when it is narrow, else their typical likely value inside it. Otherwise (a jittery
    server) the median likely value of recent bounds."""
    recent = list(bounds)
    low, high, n = -math.inf, math.inf, 0
    for b in reversed(recent):
        if max(low, b.low) > min(high, b.high):
            break
        low, high, n = max(low, b.low), min(high, b.high), n + 1
    if n >= min(intersect_min, len(recent)):
        if high - low <= max(0.05 * high, 0.01):
            return high
        return min(max(statistics.median(b.likely for b in recent[-n:][-15:]), low), high)
    return statistics.median(b.likely for b in recent[-15:])


def spread(bounds: Iterable[Bound]) -> float:
    """How much recent run times vary: the median absolute deviation of their likely values, scaled
    to a normal distribution's standard deviation (0 for a steady server)."""
    likely = [b.likely for b in list(bounds)[-15:]]
    if len(likely) < 3:
        return 0.0
    middle = statistics.median(likely)
    return 1.4826 * statistics.median(abs(x - middle) for x in likely)


def extrapolate(known: list[tuple[float, float]], key: float) -> float:
    """A run time for an unseen size, on the long side: a guess too short costs every job of that size
    early answers, one too long only delays them until the size's scout finishes and wakes them.
    Linear in megapixels through the known sizes (proportional with one), and never below a smaller
    known size's."""
    sized = [(k, v) for k, v in known if k != ANY_SIZE]
    if key == ANY_SIZE or not sized:
        return statistics.median(v for _, v in known)
    if len({k for k, _ in sized}) == 1:
        size, seconds = sized[0]
        return seconds * max(1.0, key / size)
    mean_x = statistics.fmean(k for k, _ in sized)
    mean_y = statistics.fmean(v for _, v in sized)
    slope = sum((k - mean_x) * (v - mean_y) for k, v in sized) / sum((k - mean_x) ** 2 for k, _ in sized)
    floor = max((v for k, v in sized if k <= key), default=min(v for _, v in sized) * 0.25)
    return max(floor, mean_y + slope * (key - mean_x))
