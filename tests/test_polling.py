"""The polling planner: its rules one by one, then every queue regime on a simulated clock.

The regimes run `zlab.testing.queuesim` (a discrete-event queue: no sleeping, no wall-clock timing), which
drives the same `Pacer` that `zlab.api.follow` drives over HTTP. Bounds are the targets of issue 12
with some headroom for the simulation's own discreteness; the ideal is the same jobs' makespan with
a client that notices every finish at once.
"""

import dataclasses

import pytest

from zlab.core.polling import Pacer, Poll, Track
from zlab.testing.queuesim import Scenario, ideal, simulate

EPOCH = 1.7e9  # the server's clock: the planner must map it onto the caller's


def finished_job(pacer: Pacer, sent: float, run: float, mp: float | None = None, seen_after: float = 0.002) -> Track:
    """A job submitted at `sent` (answered 2 ms later), seen running at once, finished after `run` s."""
    track = Track(sent + 0.002, sent=sent, megapixels=mp)
    pacer.register(track)
    pacer.saw(track, sent + 0.002, sent + 0.002 + seen_after, "running")
    created = EPOCH + sent + 0.001
    pacer.saw(
        track,
        sent + run + 0.01,
        sent + run + 0.012,
        "succeeded",
        endpoint="result",
        created=created,
        finished=created + run,
    )
    return track


def learned(run: float) -> Pacer:
    """A pacer that has seen two jobs of `run` seconds, the second started after the first ended."""
    pacer = Pacer()
    finished_job(pacer, 0.0, run)
    finished_job(pacer, run + 0.02, run)
    return pacer


# -- the rules -------------------------------------------------------------------------------------


def test_a_new_job_is_asked_where_it_stands_once():
    pacer, track = Pacer(), Track(10.0, sent=9.99)
    pacer.register(track)
    assert pacer.plan(track, 10.0).endpoint == "status" and pacer.plan(track, 10.0).at == 10.0


def test_before_anything_is_learned_one_job_probes_closely_the_rest_sparsely():
    pacer = Pacer()
    a, b = Track(0.0, sent=0.0), Track(0.0, sent=0.0)
    for t in (a, b):
        pacer.register(t)
        pacer.saw(t, 0.0, 0.001, "running")
    assert pacer.plan(a, 0.01).at == pytest.approx(0.2)  # the scout: +0.2 s, then every 50% of the time run
    pacer.saw(a, 0.2, 0.201, "running", endpoint="result")
    assert pacer.plan(a, 0.21).at == pytest.approx(0.3)
    assert pacer.plan(b, 0.01).at == pytest.approx(0.4)  # the others: twice as sparse


def test_run_time_comes_from_bounds_and_the_server_clock_is_mapped():
    pacer = Pacer()
    finished_job(pacer, 0.0, 0.5)
    est = pacer.estimate(None)
    assert est is not None and est.seconds == pytest.approx(0.5, abs=0.005)
    assert pacer.offset == pytest.approx(EPOCH, abs=0.002)


def test_queue_time_does_not_poison_the_run_time():
    """A job queued for 2 s behind others: its server span is 2.5 s, its run 0.5 s."""
    pacer = Pacer()
    finished_job(pacer, 0.0, 0.5)
    track = Track(1.0, sent=1.0)
    pacer.register(track)
    pacer.saw(track, 1.0, 1.002, "queued", 3)
    pacer.saw(track, 2.9, 2.902, "queued", 0)
    pacer.saw(track, 3.01, 3.012, "running")
    created = EPOCH + 1.001
    pacer.saw(track, 3.52, 3.522, "succeeded", endpoint="result", created=created, finished=EPOCH + 3.5)
    est = pacer.estimate(None)
    assert est is not None and est.seconds == pytest.approx(0.5, abs=0.01)


def test_a_running_job_is_asked_once_just_after_its_estimated_finish():
    pacer = learned(2.0)
    track = Track(10.0, sent=10.0)
    pacer.register(track)
    pacer.saw(track, 10.0, 10.002, "running")
    poll = pacer.plan(track, 10.5)
    assert poll.endpoint == "result" and 12.0 < poll.at < 12.0 + 0.05 * 2.0


def test_early_answers_follow_up_quickly_then_grow_within_a_cap():
    pacer = learned(10.0)
    track = Track(20.0, sent=20.0)
    pacer.register(track)
    pacer.saw(track, 20.0, 20.001, "running")
    gaps = []
    now = 30.2
    for _ in range(8):
        pacer.saw(track, now, now + 0.001, "running", endpoint="result")
        nxt = pacer.plan(track, now + 0.001).at
        gaps.append(nxt - now)
        now = nxt
    assert gaps[0] == pytest.approx(0.03 * 10.0)  # 3% of the run time
    assert gaps[1] == pytest.approx(gaps[0] * 1.5)
    assert all(g <= 0.1 * (20.0 + 10.0 * 2 - 20.0) for g in gaps)  # at most 10% of the time run so far


