"""Every injected fault is observable from an httpx client, and the fault decisions are pure and seeded."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from zlab.core.request import MODEL_ID
from zlab.errors import ConfigError
from zlab.server import Faults, LocalServer
from zlab.server.faults import decide_call, decide_file, decide_job

SUBMIT = f"/v1/models/{MODEL_ID}"
SMALL = {"prompt": "a red fox", "width": 512, "height": 256, "seed": 3}


@pytest.fixture(scope="module")
def shared() -> Iterator[LocalServer]:
    with LocalServer(latency=0.02, capacity=8) as srv:
        yield srv


@pytest.fixture
def srv(shared: LocalServer) -> Iterator[LocalServer]:
    shared.set_faults()
    shared.stats.reset()
    yield shared
    shared.set_faults()


@pytest.fixture
def api(srv: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, timeout=5.0) as c:
        yield c


def submit(api: httpx.Client) -> str:
    answer = api.post(SUBMIT, json=SMALL)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["request_id"])


def result(api: httpx.Client, request_id: str) -> dict:
    deadline = time.monotonic() + 5
    while (body := api.get(f"/v1/requests/{request_id}/result").json())["status"] in ("in_queue", "in_progress"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.005)
    return body


def output(api: httpx.Client) -> str:
    body = result(api, submit(api))
    assert body["status"] == "succeeded"
    return str(body["output"]["image"])


def test_rate_limited_answers_429_with_retry_after_and_accepts_nothing(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(rate_limited=1.0, retry_after=2)
    answer = api.post(SUBMIT, json=SMALL)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "2"
    assert answer.json()["error_code"] == 429
    srv.set_faults(Faults(rate_limited_bare=1.0))
    bare = api.post(SUBMIT, json=SMALL)
    assert bare.status_code == 429 and "retry-after" not in bare.headers
    assert srv.stats.submissions == []
    assert srv.stats.faults == {"rate_limited": 1, "rate_limited_bare": 1}


@pytest.mark.parametrize(("name", "status"), [("server_error", 500), ("unavailable", 503)])
def test_server_errors_hit_only_the_chosen_endpoints(srv: LocalServer, api: httpx.Client, name, status) -> None:
    srv.set_faults(**{name: 1.0, "endpoints": ("status",)})
    rid = submit(api)
    answer = api.get(f"/v1/requests/{rid}/status")
    assert answer.status_code == status and answer.json()["error_code"] == status
    assert api.get(f"/v1/requests/{rid}/result").status_code == 200
    assert srv.stats.faults == {name: 1}


def test_error_body_is_http_200_carrying_an_error_code(srv: LocalServer, api: httpx.Client) -> None:
    rid = submit(api)
    srv.set_faults(error_body=1.0)
    answer = api.get(f"/v1/requests/{rid}/status")
    assert answer.status_code == 200 and "error_code" in answer.json() and "status" not in answer.json()
    refused = api.post(SUBMIT, json=SMALL)
    assert refused.status_code == 200 and "request_id" not in refused.json()
    assert len(srv.stats.submissions) == 1


@pytest.mark.parametrize("mode", ["close", "truncate"])
def test_a_submit_dropped_before_acceptance_creates_no_job(srv: LocalServer, api: httpx.Client, mode: str) -> None:
    srv.set_faults(drop_submit_before=1.0, drop_mode=mode)
    with pytest.raises(httpx.TransportError):
        api.post(SUBMIT, json=SMALL)
    assert srv.stats.submissions == []
    srv.set_faults()
    submit(api)  # the server, and the client's connection pool, carry on
    assert len(srv.stats.submissions) == 1


@pytest.mark.parametrize("mode", ["close", "truncate"])
def test_a_submit_dropped_after_acceptance_still_runs(srv: LocalServer, api: httpx.Client, mode: str) -> None:
    srv.set_faults(drop_submit_after=1.0, drop_mode=mode)
    with pytest.raises(httpx.TransportError):
        api.post(SUBMIT, json=SMALL)
    srv.set_faults()
    [accepted] = srv.stats.submissions
    assert result(api, accepted.request_id)["status"] == "succeeded"
    assert srv.stats.faults == {"drop_submit_after": 1}


@pytest.mark.parametrize("mode", ["close", "truncate"])
def test_polls_can_be_dropped(srv: LocalServer, api: httpx.Client, mode: str) -> None:
    rid = submit(api)
    srv.set_faults(drop_poll=1.0, drop_mode=mode)
    for method, path in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
        with pytest.raises(httpx.TransportError):
            api.request(method, f"/v1/requests/{rid}/{path}")
    assert srv.stats.faults == {"drop_poll": 3}


def test_a_failed_job_says_completed_on_status_and_failed_on_result(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(job_failure=1.0)
    rid = submit(api)
    body = result(api, rid)
    assert body["status"] == "failed" and body["error"] and "output" not in body
    assert api.get(f"/v1/requests/{rid}/status").json()["status"] == "completed"
    assert api.get(f"/files/{rid}/image.png").status_code == 404
    assert srv.stats.faults == {"job_failure": 1}


@pytest.mark.parametrize(("name", "status"), [("file_error", 500), ("file_unavailable", 503), ("file_missing", 404)])
def test_output_file_faults_are_transient(srv: LocalServer, api: httpx.Client, name: str, status: int) -> None:
    url = output(api)
    srv.set_faults(**{name: 1.0})
    assert httpx.get(url).status_code == status
    srv.set_faults()
    assert httpx.get(url).status_code == 200


def test_a_slow_file_trips_a_client_read_timeout(srv: LocalServer, api: httpx.Client) -> None:
    url = output(api)
    srv.set_faults(file_delay=0.3)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, timeout=httpx.Timeout(5.0, read=0.1))
    started = time.monotonic()
    assert httpx.get(url).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_bad_output_truncated_is_half_a_png(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="truncated")
    answer = httpx.get(output(api))
    assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(answer.content)).load()


def test_bad_output_wrong_type_is_an_html_page(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="wrong_type")
    answer = httpx.get(output(api))
    assert answer.headers["content-type"].startswith("text/html") and b"<html" in answer.content


def test_bad_output_bomb_declares_a_huge_image_in_a_tiny_file(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="bomb")
    answer = httpx.get(output(api))
    assert len(answer.content) < 1000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(answer.content))


def test_bad_output_oversized_streams_a_valid_but_huge_png(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="oversized", oversized_bytes=3 << 20)
    with httpx.stream("GET", output(api)) as answer:
        assert "content-length" not in answer.headers  # only a cap on the bytes read stops a client
        content = answer.read()
    assert len(content) > 3 << 20
    image = Image.open(io.BytesIO(content))
    image.load()
    assert image.size == (512, 256)


def test_bad_output_wrong_size_is_a_valid_image_of_another_size(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="wrong_size")
    image = Image.open(io.BytesIO(httpx.get(output(api)).content))
    image.load()
    assert image.size != (512, 256)


def test_bad_output_non_http_url_points_at_a_local_file(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="non_http_url")
    assert output(api) == "file:///etc/passwd"


def test_bad_output_is_fixed_when_the_job_is_accepted(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(bad_output="wrong_type")
    rid = submit(api)
    srv.set_faults()
    url = result(api, rid)["output"]["image"]
    assert httpx.get(url).headers["content-type"].startswith("text/html")
    assert httpx.get(output(api)).headers["content-type"] == "image/png"


def test_the_same_seed_gives_the_same_faults(srv: LocalServer, api: httpx.Client) -> None:
    rid = submit(api)

    def pattern() -> list[int]:
        return [api.get(f"/v1/requests/{rid}/status").status_code for _ in range(30)]

    srv.set_faults(Faults(seed=7, server_error=0.5))
    first = pattern()
    srv.set_faults(Faults(seed=7, server_error=0.5))
    assert pattern() == first and {200, 500} == set(first)
    srv.set_faults(Faults(seed=8, server_error=0.5))
    assert pattern() != first


def test_set_faults_changes_the_current_settings(srv: LocalServer) -> None:
    srv.set_faults(Faults(seed=3, rate_limited=0.2))
    changed = srv.set_faults(server_error=0.1)
    assert (changed.seed, changed.rate_limited, changed.server_error) == (3, 0.2, 0.1)
    assert srv.faults == changed
    assert srv.set_faults() == Faults()


def test_decide_call_partitions_one_draw_among_the_faults() -> None:
    faults = Faults(rate_limited=0.1, server_error=0.2, drop_submit_before=0.3, drop_submit_after=0.1, drop_poll=0.4)
    submit_faults = [decide_call(faults, "submit", (d + 0.5) / 100) for d in range(100)]
    assert submit_faults.count("rate_limited") == 10 and submit_faults.count("server_error") == 20
    assert submit_faults.count("drop_submit_before") == 30 and submit_faults.count("drop_submit_after") == 10
    assert submit_faults.count(None) == 30 and "drop_poll" not in submit_faults
    status_faults = [decide_call(faults, "status", (d + 0.5) / 100) for d in range(100)]
    assert status_faults.count("drop_poll") == 40 and "drop_submit_before" not in status_faults
    only_submit = Faults(unavailable=1.0, endpoints=("submit",))
    assert decide_call(only_submit, "submit", 0.5) == "unavailable"
    assert decide_call(only_submit, "result", 0.5) is None


def test_decide_job_and_decide_file() -> None:
    assert decide_job(Faults(job_failure=0.25), 0.2) and not decide_job(Faults(job_failure=0.25), 0.3)
    faults = Faults(file_error=0.1, file_unavailable=0.1, file_missing=0.1)
    assert [decide_file(faults, d) for d in (0.05, 0.15, 0.25, 0.35)] == [
        "file_error",
        "file_unavailable",
        "file_missing",
        None,
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {"server_error": 1.5},
        {"rate_limited": 0.6, "unavailable": 0.6},
        {"file_error": 0.7, "file_missing": 0.7},
        {"retry_after": -1},
        {"endpoints": ("submit", "upload")},
        {"drop_mode": "slam"},
        {"bad_output": "cursed"},
    ],
)
def test_faults_reject_impossible_settings(settings: dict) -> None:
    with pytest.raises(ConfigError):
        Faults(**settings)
