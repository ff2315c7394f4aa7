"""zlab.strength's definitions and search decisions, checked against known curves (pure, no server)."""

from __future__ import annotations

import pytest

from zlab.core.request import LoRA, Request
from zlab.errors import ValidationError
from zlab.server import synthetic
from zlab.strength import measure
from zlab.strength.definitions import Probe, Thresholds, diagnose
from zlab.strength.search import SearchSpace, next_scale

SEEDS = (1, 2, 3)


def probe(scale: float, change: float | tuple[float, ...], detail: float | tuple[float, ...] = 1.0) -> Probe:
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,) * len(SEEDS)  # noqa: E731
    return Probe(scale, SEEDS, as_tuple(change), as_tuple(detail))


def ramp(onset: float, saturation: float, top: float = 0.2, overcook: float | None = None):
    """An analytic LoRA: change rises linearly from `onset` to `saturation`; detail halves past `overcook`."""

    def measure_at(scale: float) -> Probe:
        amount = min(1.0, max(0.0, (scale - onset) / (saturation - onset)))
        burnt = overcook is not None and scale > overcook
        seeds = tuple(top * amount * f for f in (0.9, 1.0, 1.1))  # seeds differ, as real ones do
        return Probe(scale, SEEDS, seeds, (0.4 if burnt else 1.0,) * 3)

    return measure_at


def search(measure_at, space: SearchSpace | None = None) -> list[Probe]:
    space = space or SearchSpace()
    probes = [Probe.baseline(SEEDS)]
    while (x := next_scale(probes, space)) is not None:
        assert all(abs(x - p.scale) > 1e-6 for p in probes), f"probed {x} twice"
        probes.append(measure_at(x))
    return probes


def test_definitions_read_onset_saturation_and_overcook_with_their_evidence():
    probes = [Probe.baseline(SEEDS), probe(0.5, 0.0), probe(0.75, 0.05), probe(1.0, 0.1), probe(1.5, 0.1)]
    probes.append(probe(2.0, 0.12, 0.3))
    d = diagnose(probes)
    assert d.onset is not None and (d.onset.lo, d.onset.hi) == (0.5, 0.75)
    assert d.saturation is not None and (d.saturation.lo, d.saturation.hi) == (0.75, 1.0)
    assert d.overcook is not None and (d.overcook.lo, d.overcook.hi) == (1.5, 2.0)
    assert "0.0500 at 0.75" in d.onset.evidence and "detail 0.300 at 2" in d.overcook.evidence
    assert d.usable_range == (0.75, 1.5) and not d.warnings
    assert any("saturation: ≥ 99% of the plateau" in line for line in d.lines())  # thresholds beside the answer


def test_a_change_within_the_seed_to_seed_noise_is_no_onset():
    noisy = probe(0.5, (0.0, 0.02, -0.001))  # mean 0.0063, but the seeds disagree: 2 SE ≈ 0.013
    d = diagnose([Probe.baseline(SEEDS), noisy, probe(1.0, 0.1)])
    assert d.onset is not None and d.onset.hi == 1.0
    assert diagnose([Probe.baseline(SEEDS), noisy], Thresholds(noise_k=0.5)).onset is not None


def test_a_lora_that_changes_nothing_is_flagged_with_the_numbers():
    d = diagnose([Probe.baseline(SEEDS), probe(0.5, 0.0), probe(1.0, 0.001), probe(2.0, 0.004)])
    assert d.does_nothing and d.onset is not None  # a tiny change at 2 still counts as acting there
    assert "change 0.0010 at scale 1" in d.warnings[0] and "trigger word" in d.warnings[0]
    assert not diagnose([Probe.baseline(SEEDS), probe(1.0, 0.05)]).does_nothing


@pytest.mark.parametrize("bad", [{"saturation_tol": 0}, {"overcook_drop": 1.5}, {"noise_floor": -1}])
def test_thresholds_are_checked(bad):
    with pytest.raises(ValidationError):
        Thresholds(**bad)


