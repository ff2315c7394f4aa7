"""Onset, saturation and overcook, defined on measurements a person can check. Pure: no images, no I/O.

A LoRA is probed at a few scales, each over a few seeds; every image is compared with the no-LoRA
baseline image of the same prompt, seed and size:

- **change**: how far the image moved from its baseline (by default the mean absolute pixel
  difference, RGB in 0..1; see `zlab.strength.measure`);
- **detail**: the image's fine detail relative to its baseline's (1 = as detailed as the baseline);
  a quality proxy that falls when a LoRA overcooks into mush.

From those, with every threshold a field of `Thresholds`:

- **onset**: the smallest scale whose mean change over seeds clears the noise, i.e. exceeds both
  `noise_floor` (what two renders of the same settings differ by) and `noise_k` standard errors of
  the change across seeds;
- **saturation**: the smallest scale whose mean change reaches `1 - saturation_tol` of the plateau
  (the largest mean change at scales not overcooked): past it the change stops growing;
- **overcook**: the smallest scale whose mean detail falls below `1 - overcook_drop` of its best at
  any lower scale;
- **does nothing**: the mean change at scale 1 (or the nearest probe) is below `inert_change`.

Each answer is an interval (lo, hi]: `hi` is the first probed scale that shows the property and
`lo` the probe just below it (which does not); its `value` is the midpoint.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from zlab.errors import ValidationError

Name = Literal["onset", "saturation", "overcook"]


@dataclass(frozen=True)
class Thresholds:
    """The parameters of the definitions (see the module docstring); shown beside every answer."""

    noise_floor: float = 0.002
    noise_k: float = 2.0
    saturation_tol: float = 0.01
    overcook_drop: float = 0.35
    inert_change: float = 0.01

    def __post_init__(self) -> None:
        for name in ("noise_floor", "noise_k", "inert_change"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValidationError(name, value, "a number ≥ 0")
        for name in ("saturation_tol", "overcook_drop"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1:
                raise ValidationError(name, value, "a number between 0 and 1")

    def describe(self) -> str:
        """One line with every threshold, to print beside an answer."""
        return (
            f"onset: mean change > max({self.noise_floor:g}, {self.noise_k:g}×SE over seeds); "
            f"saturation: ≥ {1 - self.saturation_tol:.0%} of the plateau; "
            f"overcook: detail < {1 - self.overcook_drop:.0%} of its best; "
            f"does nothing: change at scale 1 < {self.inert_change:g}"
        )


@dataclass(frozen=True)
class Probe:
    """One scale's measurements, one value per seed (in `seeds` order)."""

    scale: float
    seeds: tuple[int, ...]
    change: tuple[float, ...]
    detail: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.seeds) == len(self.change) == len(self.detail)) or not self.seeds:
            raise ValidationError("probe", self.scale, "one change and one detail value per seed (at least one seed)")

    @classmethod
    def baseline(cls, seeds: Sequence[int]) -> Probe:
        """Scale 0: the baseline itself (no change, full detail)."""
        n = len(seeds)
        return cls(0.0, tuple(seeds), (0.0,) * n, (1.0,) * n)

    @property
    def mean_change(self) -> float:
        return statistics.fmean(self.change)

    @property
    def change_se(self) -> float:
        """Standard error of the mean change across seeds (0 with one seed)."""
        n = len(self.change)
        return statistics.stdev(self.change) / math.sqrt(n) if n > 1 else 0.0

    @property
    def mean_detail(self) -> float:
        return statistics.fmean(self.detail)


@dataclass(frozen=True)
class Finding:
    """Where a property starts: between `lo` (does not show it) and `hi` (the first probe that does)."""

    name: Name
    lo: float
    hi: float
    evidence: str

    @property
    def value(self) -> float:
        return (self.lo + self.hi) / 2

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def __str__(self) -> str:
        return f"{self.name} in ({self.lo:g}, {self.hi:g}] ≈ {self.value:.3f}: {self.evidence}"


