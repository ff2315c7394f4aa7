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

DECISIONS = [
    # (state, has_image, cached, origin, retry_unknown, resend_lost) → action
    (("succeeded", True, False, HERE, False, False), "done"),
    (("succeeded", False, False, HERE, False, False), "send"),  # its image is gone: make it again
    (("failed", True, False, HERE, False, False), "reuse"),  # an image for the key is already here
    (("accepted", False, False, HERE, False, False), "collect"),
    (("accepted", False, True, HERE, False, False), "collect"),  # paid: collected, not copied from the cache
    (("accepted", False, False, "https://other.example", False, False), "elsewhere"),
    (("accepted", False, False, BUILTIN, False, False), "send"),  # that server stopped with its run: not billed
    (("unknown", False, False, HERE, False, False), "hold"),
    (("unknown", False, False, HERE, True, False), "send"),
    (("unknown", False, False, BUILTIN, False, False), "send"),
    (("unknown", False, True, HERE, False, False), "cache"),
    (("lost", False, False, HERE, False, False), "hold"),
    (("lost", False, False, HERE, False, True), "send"),
    (("planned", False, False, None, False, False), "send"),
    (("planned", False, True, None, False, False), "cache"),
    (("failed", False, False, HERE, False, False), "send"),
    (("cancelled", False, False, HERE, False, False), "send"),
]


@pytest.mark.parametrize(("given", "action"), DECISIONS, ids=[f"{g[0]}-{a}" for g, a in DECISIONS])
def test_decide(given, action):
    state, has_image, cached, origin, retry_unknown, resend_lost = given
    view = CellView(state, has_image, cached, origin)
    assert runplan.decide(view, identity=HERE, retry_unknown=retry_unknown, resend_lost=resend_lost) == action


def test_the_builtin_server_never_collects_a_job_of_an_earlier_run():
    view = CellView("accepted", origin=BUILTIN)
    assert runplan.decide(view, identity=BUILTIN) == "send"


SUBMIT_ERRORS = [
    (errors.SubmitUnknownError("gateway timeout after the body left"), "unknown", None),
    (errors.AuthError("refused", status_code=401), "planned", "token"),
    (errors.InsufficientBalance("empty", status_code=402), "planned", "balance"),
    (errors.RateLimitedError("slow down", status_code=429), "failed", None),
    (errors.TransportError("no route"), "failed", None),
    (errors.ValidationError("width", 250, "256..1536"), "failed", None),
]


@pytest.mark.parametrize(("exc", "state", "stop"), SUBMIT_ERRORS, ids=[type(e[0]).__name__ for e in SUBMIT_ERRORS])
def test_after_submit_error(exc, state, stop):
    nxt = runplan.after_submit_error(exc)
    assert (nxt.state, nxt.stop) == (state, stop)
    assert nxt.reason and nxt.error


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


def test_a_job_found_cancelled_is_sent_again_once():
    first = runplan.after_outcome("cancelled", None, resends=0)
    second = runplan.after_outcome("cancelled", None, resends=runplan.MAX_RESENDS_AFTER_CANCEL)
    assert (first.state, second.state) == ("planned", "cancelled")
    assert runplan.after_outcome("failed", "out of memory", 0).state == "failed"


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
