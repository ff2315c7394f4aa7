"""The polling planner: one call for a job that runs as predicted, quick follow-ups when early."""

from zlab.polling import Pacer, Track


def test_probes_grow_until_something_is_learned():
    pacer, track = Pacer(), Track(submitted=100.0)
    times = []
    for _ in range(4):
        poll = pacer.plan(track, times[-1] if times else 100.0)
        times.append(poll.at)
        track.polls += 1
    gaps = [b - a for a, b in zip([100.0, *times], times, strict=False)]
    assert gaps == sorted(gaps) and poll.endpoint == "result"


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


def test_queued_job_is_asked_when_the_job_ahead_should_finish():
    pacer = Pacer()
    pacer.learn(4.0)
    track = Track(submitted=0.0, phase="queued", position=1)
    poll = pacer.plan(track, now=1.0, running_finishes=[4.0, 4.5, 5.0])
    assert poll.endpoint == "status" and poll.at == 4.5
    track.position = 4  # beyond the running jobs: a second wave
    assert pacer.plan(track, now=1.0, running_finishes=[4.0, 4.5, 5.0]).at == 4.5 + 4.0


def test_learning_is_an_average_that_ignores_nonsense():
    pacer = Pacer(alpha=0.5)
    pacer.learn(2.0)
    pacer.learn(4.0)
    pacer.learn(-1.0)
    assert pacer.run_s == 3.0 and pacer.samples == 2
