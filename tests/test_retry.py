"""The retry policy: what may be resent, and how long to wait."""

import random

import pytest

from zlab.core.retry import RetryPolicy, backoff_s, should_retry


@pytest.mark.parametrize("fault", ["rate_limited", "connect"])
def test_submit_retried_only_when_it_cannot_have_been_accepted(fault):
    assert should_retry(fault, is_submit=True)


@pytest.mark.parametrize("fault", ["lost", "gateway", "server_error", "unavailable"])
def test_submit_with_unknown_outcome_is_never_resent(fault):
    assert not should_retry(fault, is_submit=True)
    assert should_retry(fault, is_submit=False)


def test_retry_after_is_never_undercut():
    rng = random.Random(1)
    waits = [backoff_s(RetryPolicy(), 1, "rate_limited", 3.0, rng) for _ in range(200)]
    assert min(waits) >= 3.0 and max(waits) <= 3.3


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    rng = random.Random(2)
    first = [backoff_s(policy, 1, "unavailable", rng=rng) for _ in range(50)]
    late = [backoff_s(policy, 10, "unavailable", rng=rng) for _ in range(50)]
    assert max(first) <= 0.5 and min(late) >= 2.0 and max(late) <= 4.0
    assert min(backoff_s(policy, 1, "rate_limited", None, rng) for _ in range(50)) >= policy.rate_limit_default_s / 2