def test_only_the_first_queued_job_is_asked_again():
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    first, second = Track(2.0, sent=2.0), Track(2.0, sent=2.0)
    for t, pos in ((first, 0), (second, 1)):
        pacer.register(t)
        pacer.saw(t, 2.0, 2.001, "queued", pos)
    assert pacer.frontier() is first
    assert pacer.plan(second, 2.01).at >= 2.0 + pacer.stale_s  # behind the frontier: left alone
    at = pacer.plan(first, 2.01).at  # on a timer from its drain, within 0.1–0.5 of the run time
    assert 2.0 + 0.1 <= at <= 2.0 + 0.5 + 1e-9


def test_a_job_sent_behind_a_queued_one_is_not_asked_until_it_reaches_the_front():
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    first = Track(2.0, sent=2.0)
    pacer.register(first)
    pacer.saw(first, 2.0, 2.001, "queued", 3)
    later = Track(2.1, sent=2.09)  # sent after `first` was seen waiting: first come, first served
    pacer.register(later)
    assert later.phase == "queued" and later.polls == 0
    assert pacer.plan(later, 2.1).at >= 2.1 + pacer.stale_s  # not asked while `first` is the front...
    assert pacer.plan(later, 50.0) == pacer.plan(later, 2.1)  # ...but asked once it has waited that long anyway
    assert pacer.saw(first, 2.5, 2.501, "running")  # the front moved: everyone re-plans
    assert pacer.frontier() is later and pacer.plan(later, 2.502).endpoint == "status"


def test_a_job_collected_by_id_is_asked_even_behind_queued_ones():
    pacer = Pacer()
    first = Track(2.0, sent=2.0)
    pacer.register(first)
    pacer.saw(first, 2.0, 2.001, "queued", 0)
    resumed = Track(2.1)  # no submit of ours: it may have run long ago
    pacer.register(resumed)
    assert resumed.phase == "unknown" and pacer.plan(resumed, 2.1) == Poll(2.1, "status")


def test_far_from_the_front_the_frontier_is_asked_less_often():
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    near, far = Track(2.0, sent=2.0), Track(2.0, sent=2.0)
    pacer.register(near)
    pacer.saw(near, 2.0, 2.001, "queued", 1)
    pacer.saw(near, 2.5, 2.501, "queued", 0)  # one position per half second
    near_at = pacer.plan(near, 2.51).at
    other = Pacer()
    finished_job(other, 0.0, 1.0)
    other.register(far)
    other.saw(far, 2.0, 2.001, "queued", 9)
    other.saw(far, 2.5, 2.501, "queued", 8)  # the same drain, eight places further back
    far_at = other.plan(far, 2.51).at
    assert near_at <= 2.5 + 0.5 * 1.0 + 1e-9  # near the front: within half a run time
    assert far_at > 2.5 + 0.5 * 1.0 and far_at <= 2.5 + other.approach_max * 1.0 + 1e-9  # ~4.5 s away: later


def test_follow_ups_are_sized_to_how_much_run_times_vary():
    steady, jittery = Pacer(), Pacer()
    t = 0.0
    for run in (1.0, 1.0, 1.0, 1.0, 1.0):
        finished_job(steady, t, run)
        t += 1.1
    t = 0.0
    for run in (0.7, 1.3, 1.0, 0.8, 1.2):
        finished_job(jittery, t, run)
        t += 1.4
    gaps = []
    for pacer in (steady, jittery):
        track = Track(20.0, sent=20.0)
        pacer.register(track)
        pacer.saw(track, 20.0, 20.001, "running")
        est = pacer.estimate(None)
        assert est is not None
        due = pacer.plan(track, 20.01).at
        pacer.saw(track, due, due + 0.001, "running", endpoint="result")
        gaps.append(pacer.plan(track, due + 0.001).at - due)
    assert gaps[0] == pytest.approx(0.03, abs=0.005)  # a steady server: 3% of the run time
    assert gaps[1] >= 0.5 * 0.2  # a jittery one: no finer than half its spread (about 0.2 s here)


