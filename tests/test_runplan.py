"""The run plan's decisions, table-driven (pure: no I/O)."""

from __future__ import annotations

import pytest

from zlab import errors
from zlab.core import runplan
from zlab.core.runplan import BUILTIN, CellView

HERE = "https://api.example"


@pytest.mark.parametrize(
    ("view", "options", "action"),
    [
        (CellView("succeeded", has_image=True, origin=HERE, request_id=True), {}, "done"),
        (CellView("planned", has_image=True), {}, "reuse"),
        # an image that does not decode is not "done": a paid job is fetched again by its id, never paid again
        (CellView("succeeded", has_image=False, origin=HERE, request_id=True), {}, "collect"),
        (CellView("succeeded", has_image=False, origin="https://other", request_id=True), {}, "send"),
        (CellView("succeeded", has_image=False, cached=True, origin="https://other", request_id=True), {}, "cache"),
        (CellView("succeeded", has_image=False), {}, "send"),
        (CellView("accepted", origin=HERE, request_id=True), {}, "collect"),
        (CellView("accepted", origin="https://other", request_id=True), {}, "elsewhere"),
        (CellView("accepted", origin=BUILTIN, request_id=True), {}, "send"),
        (CellView("unknown", origin=HERE), {}, "hold"),
        (CellView("unknown", origin=HERE), {"retry_unknown": True}, "send"),
        (CellView("lost", origin=HERE, request_id=True), {}, "hold"),
        (CellView("lost", origin=HERE, request_id=True), {"resend_lost": True}, "send"),
        (CellView("planned", cached=True), {}, "cache"),
        (CellView("failed"), {}, "send"),
        (CellView("cancelled"), {}, "send"),
    ],
)
def test_decide(view, options, action):
    assert runplan.decide(view, identity=HERE, **options) == action


@pytest.mark.parametrize(
    ("exc", "state", "stop"),
    [
        (errors.SubmitUnknownError("answer lost"), "unknown", None),
        (errors.AuthError("no", status_code=401), "planned", "token"),
        (errors.InsufficientBalance("empty", status_code=403, error_code=400002), "planned", "balance"),
        (errors.RateLimitedError("slow", status_code=429), "failed", None),
        (errors.TransportError("refused"), "failed", None),
    ],
)
def test_after_submit_error(exc, state, stop):
    nxt = runplan.after_submit_error(exc)
    assert (nxt.state, nxt.stop) == (state, stop)


def test_after_collect_error_keeps_paid_jobs_collectable_until_lost():
    lagging = errors.ProtocolError("finished but no image within 60 s")
    assert runplan.after_collect_error(lagging, 0).state == "accepted"
    assert runplan.after_collect_error(lagging, runplan.MAX_COLLECT_ATTEMPTS - 1).state == "lost"
    timeout = errors.WaitTimeout("late", request_id="r")
    assert runplan.after_collect_error(timeout, 0, timed_out_cancelled=True).state == "cancelled"
    assert runplan.after_collect_error(timeout, 99).state == "accepted"  # a timeout never makes a job lost


def test_a_job_found_cancelled_is_sent_again_once():
    assert runplan.after_outcome("cancelled", None, 0).state == "planned"
    assert runplan.after_outcome("cancelled", None, 1).state == "cancelled"
    assert runplan.after_outcome("failed", "oom", 0).state == "failed"