@dataclass(frozen=True)
class Diagnosis:
    """What the probes say about one LoRA: each finding (None where not seen), warnings, the evidence."""

    onset: Finding | None
    saturation: Finding | None
    overcook: Finding | None
    warnings: tuple[str, ...]
    probes: tuple[Probe, ...] = field(repr=False)
    thresholds: Thresholds = field(repr=False)

    @property
    def does_nothing(self) -> bool:
        return any(w.startswith("does nothing") for w in self.warnings)

    @property
    def usable_range(self) -> tuple[float, float] | None:
        """From the onset to the last scale before overcook (or the saturation when it never overcooks)."""
        if self.onset is None:
            return None
        top = self.overcook.lo if self.overcook else (self.saturation.hi if self.saturation else self.probes[-1].scale)
        return (self.onset.hi, max(self.onset.hi, top))

    def lines(self) -> list[str]:
        """The diagnosis as text: findings, warnings, then the thresholds used."""
        out = [str(f) if f else f"{name}: not seen in the probed range" for name, f in self.findings()]
        out += [f"warning: {w}" for w in self.warnings]
        out.append(f"definitions: {self.thresholds.describe()}")
        return out

    def findings(self) -> list[tuple[str, Finding | None]]:
        """(name, finding or None) for onset, saturation and overcook, in that order."""
        return [("onset", self.onset), ("saturation", self.saturation), ("overcook", self.overcook)]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def clears_noise(probe: Probe, t: Thresholds) -> bool:
    """Does this probe's mean change clear the noise (the onset test)?"""
    return probe.mean_change > max(t.noise_floor, t.noise_k * probe.change_se)


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def overcook_of(probes: Sequence[Probe], t: Thresholds) -> Finding | None:
    """The first probe whose mean detail falls below (1 - drop) of the best at lower scales."""
    ordered = sorted(probes, key=lambda p: p.scale)
    best = ordered[0] if ordered else None
    for prev, p in itertools.pairwise(ordered):
        assert best is not None
        if p.mean_detail < (1 - t.overcook_drop) * best.mean_detail:
            why = (
                f"detail {p.mean_detail:.3f} at {p.scale:g} (seeds {_fmt(p.detail)}) < "
                f"{1 - t.overcook_drop:.0%} of {best.mean_detail:.3f} at {best.scale:g}"
            )
            return Finding("overcook", prev.scale, p.scale, why)
        best = p if p.mean_detail > best.mean_detail else best
    return None


def plateau_of(probes: Sequence[Probe], overcook: Finding | None) -> Probe | None:
    """The probe with the largest mean change among those not overcooked."""
    safe = [p for p in probes if overcook is None or p.scale <= overcook.lo]
    return max(safe, key=lambda p: p.mean_change, default=None)


def saturation_level(plateau: Probe, t: Thresholds) -> float:
    return (1 - t.saturation_tol) * plateau.mean_change


def diagnose(probes: Sequence[Probe], thresholds: Thresholds | None = None) -> Diagnosis:
    """Onset, saturation, overcook and warnings from probes (any order; include `Probe.baseline`)."""
    t = thresholds or Thresholds()
    ordered = tuple(sorted(probes, key=lambda p: p.scale))
    if not ordered:
        raise ValidationError("probes", [], "at least one probe")
    overcook = overcook_of(ordered, t)
    safe = [p for p in ordered if overcook is None or p.scale <= overcook.lo]
    onset = None
    for prev, p in itertools.pairwise(safe):
        if clears_noise(p, t):
            why = (
                f"change {p.mean_change:.4f} at {p.scale:g} (seeds {_fmt(p.change)}) > "
                f"noise {max(t.noise_floor, t.noise_k * p.change_se):.4f}; {prev.mean_change:.4f} at {prev.scale:g}"
            )
            onset = Finding("onset", prev.scale, p.scale, why)
            break
    saturation = None
    plateau = plateau_of(ordered, overcook)
    if onset is not None and plateau is not None:
        level = saturation_level(plateau, t)
        for prev, p in itertools.pairwise(safe):
            if p.scale >= onset.hi and p.mean_change >= level:
                why = (
                    f"change {p.mean_change:.4f} at {p.scale:g} ≥ {1 - t.saturation_tol:.0%} of the plateau "
                    f"{plateau.mean_change:.4f} (at {plateau.scale:g}); {prev.mean_change:.4f} at {prev.scale:g}"
                )
                saturation = Finding("saturation", prev.scale, p.scale, why)
                break
    warnings = []
    near_one = min(ordered[1:] or ordered, key=lambda p: (abs(p.scale - 1.0), -p.scale))
    if near_one.mean_change < t.inert_change:
        warnings.append(
            f"does nothing: change {near_one.mean_change:.4f} at scale {near_one.scale:g} "
            f"(seeds {list(near_one.seeds)}: {_fmt(near_one.change)}) < {t.inert_change:g}; "
            "is the LoRA loaded (keys matched), made for this base model, and its trigger word in the prompt?"
        )
    if overcook is not None and onset is not None and overcook.hi <= onset.hi:
        warnings.append(f"overcooks ({overcook.hi:g}) before it starts to act ({onset.hi:g})")
    return Diagnosis(onset, saturation, overcook, tuple(warnings), ordered, t)
