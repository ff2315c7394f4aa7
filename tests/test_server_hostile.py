"""Hostile faults for the money-safety tests: eventual consistency, odd ids, bad files that heal, trickles.

Every fault here is decided when the call or the file fetch arrives, so clearing it (set_faults())
heals the same job: a client that gave up can collect it on a later run.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from PIL import Image
from waiting import wait_for

from zlab.core.request import MODEL_ID
from zlab.errors import ConfigError
from zlab.server import Faults, LocalServer
from zlab.server.faults import file_expired, not_yet_visible, odd_request_id

SUBMIT = f"/v1/models/{MODEL_ID}"
SMALL = {"prompt": "a red fox", "width": 256, "height": 256, "seed": 5}


@pytest.fixture(scope="module")
def shared() -> Iterator[LocalServer]:
    with LocalServer(latency=0.02, capacity=8) as srv:
        yield srv


@pytest.fixture
def srv(shared: LocalServer) -> Iterator[LocalServer]:
    shared.set_faults()
    shared.set_quirks()
    shared.stats.reset()
    yield shared
    shared.set_faults()
    shared.set_quirks()


@pytest.fixture
def api(srv: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, timeout=5.0) as c:
        yield c


def submit(api: httpx.Client) -> str:
    answer = api.post(SUBMIT, json=SMALL)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["request_id"])


def done(srv: LocalServer, request_id: str) -> None:
    wait_for(lambda: (job := srv.stats.job(request_id)) is not None and job.finished_at is not None)


def output_url(srv: LocalServer, api: httpx.Client) -> str:
    request_id = submit(api)
    done(srv, request_id)
    return str(api.get(f"/v1/requests/{request_id}/result").json()["output"]["image"])


def is_png(answer: httpx.Response) -> bool:
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    return answer.status_code == 200 and image.format == "PNG"


# --- eventual consistency ---------------------------------------------------------------------------------


def test_a_fresh_job_answers_404_for_its_first_polls(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(eventual_404_calls=2)
    request_id = submit(api)
    first = api.get(f"/v1/requests/{request_id}/status")
    assert (first.status_code, first.json()["error_code"]) == (404, 404001)
    assert api.get(f"/v1/requests/{request_id}/result").status_code == 404
    assert api.get(f"/v1/requests/{request_id}/status").status_code == 200
    assert srv.stats.faults == {"eventual_404": 2} and len(srv.stats.submissions) == 1


def test_a_grace_time_of_404s_heals_when_cleared(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(eventual_404_seconds=3600)
    request_id = submit(api)
    assert [api.get(f"/v1/requests/{request_id}/status").status_code for _ in range(3)] == [404] * 3
    assert api.post(f"/v1/requests/{request_id}/cancel").status_code == 404
    srv.set_faults()
    assert api.get(f"/v1/requests/{request_id}/status").status_code == 200


def test_not_yet_visible_counts_polls_and_seconds() -> None:
    assert not_yet_visible(Faults(eventual_404_calls=2), polls=2, age=9.0)
    assert not not_yet_visible(Faults(eventual_404_calls=2), polls=3, age=0.0)
    assert not_yet_visible(Faults(eventual_404_seconds=1.5), polls=50, age=1.4)
    assert not not_yet_visible(Faults(eventual_404_seconds=1.5), polls=1, age=1.5)
    assert not not_yet_visible(Faults(), polls=1, age=0.0)


# --- odd request ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["punct", "long"])
def test_odd_request_ids_work_when_quoted(srv: LocalServer, api: httpx.Client, style: str) -> None:
    srv.set_faults(odd_ids=style)
    answer = api.post(SUBMIT, json=SMALL).json()
    request_id = answer["request_id"]
    assert "/" not in request_id and "." in request_id and ":" in request_id
    if style == "long":
        assert len(request_id) == 256
    else:
        assert {"?", "#", "%", " "} <= set(request_id)
    quoted = quote(request_id, safe="")
    assert answer["status_url"] == f"{srv.base_url}/v1/requests/{quoted}/status"
    done(srv, request_id)
    assert httpx.get(answer["status_url"]).json()["request_id"] == request_id
    result = api.get(f"/v1/requests/{quoted}/result").json()
    assert result["status"] == "succeeded" and is_png(httpx.get(result["output"]["image"]))


def test_odd_request_ids_never_contain_a_slash() -> None:
    request_id = odd_request_id("punct", "abc")
    assert request_id.startswith("req.abc:") and "/" not in request_id
    assert len(odd_request_id("long", "x" * 24)) == 256


# --- outputs that go bad after the job succeeded, and heal -------------------------------------------------


def test_html_with_200_then_healed(srv: LocalServer, api: httpx.Client) -> None:
    url = output_url(srv, api)
    srv.set_faults(file_problem="html_200")
    bad = httpx.get(url)
    assert bad.status_code == 200 and bad.headers["content-type"].startswith("text/html") and b"<html" in bad.content
    srv.set_faults()
    assert is_png(httpx.get(url))


def test_an_empty_file_then_healed(srv: LocalServer, api: httpx.Client) -> None:
    url = output_url(srv, api)
    srv.set_faults(file_problem="empty")
    empty = httpx.get(url)
    assert (empty.status_code, empty.content, empty.headers["content-length"]) == (200, b"", "0")
    srv.set_faults()
    assert is_png(httpx.get(url))


def test_a_redirect_loop_then_healed(srv: LocalServer, api: httpx.Client) -> None:
    url = output_url(srv, api)
    srv.set_faults(file_problem="redirect_loop")
    with pytest.raises(httpx.TooManyRedirects):
        httpx.get(url, follow_redirects=True)
    srv.set_faults()
    assert is_png(httpx.get(url, follow_redirects=True))


def test_a_redirect_loop_also_catches_the_redirect_files_route(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_quirks(["redirect_files"])
    url = output_url(srv, api)
    srv.set_faults(file_problem="redirect_loop")
    with pytest.raises(httpx.TooManyRedirects):
        httpx.get(url, follow_redirects=True)
    srv.set_faults()
    assert is_png(httpx.get(url, follow_redirects=True))


def test_an_expired_file_url_then_healed(srv: LocalServer, api: httpx.Client) -> None:
    url = output_url(srv, api)
    srv.set_faults(file_expire_after=0)
    expired = httpx.get(url)
    assert (expired.status_code, expired.json()["error_code"]) == (404, 404)
    srv.set_faults(file_expire_after=3600)
    assert is_png(httpx.get(url))
    assert srv.stats.faults == {"file_expired": 1}


def test_file_expired_is_measured_from_the_finish() -> None:
    assert file_expired(Faults(file_expire_after=2), 2.0) and not file_expired(Faults(file_expire_after=2), 1.9)
    assert not file_expired(Faults(), 1e9)


def test_bad_output_stays_per_job_but_file_problems_follow_the_fault(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="truncated")
    truncated = output_url(srv, api)
    srv.set_faults()
    assert not httpx.get(truncated).content.endswith(b"IEND\xaeB`\x82")  # still half a PNG: fixed at acceptance
    assert is_png(httpx.get(output_url(srv, api)))


# --- trickles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["status", "result"])
def test_a_trickled_body_announces_its_length_and_sends_one_byte_at_a_time(
    srv: LocalServer, api: httpx.Client, target: str
) -> None:
    request_id = submit(api)
    done(srv, request_id)
    whole = api.get(f"/v1/requests/{request_id}/{target}").content
    srv.set_faults(trickle=0.5, trickle_on=(target,))
    with api.stream("GET", f"/v1/requests/{request_id}/{target}") as answer:
        assert int(answer.headers["content-length"]) == len(whole)
        first = next(answer.iter_raw())
    assert first == whole[:1]
    other = "result" if target == "status" else "status"
    assert api.get(f"/v1/requests/{request_id}/{other}").status_code == 200  # only the chosen endpoint trickles


def test_a_trickled_file_sends_one_byte_at_a_time(srv: LocalServer, api: httpx.Client) -> None:
    url = output_url(srv, api)
    whole = httpx.get(url).content
    srv.set_faults(trickle=0.5, trickle_on=("file",))
    with httpx.stream("GET", url) as answer:
        assert int(answer.headers["content-length"]) == len(whole)
        assert answer.headers["content-type"] == "image/png"
        assert next(answer.iter_raw()) == whole[:1]
    assert srv.stats.faults == {"trickle": 1}
    srv.set_faults()
    assert is_png(httpx.get(url))


# --- Retry-After, stats ---------------------------------------------------------------------------------


def test_a_huge_retry_after_is_sent_as_is(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(rate_limited=1.0, retry_after=86400, endpoints=("submit",))
    answer = api.post(SUBMIT, json=SMALL)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "86400"
    assert srv.stats.submissions == []


def test_stats_count_calls_cancels_and_keys(srv: LocalServer) -> None:
    with LocalServer(latency=60, capacity=1) as slow, httpx.Client(base_url=slow.base_url) as api:
        running = submit(api)
        queued = [api.post(SUBMIT, json={**SMALL, "seed": s}).json()["request_id"] for s in (6, 7)]
        for request_id in queued:
            api.post(f"/v1/requests/{request_id}/cancel")
        api.post(f"/v1/requests/{running}/cancel")  # not cancellable: still running
        api.get(f"/v1/requests/{running}/status")
        assert slow.stats.cancelled() == queued
        assert slow.stats.calls == {"submit": 3, "cancel": 3, "status": 1}
        assert set(slow.stats.accepted().values()) == {1}


@pytest.mark.parametrize(
    "settings",
    [
        {"eventual_404_calls": -1},
        {"eventual_404_seconds": -1},
        {"odd_ids": "emoji"},
        {"file_problem": "gone"},
        {"file_expire_after": -2},
        {"trickle": -0.1},
        {"trickle_on": ("submit",)},
    ],
)
def test_hostile_settings_are_checked(settings: dict) -> None:
    with pytest.raises(ConfigError):
        Faults(**settings)