@pytest.mark.parametrize(
    "curve",
    [(0.1, 0.5, None), (0.3, 1.5, None), (0.62, 0.95, 1.4), (0.05, 1.9, None), (0.8, 1.2, 1.55), (0.33, 0.71, 1.01)],
)
def test_the_search_brackets_onset_and_saturation_on_analytic_ramps(curve):
    onset, saturation, overcook = curve
    probes = search(ramp(onset, saturation, overcook=overcook))
    space = SearchSpace()
    d = diagnose(probes)
    assert d.onset is not None and d.saturation is not None
    assert len(probes) - 1 <= space.probe_limit == 10  # a quarter of the 40 LoRA scales of a 0.05 grid
    assert d.onset.width <= space.precision + 1e-9  # the onset's bracket is closed first
    assert d.onset.lo <= onset + 0.002 < d.onset.hi + 0.01  # the noise floor puts the crossing just past it
    assert d.saturation.width <= 2 * space.precision and abs(d.saturation.value - saturation) <= 0.05
    if overcook is not None:
        assert d.overcook is not None and d.overcook.lo < overcook <= d.overcook.hi


def test_the_search_stops_at_once_for_a_lora_that_does_nothing():
    probes = search(lambda s: probe(s, 0.0))
    assert [p.scale for p in probes] == [0.0, 0.5, 1.0, 2.0]
    assert diagnose(probes).does_nothing


def test_search_space_is_checked_and_sizes_the_grid():
    assert SearchSpace(precision=0.05).grid_scales == 41 and SearchSpace(precision=0.1).probe_limit == 5
    with pytest.raises(ValidationError):
        SearchSpace(lo=1.0, hi=0.5)
    with pytest.raises(ValidationError):
        SearchSpace(coarse=(0.5, 3.0))


def render(path: str | None, scale: float, seed: int):
    return synthetic.render(
        Request("a fox in a wood", seed=seed, width=256, height=256, loras=[LoRA(path, scale)] if path else [])
    )


@pytest.mark.parametrize("index", [1, 7, 12, 21])
def test_the_search_finds_the_synthetic_backends_known_curve(index):
    """The images themselves, measured by the built-in measures: the answer matches `curve_of`."""
    path = f"owner/lora-{index}"
    truth = synthetic.curve_of(path)
    assert truth.onset is not None and truth.saturation is not None
    base = {s: render(None, 0, s) for s in SEEDS}

    def measure_at(x: float) -> Probe:
        ims = {s: render(path, x, s) for s in SEEDS}
        return Probe(
            x,
            SEEDS,
            tuple(measure.change(base[s], ims[s]) for s in SEEDS),
            tuple(measure.relative_detail(base[s], ims[s]) for s in SEEDS),
        )

    d = diagnose(search(measure_at))
    assert d.onset is not None and abs(d.onset.value - truth.onset) <= 0.05, (d.onset, truth)
    assert d.saturation is not None and abs(d.saturation.value - truth.saturation) <= 0.05, (d.saturation, truth)
    if truth.overcook is not None and truth.overcook < 1.9:
        assert d.overcook is not None and truth.overcook - 0.05 <= d.overcook.value <= truth.overcook + 0.15


def test_compass_search_walks_to_the_minimum_and_stops():
    from zlab.strength.combine import CompassSearch, best_of, next_point

    target = (0.3, 1.45, 0.9)
    search = CompassSearch((1.0, 1.0, 1.0), step=0.5, min_step=0.05)
    points: dict = {}
    while (p := next_point(points, search)) is not None:
        assert p not in points and all(0 <= s <= 2 for s in p)
        points[p] = sum((a - b) ** 2 for a, b in zip(p, target, strict=True))
    assert next(iter(points)) == (1.0, 1.0, 1.0)
    assert all(abs(a - b) <= 0.0625 for a, b in zip(best_of(points), target, strict=True))
    assert len(points) <= search.max_points
    capped = CompassSearch((1.0,), max_points=3)
    few: dict = {}
    while (p := next_point(few, capped)) is not None:
        few[p] = abs(p[0] - 0.2)
    assert len(few) == 3
    with pytest.raises(ValidationError):
        CompassSearch((1.0, 1.0, 1.0, 1.0))
