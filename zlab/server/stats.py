"""What the local server saw: calls, faults, accepted submits, each job's times, token leaks to file hosts.

`Stats` is safe to read from any thread while the server runs; every accessor returns a copy. Tests
use it to assert the money rules ("each request key accepted at most once", "no token sent to a file
host", "this many jobs cancelled"); benchmarks use `JobTimes` to compute the ideal makespan and how
late a client noticed each finish.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any, Literal

from zlab.core.request import MODEL_ID, request_key

JobState = Literal["in_queue", "in_progress", "succeeded", "failed", "cancelled"]


@dataclasses.dataclass(frozen=True)
class Submission:
    """One accepted submit: its id, the input as sent (every field explicit) and who sent it."""

    request_id: str
    input: Mapping[str, Any]
    token_hash: str | None
    at: float  # time.time() when it was accepted

    @property
    def key(self) -> str:
        """The request key (as `zlab.Request.key`) of the input, for "accepted exactly once" checks."""
        return request_key(MODEL_ID, self.input)


@dataclasses.dataclass(frozen=True)
class JobTimes:
    """A job's state and times: wall clock (`time.time()`) and, for finishing, `time.monotonic()` too."""

    request_id: str
    state: JobState
    latency: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None  # compare with a client's time.monotonic() on the same machine


class Stats:
    """What the server saw, safe to read from any thread; every accessor returns a copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_mono: float | None = None  # time.monotonic() when the queue started (t = 0 of a capacity schedule)
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (jobs keep running)."""
        with self._lock:
            self._calls: collections.Counter[str] = collections.Counter()
            self._faults: collections.Counter[str] = collections.Counter()
            self._submissions: list[Submission] = []
            self._jobs: dict[str, JobTimes] = {}
            self._file_auth = 0
            self._other_jobs = 0

    def count_call(self, endpoint: str) -> None:
        """Count one call to `endpoint`."""
        with self._lock:
            self._calls[endpoint] += 1

    def count_fault(self, kind: str) -> None:
        """Count one injected fault of `kind`."""
        with self._lock:
            self._faults[kind] += 1

    def count_file_auth(self) -> None:
        """Count one request to a file host that carried an Authorization header (a token leak)."""
        with self._lock:
            self._file_auth += 1

    def count_other_job(self) -> None:
        """Count one of other users' jobs (a `Regime`'s background load)."""
        with self._lock:
            self._other_jobs += 1

    def record_submission(self, submission: Submission) -> None:
        """Remember an accepted submit."""
        with self._lock:
            self._submissions.append(submission)

    def record_job(self, times: JobTimes) -> None:
        """Remember a job's latest state and times."""
        with self._lock:
            self._jobs[times.request_id] = times

    @property
    def calls(self) -> dict[str, int]:
        """Calls per endpoint: submit, status, result, cancel, file (faulted calls included)."""
        with self._lock:
            return dict(self._calls)

    @property
    def file_auth(self) -> int:
        """Requests to output-file URLs (files, redirect hops) that carried an Authorization header."""
        with self._lock:
            return self._file_auth

    @property
    def other_jobs(self) -> int:
        """How many of other users' jobs arrived (they are in no other record)."""
        with self._lock:
            return self._other_jobs

    def cancelled(self) -> list[str]:
        """The request ids of jobs that ended cancelled, in creation order."""
        with self._lock:
            return [rid for rid, times in self._jobs.items() if times.state == "cancelled"]

    @property
    def faults(self) -> dict[str, int]:
        """Injected faults by kind (`rate_limited`, `drop_submit_after`, `job_failure`, `file_error`, ...)."""
        with self._lock:
            return dict(self._faults)

    @property
    def submissions(self) -> list[Submission]:
        """Every accepted submit in order, including those whose answer was then dropped."""
        with self._lock:
            return list(self._submissions)

    def accepted(self) -> collections.Counter[str]:
        """How many times each request key was accepted: a sweep that never duplicates shows only 1s."""
        return collections.Counter(s.key for s in self.submissions)

    def job(self, request_id: str) -> JobTimes | None:
        """The latest record of one job, or None if this server never accepted it."""
        with self._lock:
            return self._jobs.get(request_id)

    @property
    def jobs(self) -> dict[str, JobTimes]:
        """Every job's latest record, by request id."""
        with self._lock:
            return dict(self._jobs)
