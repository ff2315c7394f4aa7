"""Progress: counts by phase (queued at the server and running apart), throughput and ETA learned from
the finishes it sees, and a final state that stays in place."""

from __future__ import annotations

import io

from zlab.runs.progress import Progress, ProgressState, shown_in


def test_queued_and_running_are_counted_apart_and_waiting_is_the_rest():
    state = ProgressState(total=10, done=2)
    state.counts["succeeded"] = 2
    for _ in range(8):
        state.move(None, "queued")
    for _ in range(3):
        state.move("queued", "running")
    assert dict(state.parts()) == {"running": 3, "queued": 5, "succeeded": 2}
    state.move("queued", "waiting")  # the runner may hold some back before sending them
    text = state.text()
    assert text.startswith("zlab 2/10 · 3 running") and "4 queued" in text


def test_throughput_and_eta_come_from_observed_finishes():
    state = ProgressState(total=12, started=0.0)
    assert state.eta_s(now=1.0) is None  # nothing learned yet
    for t in (1.0, 2.0, 3.0, 4.0):
        state.move("running", "succeeded", finished=True, now=t)
    assert state.rate(now=4.0) == 1.0
    assert state.eta_s(now=4.0) == 8.0  # 8 left at one per second
    assert state.rate(now=7.0) == 0.5  # a stall since the last finish slows the estimate down
    assert "ETA 8 s" in state.text(now=4.0)


def test_close_leaves_the_final_state_as_html_and_text():
    out = io.StringIO()
    progress = Progress(total=3, done=1, enabled=True, file=out)  # not a terminal: counts without drawing
    progress.counts["succeeded"] = 1
    progress.counts["queued"] = 2
    progress.move("queued", "running")
    progress.move("running", "succeeded", finished=True)
    progress.move("queued", "failed", finished=True)
    progress.close()
    progress.close()  # idempotent
    assert out.getvalue() == ""
    html = progress._repr_html_()
    assert "zlab 3/3" in html and "1 failed" in html and "took" in html and "ETA" not in html
    assert "width:66.67%" in html and "width:33.33%" in html  # done and failed segments
    assert repr(progress).startswith("<Progress zlab 3/3")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_line_is_redrawn_in_place_and_ends_with_a_newline():
    out = Tty()
    progress = Progress(total=2, done=0, enabled=True, file=out)
    progress.counts["queued"] = 2
    progress.move("queued", "running")
    progress.move("running", "succeeded", finished=True)
    progress.move("queued", "succeeded", finished=True)
    progress.close()
    lines = out.getvalue()
    assert lines.startswith("\r") and lines.endswith("\n") and "zlab 2/2 · 2 succeeded" in lines


def test_a_widget_can_take_the_drawing_over():
    drawn: list[str] = []
    with shown_in(drawn.append):
        progress = Progress(total=1, done=0, enabled=True)
        progress.counts["queued"] = 1
        progress.move("queued", "succeeded", finished=True)
        progress.close()
    assert drawn and "zlab 1/1" in drawn[-1] and "took" in drawn[-1]
    after = Progress(total=1, done=0, enabled=True, file=io.StringIO())  # outside the block: not drawn there
    after.close()
    assert len([d for d in drawn if "took" in d]) == 1
