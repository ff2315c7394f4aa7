"""`follow`, the async waiting loop, against a small in-memory API (the `api` argument is its seam)."""

import asyncio
import collections
import datetime
import time

import pytest

from zlab import errors
from zlab.api.follow import follow
from zlab.core.polling import Pacer, Track
from zlab.core.protocol import Outcome, Status


class ScriptedAPI:
    """One job: queued for `queued_s` (positions given or not), then running for `run_s`, then done."""

    def __init__(self, queued_s: float, run_s: float, *, positions: bool = True, fail: bool = False) -> None:
        self.created = time.monotonic()
        self.queued_s, self.run_s, self.positions, self.fail = queued_s, run_s, positions, fail
        self.calls: collections.Counter[str] = collections.Counter()

    def _phase(self) -> str:
        age = time.monotonic() - self.created
        return "queued" if age < self.queued_s else "running" if age < self.queued_s + self.run_s else "done"

    async def status(self, request_id: str) -> Status:
        self.calls["status"] += 1
        phase = self._phase()
        if phase == "done":
            return Status("failed" if self.fail else "completed")
        return Status(phase, 0 if phase == "queued" and self.positions else None)  # type: ignore[arg-type]

    async def result(self, request_id: str) -> Outcome:
        self.calls["result"] += 1
        phase = self._phase()
        if phase != "done":
            return Outcome(phase)  # type: ignore[arg-type]  # "not ready": no position
        wall = datetime.datetime.now(datetime.UTC)
        span = datetime.timedelta(seconds=self.queued_s + self.run_s)
        if self.fail:
            return Outcome("failed", error="Model run failed", created_at=wall - span, finished_at=wall)
        return Outcome("succeeded", ("http://x/a.png",), created_at=wall - span, finished_at=wall)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_follow_returns_the_finished_outcome_and_forgets_the_job():
    api, pacer = ScriptedAPI(0.0, 0.15), Pacer()
    track = Track(time.monotonic(), sent=api.created)
    outcome = run(follow(api, "r1", track, pacer, deadline=time.monotonic() + 10))  # type: ignore[arg-type]
    assert outcome.phase == "succeeded" and outcome.outputs
    assert not pacer.live and pacer.estimate(None) is not None
    assert api.calls["status"] + api.calls["result"] <= 6


def test_follow_raises_wait_timeout_at_its_deadline():
    api, pacer = ScriptedAPI(0.0, 30.0), Pacer()
    track = Track(time.monotonic())
    with pytest.raises(errors.WaitTimeout):
        run(follow(api, "r2", track, pacer, deadline=time.monotonic() + 0.3))  # type: ignore[arg-type]
    assert not pacer.live


def test_queued_without_positions_costs_few_calls():
    """Missing positions used to mean a 20 ms re-poll loop; now the frontier's timer paces it."""
    api, pacer = ScriptedAPI(0.6, 0.1, positions=False), Pacer()
    track = Track(time.monotonic(), sent=api.created)
    outcome = run(follow(api, "r3", track, pacer, deadline=time.monotonic() + 10))  # type: ignore[arg-type]
    assert outcome.phase == "succeeded"
    assert api.calls["status"] + api.calls["result"] <= 12


def test_a_failed_status_fetches_the_result():
    api, pacer = ScriptedAPI(0.0, 0.05, fail=True), Pacer()
    track = Track(time.monotonic(), sent=api.created)
    outcome = run(follow(api, "r4", track, pacer, deadline=time.monotonic() + 10))  # type: ignore[arg-type]
    assert outcome.phase == "failed" and outcome.error == "Model run failed"
