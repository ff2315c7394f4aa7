"""When to retry a call, and how long to wait first: pure decisions, no I/O.

The one rule that protects people's money: a submit is resent on its own only when the service
cannot have created the job: it answered 429, or the connection was never made. Anything else after
the body left (a 5xx, a gateway's 502/504, a timeout, a dropped connection, a body that cannot be
parsed) is an *unknown outcome*: the job may exist and be billed, so it is recorded, never resent
without the user asking. Reads (status, result, cancel, downloads) are safe to repeat on any passing
fault. Every wait is bounded: a Retry-After longer than `max_retry_after_s` fails the call instead.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Literal

Fault = Literal[
    "rate_limited",  # 429: refused before any work
    "server_error",  # 500 (or a 5xxxxx error code): for a submit, the job may exist
    "unavailable",  # 503, e.g. a load balancer's HTML page
    "gateway",  # 502/504: a proxy answered; behind it the job may exist
    "connect",  # the connection was never made (refused, connect timeout)
    "lost",  # the request went out and the answer never came (dropped, read timeout)
]

# For a submit: faults after which the job certainly does not exist.
SUBMIT_SAFE: frozenset[Fault] = frozenset({"rate_limited", "connect"})


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts, exponential backoff with jitter, a cap, and a total deadline."""

    attempts: int = 8
    base_s: float = 0.25
    cap_s: float = 20.0
    deadline_s: float = 180.0
    rate_limit_default_s: float = 2.0  # a 429 without Retry-After: start here, then back off
    max_retry_after_s: float = 120.0  # a longer Retry-After fails the call (with the wait asked for)
    call_s: float = 120.0  # one HTTP exchange, body included: a trickling answer cannot hold a call longer
    read_s: float = 20.0  # one status/result/cancel exchange (a small JSON body): much shorter than call_s
    read_deadline_s: float = 100.0  # a read with all its retries: with read_s, a trickle holds a job < 2 min
    # A job the service said finished whose /result lags (404, empty, not ready): asked again after
    # lag_first_s, doubling up to lag_cap_s, for at most lag_limit_s (≤ 8 status+result calls at a 1 s lag).
    lag_first_s: float = 0.1
    lag_cap_s: float = 8.0
    lag_limit_s: float = 60.0

    def exchange_s(self, is_submit: bool) -> float:
        """The total deadline of one exchange: a submit's `call_s`, a read's (shorter) `read_s`."""
        return self.call_s if is_submit else min(self.call_s, self.read_s)

    def total_s(self, is_submit: bool) -> float:
        """How long one call may keep retrying: `deadline_s`, and at most `read_deadline_s` for a read."""
        return self.deadline_s if is_submit else min(self.deadline_s, self.read_deadline_s)


def should_retry(fault: Fault, *, is_submit: bool) -> bool:
    return fault in SUBMIT_SAFE if is_submit else True


def backoff_s(
    policy: RetryPolicy,
    attempt: int,
    fault: Fault,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt number `attempt + 1` (attempt counts from 1).

    Retry-After is honoured exactly and never undercut (a little jitter is added on top, so many
    waiting workers do not return in the same instant); otherwise exponential backoff with jitter.
    """
    jitter = (rng or random).random()
    if fault == "rate_limited" and retry_after is not None:
        return retry_after + 0.1 * jitter * max(retry_after, 0.1)
    start = policy.rate_limit_default_s if fault == "rate_limited" else policy.base_s
    ceiling = min(policy.cap_s, start * 2 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * jitter)