def test_a_finish_of_the_callers_asks_the_frontier_soon_after():
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    running, queued = Track(2.0, sent=2.0), Track(2.0, sent=2.0)
    for t in (running, queued):
        pacer.register(t)
    pacer.saw(running, 2.0, 2.001, "running")
    pacer.saw(queued, 2.0, 2.001, "queued", 0)
    assert pacer.plan(queued, 2.3).at > 2.3
    woke = pacer.saw(
        running, 3.02, 3.022, "succeeded", endpoint="result", created=EPOCH + 2.001, finished=EPOCH + 3.001
    )
    # Asked soon after the slot freed (at 3.001), once the burst of /result calls a finish brings is out.
    at = pacer.plan(queued, 3.023).at
    assert woke and 3.023 <= at <= 3.001 + 0.1 * 1.0 + 0.01
    pacer.saw(queued, at, at + 0.002, "running")
    assert queued.started == pytest.approx(3.001, abs=0.002)  # it took the slot that finish freed


def test_an_earlier_job_stays_the_frontier_though_a_later_one_reads_a_lower_position():
    """Read at different times, positions do not order jobs: first come, first served does."""
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    early, late = Track(2.0, sent=2.0), Track(5.0, sent=5.0)
    pacer.register(early)
    pacer.saw(early, 2.0, 2.001, "queued", 36)
    pacer.register(late)
    pacer.saw(late, 5.0, 5.001, "queued", 20)
    assert pacer.frontier() is early


def test_a_start_no_finish_explains_asks_the_next_job_at_once():
    """Other users' jobs ended (or the server grew): the next queued job may have started too."""
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    a, b = Track(2.0, sent=2.0), Track(2.0, sent=2.0)
    for t, pos in ((a, 4), (b, 5)):
        pacer.register(t)
        pacer.saw(t, 2.0, 2.001, "queued", pos)
    at = pacer.plan(a, 2.01).at
    pacer.saw(a, at, at + 0.002, "running")
    assert pacer.frontier() is b and pacer.plan(b, at + 0.003).at == at + 0.003


def test_positions_counted_from_one_are_recognised():
    pacer = Pacer()
    assert pacer.position_base == 0
    for i in range(3):
        t = Track(float(i), sent=float(i))
        pacer.register(t)
        pacer.saw(t, float(i), i + 0.001, "queued", 1)
        pacer.saw(t, i + 0.5, i + 0.501, "running")
    assert pacer.position_base == 1


def test_a_missing_position_never_makes_a_tight_loop():
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    track = Track(2.0, sent=2.0)
    pacer.register(track)
    now, calls = 2.0, 0
    while now < 12.0:  # ten run times queued, no position ever given
        pacer.saw(track, now, now + 0.002, "queued", None, endpoint="result")
        calls += 1
        now = pacer.plan(track, now + 0.002).at
    assert calls <= 10 / pacer.frontier_min  # at most one call per 0.1 run time (today ~500)


def test_a_failed_status_fetches_the_result_next():
    pacer, track = Pacer(), Track(0.0, sent=0.0)
    pacer.register(track)
    pacer.saw(track, 0.0, 0.001, "running")
    assert pacer.saw(track, 0.3, 0.301, "failed")
    assert pacer.plan(track, 0.302) == pacer.plan(track, 0.302) and pacer.plan(track, 0.302).endpoint == "result"


def test_each_image_size_has_its_own_run_time_and_unseen_sizes_are_extrapolated():
    pacer = Pacer()
    finished_job(pacer, 0.0, 0.3, mp=0.25)
    finished_job(pacer, 0.0, 0.7, mp=1.25)
    small, big = pacer.estimate(0.25), pacer.estimate(1.25)
    assert small is not None and big is not None and small.seconds < 0.32 and big.seconds > 0.68
    mid = pacer.estimate(0.75)
    assert mid is not None and mid.seconds == pytest.approx(0.5, abs=0.03) and not mid.confirmed


def test_a_cold_first_wave_is_forgotten_once_a_warm_job_disagrees():
    pacer = Pacer()
    for i in range(4):
        finished_job(pacer, i * 0.001, 5.0)
    warm = finished_job(pacer, 5.01, 0.5)
    assert warm.started is not None
    est = pacer.estimate(None)
    assert est is not None and est.confirmed and est.seconds == pytest.approx(0.5, abs=0.01)


def test_every_wait_is_bounded_and_planning_is_pure():
    pacer = Pacer()
    finished_job(pacer, 0.0, 1.0)
    track = Track(2.0, sent=2.0)
    pacer.register(track)
    pacer.saw(track, 2.0, 2.001, "queued", 40)
    assert pacer.plan(track, 2.1) == pacer.plan(track, 2.1)
    assert pacer.plan(track, 2.1).at <= 2.0 + 0.5 + 1e-9


# -- the regimes, on a simulated clock --------------------------------------------------------------

