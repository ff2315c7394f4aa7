"""The run plan's decisions, table-driven: what a run does with each cell, and where a cell goes after each event.

These are the money rule's pure core: every row is a promise (a paid job is never sent again on its own, a job
that may exist is never resent, a refused token stops the sending), checked without a server.
"""

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
        (CellView("accepted", cached=True, origin=HERE, request_id=True), {}, "collect"),  # paid: never copied
        (CellView("unknown", origin=BUILTIN), {}, "send"),  # the built-in server bills nothing
        # accepted with no id on record (a local failure mid-submit): it may be paid, so it is held, never resent
        (CellView("accepted", origin=HERE, request_id=False), {}, "hold"),
        (CellView("accepted", origin=HERE, request_id=False), {"retry_unknown": True}, "send"),
        (CellView("unknown", cached=True, origin=HERE), {}, "cache"),
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


def test_the_builtin_server_never_collects_a_job_of_an_earlier_run():
    view = CellView("accepted", origin=BUILTIN)
    assert runplan.decide(view, identity=BUILTIN) == "send"


def test_a_collect_failure_keeps_the_paid_job_until_too_many_tries():
    exc = errors.DownloadError("connection reset while reading the image")
    states = [runplan.after_collect_error(exc, attempts).state for attempts in range(runplan.MAX_COLLECT_ATTEMPTS)]
    assert states == ["accepted"] * (runplan.MAX_COLLECT_ATTEMPTS - 1) + ["lost"]
    assert "--resend-lost" in runplan.after_collect_error(exc, runplan.MAX_COLLECT_ATTEMPTS).error


@pytest.mark.parametrize(
    "exc",
    [errors.WaitTimeout("still running"), errors.RateLimitedError("later", status_code=429)],
    ids=["timeout", "rate-limit"],
)
def test_waiting_longer_never_counts_as_a_failed_collection(exc):
    nxt = runplan.after_collect_error(exc, runplan.MAX_COLLECT_ATTEMPTS + 3)
    assert nxt.state == "accepted" and not nxt.count_attempt


def test_a_timed_out_job_cancelled_while_queued_is_not_billed():
    nxt = runplan.after_collect_error(errors.WaitTimeout("queued too long"), 0, timed_out_cancelled=True)
    assert nxt.state == "cancelled" and "not billed" in nxt.error


@pytest.mark.parametrize("budget", [-1, float("nan"), float("inf"), "ten"])
def test_a_budget_must_be_a_finite_number(budget):
    with pytest.raises(errors.ValidationError) as caught:
        runplan.check_budget(0.0, budget, 0)
    assert caught.value.field == "budget"


def test_a_run_over_budget_is_refused_before_anything_is_sent():
    runplan.check_budget(0.5, 0.5, 10)  # at the budget: allowed
    with pytest.raises(errors.BudgetExceeded, match=r"over the budget of \$0\.40"):
        runplan.check_budget(0.5, 0.4, 10)


def test_reasons_are_tallied_by_state_most_common_first():
    rows = [("failed", "token refused (403)"), ("failed", "token refused (403)"), ("failed", "oom"),
            ("succeeded", None), ("planned", "no balance (402)"), ("unknown", None)]  # fmt: skip
    text = runplan.tally_reasons(rows)
    assert text == (
        "3 failed: token refused (403) ×2, oom ×1; 1 unknown: no reason recorded ×1; 1 not sent: no balance (402) ×1"
    )
