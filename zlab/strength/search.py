"""The adaptive scale search's decisions: which scale to probe next, given what the probes showed. Pure.

A grid finds where a LoRA starts to act to within a step h by rendering every multiple of h. The search
renders a few coarse scales, then closes each bracket the definitions name (`zlab.strength.definitions`)
to width h. On the rising part of the curve (the "ramp") the change to the baseline is close to linear
in the scale, so a line through the two ramp probes nearest the crossing predicts it; the search probes
just either side of the prediction (±0.45 h), which closes the bracket in two probes when the line is
right, and each probe still shrinks the bracket when it is not. With no two ramp probes it bisects.

Order: the coarse scales; while the plateau (read below any overcook) rests on one probe, the overcook
bracket by bisection to an eighth of the range; with fewer than two ramp probes, the saturation bracket
by bisection (its midpoint often lands on the ramp); the onset; the saturation; with probes to spare, the
overcook to `overcook_precision`. The search stops at `probe_limit` LoRA scales, with the brackets it
has (their widths say the precision reached).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zlab.errors import ValidationError
from zlab.strength.definitions import (
    Probe,
    Thresholds,
    clears_noise,
    diagnose,
    overcook_of,
    plateau_of,
    saturation_level,
)

_EPS = 1e-9


@dataclass(frozen=True)
class SearchSpace:
    """Where and how finely to search: scales in [lo, hi], brackets closed to `precision`."""

    lo: float = 0.0
    hi: float = 2.0
    precision: float = 0.05
    overcook_precision: float = 0.1
    coarse: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_probes: int | None = None

    def __post_init__(self) -> None:
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (self.lo, self.hi))
        if not (numbers and 0 <= self.lo < self.hi <= 4):
            raise ValidationError("range", [self.lo, self.hi], "two scales 0 ≤ lo < hi ≤ 4 (the model's range)")
        if not (isinstance(self.precision, int | float) and 0 < self.precision <= self.hi - self.lo):
            raise ValidationError("precision", self.precision, f"a step > 0 and ≤ {self.hi - self.lo:g}")
        if not self.overcook_precision > 0:
            raise ValidationError("overcook_precision", self.overcook_precision, "a step > 0")
        if not self.coarse or any(not isinstance(c, int | float) or not self.lo < c <= self.hi for c in self.coarse):
            raise ValidationError("coarse", list(self.coarse), f"scales in ({self.lo:g}, {self.hi:g}]")
        if self.max_probes is not None and (not isinstance(self.max_probes, int) or self.max_probes < len(self.coarse)):
            raise ValidationError("max_probes", self.max_probes, f"at least the {len(self.coarse)} coarse scales")

    @property
    def grid_scales(self) -> int:
        """How many scales a grid at this precision renders (both ends included)."""
        return round((self.hi - self.lo) / self.precision) + 1

    @property
    def probe_limit(self) -> int:
        """LoRA scales the search may probe: `max_probes`, else a quarter of the grid's scales above lo."""
        return self.max_probes if self.max_probes is not None else max(len(self.coarse), (self.grid_scales - 1) // 4)


def _line_at(a: Probe, b: Probe, level: float) -> float | None:
    """Where the line through two probes' mean changes reaches `level` (None if it is flat)."""
    slope = (b.mean_change - a.mean_change) / (b.scale - a.scale)
    if slope <= 0:
        return None
    return a.scale + (level - a.mean_change) / slope


def _close(lo: float, hi: float, estimate: float | None, h: float, taken: set[float]) -> float | None:
    """The next probe inside the bracket (lo, hi], or None once it is h wide (or cannot shrink)."""
    if hi - lo <= h + _EPS:
        return None
    x = (lo + hi) / 2
    if estimate is not None:
        below, above = estimate - 0.45 * h, estimate + 0.45 * h
        if above >= hi - _EPS:
            x = below
        elif below <= lo + _EPS:
            x = above
        else:  # probe on the side of the prediction where the bracket is wider: it closes it next
            x = above if hi - estimate > estimate - lo else below
        margin = min(0.1 * h, (hi - lo) / 4)
        x = min(max(x, lo + margin), hi - margin)
    x = round(x, 3)
    if x in taken or not lo < x < hi:
        x = round((lo + hi) / 2, 3)
    return None if x in taken or not lo < x < hi else x


def next_scale(probes: Sequence[Probe], space: SearchSpace, thresholds: Thresholds | None = None) -> float | None:
    """The next LoRA scale to probe (rendered over the same seeds), or None when the search is done.

    `probes` holds every probe so far, including `Probe.baseline` at scale 0.
    """
    t = thresholds or Thresholds()
    taken = {round(p.scale, 3) for p in probes}
    used = sum(1 for p in probes if p.scale > 0)
    for c in space.coarse:
        if round(c, 3) not in taken:
            return round(c, 3)
    if used >= space.probe_limit:
        return None
    ordered = sorted(probes, key=lambda p: p.scale)
    if not any(clears_noise(p, t) for p in ordered):
        return None  # it does nothing anywhere in the range: nothing to bracket
    overcook = overcook_of(ordered, t)
    safe = [p for p in ordered if overcook is None or p.scale <= overcook.lo]
    plateau = plateau_of(ordered, overcook)
    if plateau is None:
        return None
    level = saturation_level(plateau, t)
    ramp = [p for p in safe if clears_noise(p, t) and p.mean_change < level]
    eighth = (space.hi - space.lo) / 8
    if overcook is not None and overcook.width > eighth and not _plateau_seen(safe, level):
        # The plateau is read below the overcook: a wide overcook bracket may hide it, so narrow it first.
        return _close(overcook.lo, overcook.hi, None, eighth, taken)
    found = diagnose(ordered, t)
    onset, saturation = found.onset, found.saturation
    if len(ramp) < 2 and saturation is not None:
        # One point on the ramp gives no line: halve the saturation bracket, which also lands on the ramp
        # when it is long, and so gives both searches their line.
        x = _close(saturation.lo, saturation.hi, None, space.precision, taken)
        if x is not None:
            return x
    if onset is not None:
        est = _line_at(ramp[0], ramp[1], t.noise_floor) if len(ramp) >= 2 else None
        x = _close(onset.lo, onset.hi, est, space.precision, taken)
        if x is not None:
            return x
    if saturation is not None:
        est = _line_at(ramp[-2], ramp[-1], level) if len(ramp) >= 2 else None
        x = _close(saturation.lo, saturation.hi, est, space.precision, taken)
        if x is not None:
            return x
    if overcook is not None:  # with probes to spare, the overcook to its own precision
        return _close(overcook.lo, overcook.hi, None, space.overcook_precision, taken)
    return None


def _plateau_seen(safe: Sequence[Probe], level: float) -> bool:
    """Do at least two probes below the overcook reach the saturation level (the change stopped growing)?"""
    return sum(1 for p in safe if p.mean_change >= level) >= 2
