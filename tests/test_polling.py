"""The polling planner: one call for a job that runs as predicted, quick follow-ups when early."""

import itertools

import pytest

from zlab.polling import Pacer, Track, next_running_start


def test_probes_grow_until_something_is_learned():
    pacer, track = Pacer(), Track(submitted=100.0)
    waited = []
    for _ in range(6):
        poll = pacer.plan(track, 100.0 + (waited[-1] if waited else 0.0))
        waited.append(poll.at - 100.0)
        track.polls += 1
    assert poll.endpoint == "result" and waited[0] == pacer.first_probe_s
    # each probe waits 30% longer than the last: a job is noticed at most 30% of its run time late
    assert all(b == pytest.approx(a * pacer.probe_growth) for a, b in itertools.pairwise(waited))


def test_running_job_is_polled_just_after_its_predicted_finish():
    pacer = Pacer()
    pacer.learn(2.0)
    poll = pacer.plan(Track(submitted=10.0, phase="running", started=10.0), now=10.5)
    assert poll.endpoint == "result"
    assert 12.0 < poll.at < 12.0 + 0.05 * 2.0


def test_early_answers_follow_up_quickly_then_back_off():
    pacer = Pacer()
    pacer.learn(10.0)
    track = Track(submitted=0.0, phase="running", started=0.0, early=1)
    first = pacer.plan(track, now=10.2).at - 10.2
    track.early = 4
    later = pacer.plan(track, now=12.0).at - 12.0
    assert 0 < first < 1.0 and later > first and later <= pacer.max_gap_s


def test_queued_job_is_asked_once_at_its_predicted_finish():
    pacer = Pacer()
    pacer.learn(4.0)
    pacer.see_running(3)
    track = Track(submitted=0.0, phase="queued", position=1, position_at=1.0)
    poll = pacer.plan(track, now=1.0, running_starts=[0.0, 0.5, 1.0])  # these free at 4, 4.5 and 5
    assert poll.endpoint == "result" and poll.start == 4.5  # the second slot to free is its
    assert poll.at == pytest.approx(4.5 + 4.0 * 1.01 + 0.005)
    track.position = 4  # beyond the running jobs: it waits for a slot to come round again
    assert pacer.plan(track, now=1.0, running_starts=[0.0, 0.5, 1.0]).start == 4.5 + 4.0


def test_slots_the_caller_cannot_see_are_spread_over_one_run():
    pacer = Pacer(slots=4)
    pacer.learn(2.0)
    # No running job of its own in sight: four busy slots free at 0.5, 1, 1.5 and 2 s after the read.
    assert [pacer.start_estimate(p, 10.0, []) for p in range(5)] == [10.5, 11.0, 11.5, 12.0, 12.5]


def test_a_slot_due_before_the_position_was_read_is_already_taken_over():
    pacer = Pacer(slots=1)
    pacer.learn(1.0)
    assert pacer.start_estimate(0, read_at=5.2, running_starts=[4.0]) == 6.0  # due at 5.0: taken over, frees at 6


def test_finished_jobs_tell_when_slots_freed_even_after_they_are_gone():
    """A queue position read at 0.36 s, re-planned after the jobs then running have finished at 0.57 s."""
    pacer = Pacer(slots=4)
    pacer.learn(0.5)
    for _ in range(4):
        pacer.finished(0.07, 0.57)
    assert [pacer.start_estimate(p, 0.36) for p in (0, 3, 4)] == pytest.approx([0.57, 0.57, 1.07])
    queued = Track(submitted=0.07, phase="queued", position=2, position_at=0.36, last_poll=0.36)
    assert next_running_start(queued, now=0.9, pacer=pacer) == 0.57  # seen running: it took a freed slot


def test_a_queued_answer_without_position_asks_status_at_once():
    pacer = Pacer()
    pacer.learn(1.0)
    poll = pacer.plan(Track(submitted=0.0, phase="queued"), now=3.0)
    assert poll.endpoint == "status" and poll.at < 3.05


def test_queued_jobs_wait_for_the_first_finish_instead_of_probing():
    pacer = Pacer()
    queued = Track(submitted=0.0, phase="queued", position=3, position_at=0.3, polls=1)
    assert pacer.plan(queued, now=0.3, running_starts=[0.0, 0.0]).at == 0.3 + pacer.max_gap_s
    assert pacer.plan(queued, now=0.3).at < 1.0  # alone, it probes


def test_every_wait_is_capped():
    pacer = Pacer(max_gap_s=5.0)
    pacer.learn(100.0)
    assert pacer.plan(Track(submitted=0.0, phase="running", started=0.0), now=1.0).at == 6.0
    queued = Track(submitted=0.0, phase="queued", position=50, position_at=1.0)
    assert pacer.plan(queued, now=1.0).at == 6.0


def test_learning_is_an_average_that_ignores_nonsense():
    pacer = Pacer(alpha=0.5)
    pacer.learn(2.0)
    pacer.learn(4.0)
    pacer.learn(-1.0)
    assert pacer.run_s == 3.0 and pacer.samples == 2
