"""The wire protocol's quirks, as pure parsing."""

from datetime import UTC, datetime, timedelta

import pytest

from zlab import errors
from zlab.protocol import (
    error_from_answer,
    output_urls,
    parse_outcome,
    parse_retry_after,
    parse_status,
    parse_submitted,
)


def test_submit_rebuilds_missing_urls():
    sub = parse_submitted({"request_id": "abc_1-2"}, "http://h:1/")
    assert sub.status_url == "http://h:1/v1/requests/abc_1-2/status"
    assert sub.cancel_url.endswith("/abc_1-2/cancel")
    with pytest.raises(errors.ProtocolError):
        parse_submitted({"request_id": "../etc"}, "http://h")


def test_both_vocabularies_and_positions():
    assert parse_status({"status": "in_queue", "queue_position": 3}).queue_position == 3
    assert parse_status({"status": "in_progress", "queue_position": 3}).queue_position is None
    assert parse_status({"status": "completed"}).terminal
    out = parse_outcome({"status": "succeeded", "output": {"image": "http://x/a.png"}})
    assert out.phase == "succeeded" and out.outputs == ("http://x/a.png",)
    assert parse_outcome({"status": "in_progress"}).phase == "running"


def test_unknown_status_is_an_error_not_a_wait():
    with pytest.raises(errors.ProtocolError, match="unknown job status"):
        parse_status({"status": "paused_forever"})
    with pytest.raises(errors.ProtocolError):
        parse_outcome({"status": "succeeded", "output": {}})


def test_failed_is_visible_only_on_result():
    out = parse_outcome({"status": "failed", "error": {"msg": "oom"}})
    assert out.phase == "failed" and out.error == {"msg": "oom"}


def test_outputs_under_any_schema_key():
    assert output_urls({"images": ["a", "b"], "video": "v"}) == ("a", "b", "v")
    assert output_urls(None) == ()


def test_error_code_with_http_200_is_an_error():
    error = error_from_answer(200, {"error_code": 500001, "error_message": "boom"})
    assert isinstance(error, errors.APIError) and error.error_code == 500001
    assert error_from_answer(200, {"request_id": "x"}) is None


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, 400004, errors.AuthError),
        (403, 403001, errors.AuthError),
        (404, 404001, errors.NotFoundError),
        (402, 400002, errors.InsufficientBalance),
        (429, None, errors.RateLimitedError),
        (503, None, errors.ServerError),
        (200, 400004, errors.AuthError),
    ],
)
def test_error_mapping(status, code, kind):
    body = {"error_code": code, "error_message": "m"} if code else {}
    error = error_from_answer(status, body, request_id="r1")
    assert type(error) is kind and error.status_code == status


def test_auth_error_says_what_to_do():
    assert "RUNCOMFY_TOKEN" in str(error_from_answer(401, {"error_code": 400004, "error_message": "bad"}))


def test_retry_after_seconds_and_dates():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    date = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(date, now=now) == 30
