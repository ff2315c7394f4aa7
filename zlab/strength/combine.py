"""The best combination of 2–3 LoRAs' scales under a stated objective, by compass search. Pure decisions.

Objective: minimise a number measured on the images of one combination (over the seeds), by default the
mean pixel distance to target images, one per seed (`find_combination`): "which scales reproduce this
look?". The search starts at `start`, tries each scale one `step` up and down, moves to the best point
whenever one improves on it, and halves the step when none does, down to `min_step`. It is stateless:
`next_point` reads the evaluated points, so a run directory resumes it like any sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zlab.errors import ValidationError

Point = tuple[float, ...]


@dataclass(frozen=True)
class CompassSearch:
    """Scales in [lo, hi] per LoRA, from `start`, steps from `step` halving down to `min_step`."""

    start: Point
    lo: float = 0.0
    hi: float = 2.0
    step: float = 0.5
    min_step: float = 0.05
    max_points: int = 60

    def __post_init__(self) -> None:
        if not 1 <= len(self.start) <= 3 or any(not self.lo <= s <= self.hi for s in self.start):
            raise ValidationError("start", list(self.start), f"1 to 3 scales within [{self.lo:g}, {self.hi:g}]")
        if not 0 < self.min_step <= self.step:
            raise ValidationError("step", self.step, f"a step ≥ min_step ({self.min_step:g}) > 0")

    def steps(self) -> list[float]:
        out, s = [], self.step
        while s >= self.min_step - 1e-9:
            out.append(s)
            s /= 2
        return out


def best_of(points: Mapping[Point, float]) -> Point:
    """The point with the lowest objective (the earliest evaluated among equals)."""
    return min(points, key=lambda p: points[p])


def next_point(points: Mapping[Point, float], search: CompassSearch) -> Point | None:
    """The next combination to evaluate, or None when no neighbour at any step improves on the best."""
    start = tuple(round(s, 3) for s in search.start)
    if start not in points:
        return start
    if len(points) >= search.max_points:
        return None
    best = best_of(points)
    for step in search.steps():
        for i in range(len(best)):
            for sign in (1, -1):
                value = round(min(search.hi, max(search.lo, best[i] + sign * step)), 3)
                candidate = (*best[:i], value, *best[i + 1 :])
                if candidate != best and candidate not in points:
                    return candidate
    return None


def describe(points: Mapping[Point, float], paths: Sequence[str]) -> str:
    """The best combination in words, with its objective and how many were tried."""
    best = best_of(points)
    scales = ", ".join(f"{p}@{s:g}" for p, s in zip(paths, best, strict=True))
    return f"best: {scales} (objective {points[best]:.4f}, {len(points)} combinations tried)"
