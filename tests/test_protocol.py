"""The wire protocol's quirks, as pure parsing."""

from datetime import UTC, datetime, timedelta

import pytest

from zlab import errors
from zlab.core.protocol import (
    Price,
    error_from_answer,
    failed_result,
    output_urls,
    parse_cancel,
    parse_outcome,
    parse_price,
    parse_retry_after,
    parse_status,
    parse_submitted,
)


def test_submit_rebuilds_missing_urls():
    sub = parse_submitted({"request_id": "abc_1-2"}, "http://h:1/")
    assert sub.status_url == "http://h:1/v1/requests/abc_1-2/status"
    assert sub.cancel_url.endswith("/abc_1-2/cancel")


@pytest.mark.parametrize("request_id", ["req.x", "req:x", "../etc", "a/b?c#d", "x" * 256, "ünï"])
def test_request_ids_are_recorded_as_given_and_quoted_in_paths(request_id):
    sub = parse_submitted({"request_id": request_id, "status_url": "https://evil.example/steal"}, "http://h:1")
    assert sub.request_id == request_id
    path = sub.status_url.removeprefix("http://h:1/v1/requests/").removesuffix("/status")
    assert "/" not in path and "?" not in path and "#" not in path  # one path segment, at our own host
    assert parse_submitted({"request_id": 12345}, "http://h").request_id == "12345"


@pytest.mark.parametrize("bad", [None, "", "   ", "a\nb", ["x"], {"id": 1}, "x" * 5000])
def test_unusable_request_ids_are_protocol_errors(bad):
    with pytest.raises(errors.ProtocolError):
        parse_submitted({"request_id": bad}, "http://h")


def test_both_vocabularies_and_positions():
    assert parse_status({"status": "in_queue", "queue_position": 3}).queue_position == 3
    assert parse_status({"status": "in_progress", "queue_position": 3}).queue_position is None
    assert parse_status({"status": "completed"}).terminal
    out = parse_outcome({"status": "succeeded", "output": {"image": "http://x/a.png"}})
    assert out.phase == "succeeded" and out.outputs == ("http://x/a.png",)
    assert parse_outcome({"status": "in_progress"}).phase == "running"


@pytest.mark.parametrize("word", ["paused_forever", "BOOTING_GPU", "Warming", "", None, 7])
def test_an_unknown_status_word_is_a_phase_still_going_and_named(word):
    status = parse_status({"status": word})
    assert status.phase == "running" and not status.terminal and status.word is not None
    outcome = parse_outcome({"status": word})
    assert not outcome.finished and outcome.word is not None


@pytest.mark.parametrize(
    ("word", "phase"),
    [("COMPLETED", "completed"), ("Succeeded", "succeeded"), ("IN_QUEUE", "queued"), ("In-Progress", "running"),
     ("CANCELED", "cancelled"), ("FAILED", "failed"), ("starting", "running")],
)  # fmt: skip
def test_status_words_compare_case_insensitively(word, phase):
    status = parse_status({"status": word})
    assert (status.phase, status.word) == (phase, None)


def test_terminal_only_on_a_terminal_word_an_output_or_an_explicit_error():
    done = parse_outcome({"status": "DONE", "output": {"image": "http://x/a.png"}})
    assert done.phase == "succeeded" and done.outputs == ("http://x/a.png",)
    broken = parse_outcome({"status": "exploded", "error": "GPU fell off"})
    assert broken.phase == "failed" and broken.error == "GPU fell off"
    assert parse_status({"status": "weird", "output": "http://x/a.png"}).terminal


def test_a_finished_result_with_no_output_yet_is_lagging_not_an_error():
    for output in ({}, [], None, "", {"images": []}, {"image": None}):
        lag = parse_outcome({"status": "succeeded", "output": output})
        assert lag.lagging and not lag.finished
    with pytest.raises(errors.ProtocolError, match="no http"):  # something there, but nothing zlab can fetch
        parse_outcome({"status": "succeeded", "output": {"image": "file:///etc/passwd"}})


def test_failed_is_visible_only_on_result():
    out = parse_outcome({"status": "failed", "error": {"msg": "oom"}})
    assert out.phase == "failed" and out.error == {"msg": "oom"}


@pytest.mark.parametrize(
    "output",
    [
        {"image": "https://cdn/a.png"},
        {"images": ["https://cdn/a.png"]},
        "https://cdn/a.png",
        ["https://cdn/a.png"],
        [{"url": "https://cdn/a.png", "content_type": "image/png"}],
        {"images": [{"url": "https://cdn/a.png"}]},
        {"result": {"files": [{"meta": 1, "url": "https://cdn/a.png"}]}},
        {"9": {"images": [{"filename": "a.png", "url": "https://cdn/a.png", "content_type": "image/png"}]}},
        {"SaveImage": ["https://cdn/a.png"]},
        [{"uri": "https://cdn/a.png", "filename": "a.png"}],
    ],
)
def test_every_output_shape_gives_its_url(output):
    assert output_urls(output) == ("https://cdn/a.png",)
    assert parse_outcome({"status": "completed", "output": output}).outputs == ("https://cdn/a.png",)


def test_outputs_keep_order_drop_repeats_and_non_http():
    output = {"images": ["http://a/1.png", "file:///etc/passwd", "http://a/1.png", "https://b/2.webp"], "n": 3}
    assert output_urls(output) == ("http://a/1.png", "https://b/2.webp")
    assert output_urls(None) == () and output_urls("not a url") == ()


def test_error_code_with_http_200_is_an_error():
    error = error_from_answer(200, {"error_code": 500001, "error_message": "boom"})
    assert isinstance(error, errors.ServerError) and error.error_code == 500001
    assert error_from_answer(200, {"request_id": "x"}) is None