REGIMES = {
    "base": Scenario(),
    "other users 50%": Scenario(other_load=0.5),
    "other users 85%": Scenario(other_load=0.85),
    "autoscaling 4→8→16": Scenario(capacity=4, capacity_steps=((2.0, 8), (4.0, 16))),
    "cold first wave 10×": Scenario(cold_factor=10),
    "size-dependent": Scenario(base_s=0.1, per_mp_s=0.4, sizes=(0.26, 0.79, 1.0, 1.57)),
    "size-dependent, sizes in blocks": Scenario(base_s=0.1, per_mp_s=0.4, sizes=(0.26, 0.79, 1.0, 1.57), grouped=True),
    "1-based positions": Scenario(positions="1"),
    "no positions": Scenario(positions="missing"),
    "2 s jobs": Scenario(base_s=2.0),
}
# (wall/ideal, calls per image, median lag / run time) all queued at once
ALL_QUEUED = {
    "base": (1.15, 4.0, 0.10),
    "other users 50%": (1.15, 4.5, 0.10),
    "other users 85%": (1.15, 4.5, 0.10),
    "autoscaling 4→8→16": (1.2, 4.0, 0.10),
    "cold first wave 10×": (1.15, 4.0, 0.10),
    "size-dependent": (1.15, 4.5, 0.10),
    "size-dependent, sizes in blocks": (1.15, 4.5, 0.10),
    "1-based positions": (1.15, 4.0, 0.10),
    "no positions": (1.15, 4.0, 0.10),
    "2 s jobs": (1.15, 4.0, 0.10),
}


@pytest.mark.parametrize("name", list(REGIMES))
@pytest.mark.parametrize("seed", [0, 1])
def test_all_queued_stays_near_the_ideal_with_few_calls(name, seed):
    sc = dataclasses.replace(REGIMES[name], seed=seed)
    got = simulate(sc)
    wall, calls, lag = ALL_QUEUED[name]
    assert got.wall_s / ideal(sc) <= wall
    assert got.polls_per_image <= calls
    assert got.lag_fraction <= lag


@pytest.mark.parametrize("name", list(REGIMES))
@pytest.mark.parametrize("seed", [0, 3])
def test_concurrency_at_capacity_stays_within_a_quarter_of_the_ideal(name, seed):
    sc = dataclasses.replace(REGIMES[name], concurrency=REGIMES[name].capacity, seed=seed)
    got = simulate(sc)
    assert got.wall_s / ideal(sc) <= 1.25
    assert got.polls_per_image <= 6.5


def test_jitter_costs_calls_or_lag_but_stays_near_the_ideal():
    """σ = 0.3: ≤ 4 calls and ≤ 10% lag cannot both hold; the sweep still finishes near the ideal."""
    sc = Scenario(jitter=0.3)
    got = simulate(sc)
    assert got.wall_s / ideal(sc) <= 1.15
    assert got.polls_per_image <= 7 and got.lag_fraction <= 0.3


def test_a_caller_that_does_not_say_when_it_sent_still_learns_the_clock():
    sc = Scenario(other_load=0.5)
    got = simulate(sc, sent_known=False)
    assert got.wall_s / ideal(sc) <= 1.15 and got.polls_per_image <= 4.5 and got.lag_fraction <= 0.10


def test_zlab_beats_a_fixed_quarter_second_poller_on_calls_and_lag():
    sc = Scenario()
    ours, fixed = simulate(sc), simulate(sc, "fixed", interval=0.25)
    assert ours.polls_per_image < fixed.polls_per_image / 2
    assert ours.median_lag < fixed.median_lag


def test_listeners_hear_every_phase_change_and_nothing_else():
    pacer, heard = Pacer(), []
    pacer.listeners.append(lambda t: heard.append(t.phase))
    track = Track(1.0, sent=0.99)
    pacer.register(track)
    pacer.saw(track, 1.0, 1.01, "queued", 3)
    pacer.saw(track, 1.2, 1.21, "queued", 1)  # the same phase: no news for a limiter
    pacer.saw(track, 1.4, 1.41, "running")
    pacer.saw(track, 1.9, 1.91, "running", endpoint="result")  # an early answer
    pacer.saw(track, 2.0, 2.01, "succeeded", endpoint="result", created=EPOCH + 1.0, finished=EPOCH + 1.9)
    assert heard == ["queued", "running", "finished"]


def test_a_running_job_past_its_expected_end_is_overdue():
    pacer = learned(0.5)
    track = Track(10.0, sent=9.999)
    pacer.register(track)
    pacer.saw(track, 10.0, 10.001, "running")
    assert not pacer.overdue(track, 10.3)
    assert pacer.overdue(track, 10.6)
    assert not Pacer().overdue(track, 99.0)  # nothing learned: never assumed finished