def test_null_error_code_is_a_success():
    body = {"request_id": "r", "status": "succeeded", "error_code": None, "error_message": None}
    assert error_from_answer(200, body) is None
    assert error_from_answer(202, {"request_id": "r", "error_code": None}) is None


def test_not_ready_as_an_error_is_recognised():
    assert type(error_from_answer(400, {"error_code": 400005, "error_message": "not ready"})) is errors.NotReady


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"message": "Invalid token"}, "Invalid token"),
        ({"detail": "Not authenticated"}, "Not authenticated"),
        ({"error": "nope"}, "nope"),
        (None, "no JSON"),
    ],
)
def test_refused_token_in_any_dialect(body, text):
    for status in (401, 403):
        error = error_from_answer(status, body)
        assert type(error) is errors.AuthError and text in str(error) and "RUNCOMFY_TOKEN" in str(error)


def test_status_failed_and_string_errors():
    assert parse_status({"status": "failed", "error": "Model run failed"}).terminal
    out = parse_outcome({"status": "failed", "error": "Model run failed"})
    assert out.phase == "failed" and out.error == "Model run failed"


@pytest.mark.parametrize(("body", "outcome"), [
    ({"outcome": "cancelled"}, "cancelled"), ({"outcome": "canceled"}, "cancelled"),
    ({"status": "canceled"}, "cancelled"), ({"outcome": "not_cancellable"}, "not_cancellable"),
    (None, "unknown"), ({}, "unknown"),
])  # fmt: skip
def test_cancel_answers(body, outcome):
    assert parse_cancel(body) == outcome


def test_queue_positions_any_base_or_none():
    assert parse_status({"status": "in_queue", "queue_position": 0}).queue_position == 0
    assert parse_status({"status": "in_queue", "queue_position": None}).queue_position is None
    assert parse_status({"status": "in_queue"}).queue_position is None
    assert parse_outcome({"status": "in_queue", "queue_position": 2}).queue_position == 2


def test_cost_and_price():
    assert parse_outcome({"status": "succeeded", "output": "http://a/x.png", "cost": 0.012}).cost_usd == 0.012
    assert parse_outcome({"status": "succeeded", "output": "http://a/x.png", "cost": "nan"}).cost_usd is None
    assert parse_price({"base_price_usd": 0.01, "price_unit": "image"}) == Price(0.01, "image")
    assert parse_price({"base_price_usd": -1, "price_unit": "image"}) is None
    assert parse_price({"error_code": 404}) is None


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


@pytest.mark.parametrize("raw", ["0", "-5", "-0.1", "Thu, 01 Jan 1970 00:00:00 GMT", "inf", "nan"])
def test_a_retry_after_of_zero_negative_or_past_leaves_the_wait_to_zlab(raw):
    assert parse_retry_after(raw) is None


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (403, {"error_code": 400002, "error_message": "no balance"}, errors.InsufficientBalance),
        (401, {"code": 400002, "message": "insufficient funds"}, errors.InsufficientBalance),
        (200, {"error_code": 429, "error_message": "slow down"}, errors.RateLimitedError),
        (200, {"code": "429001", "message": "slow down"}, errors.RateLimitedError),
        (200, {"code": 500001, "message": "boom"}, errors.ServerError),
        (404, {"detail": "Result not ready yet"}, errors.NotReady),
        (400, {"detail": "job is still processing"}, errors.NotReady),
        (409, {"message": "request in progress"}, errors.NotReady),
        (404, {"detail": "Not Found"}, errors.NotFoundError),
    ],
)
def test_the_code_family_decides_wherever_it_sits(status, body, kind):
    assert type(error_from_answer(status, body, request_id="r1")) is kind


@pytest.mark.parametrize("code", [0, "", "0", None, False])
def test_a_zero_or_empty_error_code_is_a_success(code):
    assert error_from_answer(200, {"request_id": "r", "error_code": code}) is None


@pytest.mark.parametrize(
    ("status", "body", "failed"),
    [
        (500, {"status": "failed", "error": "Model run failed"}, True),
        (500, {"detail": "CUDA out of memory"}, True),
        (422, {"detail": [{"msg": "bad lora"}]}, True),
        (500, {"error_code": 500000, "error_message": "internal"}, False),
        (500, {"detail": "Internal Server Error"}, False),
        (503, {"message": "unavailable"}, False),
        (500, None, False),
        (404, {"detail": "missing"}, False),
    ],
)
def test_a_failed_job_reported_as_an_http_error_on_result(status, body, failed):
    outcome = failed_result(status, body)
    assert (outcome is not None and outcome.phase == "failed" and outcome.error) if failed else outcome is None


def test_data_uris_and_every_image_are_found():
    data = "data:image/png;base64,iVBORw0KGgo="
    body = {"status": "completed", "outputs": {"9": {"images": [{"url": data}, {"url": "https://c/2.png"}]}}}
    assert parse_outcome(body).outputs == (data, "https://c/2.png")


@pytest.mark.parametrize("request_id", [".", "..", "...", "a..b"])
def test_dot_ids_stay_one_segment_that_no_normaliser_collapses(request_id):
    import httpx

    status_url = parse_submitted({"request_id": request_id}, "http://h:1").status_url
    path = httpx.URL(status_url).raw_path.decode()
    segment = path.removeprefix("/v1/requests/").removesuffix("/status")
    from urllib.parse import unquote

    assert unquote(segment) == request_id and path.endswith("/status") and path.startswith("/v1/requests/")
