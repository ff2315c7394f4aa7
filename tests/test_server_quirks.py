"""The local server speaks every protocol variant of `runcomfy-api.md` on request (zlab.server.quirks).

Each test switches quirks on a real LocalServer and asserts the exact answer on the wire (raw httpx
over loopback), and that the default answer is different, so a quirk that did nothing would fail.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from waiting import wait_for

from zlab.core.request import MODEL_ID
from zlab.errors import ConfigError
from zlab.server import Faults, LocalServer
from zlab.server.quirks import QUIRK_NAMES, STRICT, Quirks, decide_call

SUBMIT = f"/v1/models/{MODEL_ID}"
SMALL = {"prompt": "a red fox", "width": 256, "height": 320, "seed": 1}
TOKEN = "tok-q"


def client(srv: LocalServer, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=srv.base_url, headers=headers, timeout=5.0)


@pytest.fixture(scope="module")
def fast() -> Iterator[LocalServer]:
    """Jobs finish in 20 ms."""
    with LocalServer(token=TOKEN, latency=0.02, capacity=8) as srv:
        yield srv


@pytest.fixture
def stuck() -> Iterator[LocalServer]:
    """One slot and jobs of a minute: the first job runs, every later one stays queued."""
    with LocalServer(token=TOKEN, latency=60, capacity=1) as srv:
        yield srv


@pytest.fixture
def srv(fast: LocalServer) -> Iterator[LocalServer]:
    fast.set_quirks()
    fast.set_faults()
    fast.stats.reset()
    yield fast
    fast.set_quirks()
    fast.set_faults()


@pytest.fixture
def api(srv: LocalServer) -> Iterator[httpx.Client]:
    with client(srv) as c:
        yield c


def submit(api: httpx.Client, **changes: object) -> str:
    answer = api.post(SUBMIT, json={**SMALL, **changes})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["request_id"])


def done(srv: LocalServer, request_id: str) -> None:
    wait_for(lambda: (job := srv.stats.job(request_id)) is not None and job.finished_at is not None)


def finished_result(srv: LocalServer, api: httpx.Client, **changes: object) -> dict:
    request_id = submit(api, **changes)
    done(srv, request_id)
    answer = api.get(f"/v1/requests/{request_id}/result")
    assert answer.status_code == 200
    return answer.json()


# --- parsing ---------------------------------------------------------------------------------------------


def test_an_unknown_quirk_is_a_config_error_naming_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        LocalServer(quirks=["not_ready_400", "position_2based"])
    assert "position_2based" in str(caught.value)
    assert all(name in str(caught.value) for name in QUIRK_NAMES)


@pytest.mark.parametrize(
    "spec", ["not_ready_400=1", "balance_after", "html_503=lots", "html_503=1.5", "balance_after=-1", 7]
)
def test_quirk_values_are_checked(spec: object) -> None:
    with pytest.raises(ConfigError):
        Quirks.parse([spec])  # type: ignore[list-item]


def test_quirks_take_values_and_defaults_and_apply_in_order() -> None:
    quirks = Quirks.parse(["submit_5xx_after_accept", "html_503=0.25", "balance_after=3", "other_users=2"])
    assert (quirks.submit_5xx_after_accept, quirks.html_503, quirks.balance_after) == (1 / 3, 0.25, 3)
    assert quirks.other_users == 2.0 and quirks.names[1] == "html_503=0.25"
    assert Quirks.parse(["rate_limit", "rate_limit_bare"]).rate_limit_bare == 0.1
    assert Quirks.parse("position_null").position == "null"  # one string is one name
    assert Quirks.parse(["position_null", "position_1based"]).position == "1based"
    assert Quirks.parse([]) == Quirks()


def test_strict_is_the_hard_combination_with_503s_only_on_polls() -> None:
    strict = Quirks.parse(["strict"])
    assert strict.not_ready_400 and strict.position == "null" and strict.completed_result
    assert strict.null_error_code and strict.output == "objects" and strict.redirect_files
    assert (strict.file_format, strict.generic_content_type, strict.snap) == ("webp", True, 32)
    assert strict.status_failed and strict.cancel_canceled and strict.auth_403_message
    assert strict.html_503 > 0 and strict.rate_limit_bare > 0 and strict.other_users > 0
    assert strict.submit_5xx_after_accept == 0 and strict.balance_after is None  # a sweep can finish
    assert decide_call(strict, "submit", 0.0) != "html_503" and decide_call(strict, "status", 0.0) == "html_503"
    assert Quirks.parse(STRICT) != strict  # the 503s come only with the name `strict`


def test_set_quirks_switches_live_and_reports_them(srv: LocalServer, api: httpx.Client) -> None:
    assert srv.set_quirks(["completed_result"]) == srv.quirks == Quirks.parse(["completed_result"])
    assert finished_result(srv, api)["status"] == "completed"
    srv.set_quirks()
    assert finished_result(srv, api)["status"] == "succeeded"


# --- 1: /result before the job is done --------------------------------------------------------------------


def test_not_ready_400_answers_400005_until_the_job_is_done(stuck: LocalServer) -> None:
    stuck.set_quirks(["not_ready_400"])
    with client(stuck) as api:
        running, queued = submit(api), submit(api)
        for request_id in (running, queued):
            answer = api.get(f"/v1/requests/{request_id}/result")
            assert answer.status_code == 400
            assert answer.json()["error_code"] == 400005 and set(answer.json()) == {"error_code", "error_message"}
        assert api.post(f"/v1/requests/{queued}/cancel").status_code == 202
        assert api.get(f"/v1/requests/{queued}/result").json() == {"request_id": queued, "status": "cancelled"}
        stuck.set_quirks()
        assert api.get(f"/v1/requests/{running}/result").json() == {"request_id": running, "status": "in_progress"}


# --- 2: queue positions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quirk", "running", "queued"),
    [
        (None, {}, {"queue_position": 1}),
        ("position_1based", {}, {"queue_position": 2}),
        ("position_missing", {}, {}),
        ("position_null", {"queue_position": None}, {"queue_position": None}),
    ],
)
def test_queue_position_variants(stuck: LocalServer, quirk: str | None, running: dict, queued: dict) -> None:
    stuck.set_quirks([quirk] if quirk else [])
    with client(stuck) as api:
        ids = [submit(api) for _ in range(3)]
        bodies = [api.get(f"/v1/requests/{rid}/status").json() for rid in ids]
    urls = {"status_url": f"{stuck.base_url}/v1/requests/{ids[2]}/status"}
    third = {"request_id": ids[2], "status": "in_queue", **queued, **urls}
    assert bodies[2] == third | {"result_url": f"{stuck.base_url}/v1/requests/{ids[2]}/result"}
    assert bodies[0]["status"] == "in_progress"
    assert {k: v for k, v in bodies[0].items() if k == "queue_position"} == running


# --- 3, 4: result words and null error fields -------------------------------------------------------------


def test_completed_result_says_completed(srv: LocalServer, api: httpx.Client) -> None:
    assert finished_result(srv, api)["status"] == "succeeded"
    srv.set_quirks(["completed_result"])
    body = finished_result(srv, api)
    assert body["status"] == "completed" and body["output"]["image"].endswith("/image.png")


def test_null_error_code_rides_on_every_success_body(stuck: LocalServer) -> None:
    stuck.set_quirks(["null_error_code"])
    nulls = {"error_code": None, "error_message": None}
    with client(stuck) as api:
        answer = api.post(SUBMIT, json=SMALL)
        request_id = answer.json()["request_id"]
        status = api.get(f"/v1/requests/{request_id}/status").json()
        result = api.get(f"/v1/requests/{request_id}/result").json()
        cancel = api.post(f"/v1/requests/{request_id}/cancel").json()
        missing = api.get("/v1/requests/nope/status").json()
    for body in (answer.json(), status, result, cancel):
        assert {k: body[k] for k in nulls} == nulls
    assert missing["error_code"] == 404001  # an error body keeps its code
    stuck.set_quirks()


# --- 5: output shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quirk", "shape"),
    [
        (None, lambda url: {"image": url}),
        ("output_images", lambda url: {"images": [url]}),
        ("output_string", lambda url: url),
        ("output_list", lambda url: [url]),
        (
            "output_objects",
            lambda url: {"images": [{"url": url, "content_type": "image/png", "file_name": "image.png"}]},
        ),
    ],
)
def test_output_shapes(srv: LocalServer, api: httpx.Client, quirk: str | None, shape: Callable) -> None:
    srv.set_quirks([quirk] if quirk else [])
    body = finished_result(srv, api)
    url = f"{srv.base_url}/files/{body['request_id']}/image.png"
    assert body["output"] == shape(url)
    assert httpx.get(url).status_code == 200


# --- 6: redirects from a second host ----------------------------------------------------------------------


def test_redirect_files_puts_outputs_on_a_second_host_that_redirects_twice(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_quirks(["redirect_files"])
    body = finished_result(srv, api)
    rid, url = body["request_id"], body["output"]["image"]
    parts = urlsplit(url)
    assert parts.hostname == "localhost" and parts.port == urlsplit(srv.base_url).port
    assert re.fullmatch(rf"/[\w-]+(%3D)+/[\w-]+(%3D)+/output/{rid}_output\.png", parts.path), parts.path
    first = httpx.get(url)
    assert first.status_code == 302 and urlsplit(first.headers["location"]).hostname == "127.0.0.1"
    second = httpx.get(first.headers["location"])
    assert second.status_code == 302 and second.headers["location"] == f"{srv.base_url}/files/{rid}/image.png"
    image = httpx.get(url, follow_redirects=True)
    assert image.status_code == 200 and len(image.history) == 2
    assert Image.open(io.BytesIO(image.content)).size == (256, 320)
    assert srv.stats.calls["file_redirect"] == 4 and srv.stats.calls["file"] == 1 and srv.stats.file_auth == 0


def test_file_requests_carrying_a_token_are_counted(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_quirks(["redirect_files"])
    url = finished_result(srv, api)["output"]["image"]
    assert httpx.get(url, follow_redirects=True).status_code == 200
    assert srv.stats.file_auth == 0
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = httpx.get(url, headers=auth)
    assert first.status_code == 302 and srv.stats.file_auth == 1
    assert httpx.get(first.headers["location"], headers=auth, follow_redirects=True).status_code == 200
    assert srv.stats.file_auth == 3  # every hop that saw the token counts


# --- 7, 8: formats, content types, snapped sizes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("quirks", "ext", "pil_format", "content_type"),
    [
        ([], "png", "PNG", "image/png"),
        (["jpeg_output"], "jpg", "JPEG", "image/jpeg"),
        (["webp_output"], "webp", "WEBP", "image/webp"),
        (["webp_output", "generic_content_type"], "webp", "WEBP", "binary/octet-stream"),
        (["generic_content_type"], "png", "PNG", "binary/octet-stream"),
    ],
)
def test_file_formats_and_content_types(
    srv: LocalServer, api: httpx.Client, quirks: list[str], ext: str, pil_format: str, content_type: str
) -> None:
    srv.set_quirks(quirks)
    url = finished_result(srv, api)["output"]["image"]
    assert url.endswith(f"/image.{ext}")
    answer = httpx.get(url)
    assert answer.headers["content-type"] == content_type
    image = Image.open(io.BytesIO(answer.content))
    assert image.format == pil_format and image.size == (256, 320)


@pytest.mark.parametrize(("quirk", "size"), [(None, (784, 1168)), ("snap16", (784, 1168)), ("snap32", (768, 1152))])
def test_snapped_sizes_render_floored(srv: LocalServer, api: httpx.Client, quirk: str | None, size: tuple) -> None:
    srv.set_quirks([quirk] if quirk else [])
    url = finished_result(srv, api, width=784, height=1168)["output"]["image"]
    assert Image.open(io.BytesIO(httpx.get(url).content)).size == size
    [accepted] = srv.stats.submissions
    assert (accepted.input["width"], accepted.input["height"]) == (784, 1168)  # recorded as asked


# --- 9: gateway errors after the job was created ----------------------------------------------------------


def test_submit_5xx_after_accept_creates_the_job_then_answers_a_gateway_error(
    srv: LocalServer, api: httpx.Client
) -> None:
    srv.set_quirks(["submit_5xx_after_accept=1"])
    answers = [api.post(SUBMIT, json={**SMALL, "seed": seed}) for seed in range(4)]
    assert [a.status_code for a in answers] == [502, 504, 500, 502]
    assert answers[0].headers["content-type"].startswith("text/html") and b"Bad Gateway" in answers[0].content
    assert answers[1].json() == {"message": "Endpoint request timed out"}
    assert answers[2].json()["error_code"] == 500000
    accepted = srv.stats.submissions
    assert len(accepted) == 4 and srv.stats.faults == {"submit_5xx_after_accept": 4}
    for submission in accepted:
        done(srv, submission.request_id)
        assert api.get(f"/v1/requests/{submission.request_id}/result").json()["status"] == "succeeded"


def test_submit_5xx_after_accept_is_seeded(srv: LocalServer, api: httpx.Client) -> None:
    def pattern() -> list[int]:
        return [api.post(SUBMIT, json=SMALL).status_code for _ in range(12)]

    srv.set_quirks(["submit_5xx_after_accept", "seed=4"])
    first = pattern()
    srv.set_quirks(["submit_5xx_after_accept", "seed=4"])
    assert pattern() == first and 200 in first and {502, 504, 500} & set(first)
    assert len(srv.stats.submissions) == 24  # every one of them was accepted


# --- 10: failed jobs --------------------------------------------------------------------------------------


def test_status_failed_says_failed_with_a_plain_string_error(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_faults(job_failure=1.0)
    before = finished_result(srv, api)
    assert isinstance(before["error"], dict)
    srv.set_quirks(["status_failed"])
    request_id = submit(api)
    done(srv, request_id)
    status = api.get(f"/v1/requests/{request_id}/status").json()
    assert (status["status"], status["error"]) == ("failed", "Model run failed")
    result = api.get(f"/v1/requests/{request_id}/result").json()
    assert result == {"request_id": request_id, "status": "failed", "error": "Model run failed"}


# --- 11: cancel spellings ---------------------------------------------------------------------------------


def test_cancel_canceled_spells_it_with_one_l_everywhere(stuck: LocalServer) -> None:
    stuck.set_quirks(["cancel_canceled"])
    with client(stuck) as api:
        submit(api)
        queued = submit(api)
        answer = api.post(f"/v1/requests/{queued}/cancel")
        status = api.get(f"/v1/requests/{queued}/status").json()["status"]
        result = api.get(f"/v1/requests/{queued}/result").json()["status"]
    assert (answer.status_code, answer.json()) == (
        202,
        {"request_id": queued, "status": "canceled", "outcome": "canceled"},
    )
    assert status == result == "canceled"
    assert queued in stuck.stats.cancelled()


def test_cancel_empty_answers_202_with_no_body(stuck: LocalServer) -> None:
    stuck.set_quirks(["cancel_empty"])
    with client(stuck) as api:
        submit(api)
        queued = submit(api)
        answer = api.post(f"/v1/requests/{queued}/cancel")
        state = api.get(f"/v1/requests/{queued}/status").json()["status"]
    assert (answer.status_code, answer.content) == (202, b"")
    assert state == "cancelled"


# --- 12, 13: refused tokens and an empty balance ----------------------------------------------------------


def test_auth_403_message_refuses_with_only_a_message(srv: LocalServer) -> None:
    with client(srv, "wrong") as other:
        assert other.post(SUBMIT, json=SMALL).status_code == 401
        srv.set_quirks(["auth_403_message"])
        answers = [other.post(SUBMIT, json=SMALL), other.get("/v1/requests/x/status")]
    for answer in answers:
        assert answer.status_code == 403 and set(answer.json()) == {"message"}
    assert srv.stats.submissions == []


def test_balance_after_refuses_submits_with_402_once_spent(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_quirks(["balance_after=2"])
    first, second = submit(api), submit(api, seed=2)
    refused = api.post(SUBMIT, json={**SMALL, "seed": 3})
    assert refused.status_code == 402 and refused.json()["error_code"] == 400002
    assert api.post(SUBMIT, json=SMALL).status_code == 402
    assert [s.request_id for s in srv.stats.submissions] == [first, second]
    done(srv, second)
    assert api.get(f"/v1/requests/{second}/result").json()["status"] == "succeeded"  # accepted jobs still finish


# --- 14: load balancers and rate limits -------------------------------------------------------------------


def test_html_503_is_a_load_balancer_page(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_quirks(["html_503=1"])
    for answer in (api.post(SUBMIT, json=SMALL), api.get("/v1/requests/x/status")):
        assert answer.status_code == 503 and answer.headers["content-type"].startswith("text/html")
        assert answer.content.startswith(b"<html>") and b"503" in answer.content
    assert srv.stats.submissions == [] and srv.stats.faults == {"html_503": 2}


@pytest.mark.parametrize(("quirk", "retry_after"), [("rate_limit=1", "7"), ("rate_limit_bare=1", None)])
def test_rate_limit_quirks(srv: LocalServer, api: httpx.Client, quirk: str, retry_after: str | None) -> None:
    srv.set_faults(retry_after=7)
    srv.set_quirks([quirk])
    answer = api.post(SUBMIT, json=SMALL)
    assert answer.status_code == 429 and answer.headers.get("retry-after") == retry_after
    assert answer.json()["error_code"] == 429 and srv.stats.submissions == []


# --- 15: other users -------------------------------------------------------------------------------------


def test_other_users_take_slots_and_queue_places_but_stay_invisible() -> None:
    # Their jobs take 1 s each; at 5× capacity they arrive 5 a second, so a queue builds at once.
    with LocalServer(capacity=1, other_seconds=1.0, quirks=["other_users=5"]) as srv, client(srv, None) as api:
        wait_for(lambda: srv.stats.other_jobs >= 2)
        mine = submit(api)
        status = api.get(f"/v1/requests/{mine}/status").json()
        assert status["status"] == "in_queue" and status["queue_position"] >= 1
        assert list(srv.stats.jobs) == [mine] and [s.request_id for s in srv.stats.submissions] == [mine]
        srv.set_quirks()
        assert srv.quirks.other_users == 0


# --- the command line -------------------------------------------------------------------------------------


def test_zlab_serve_takes_quirks() -> None:
    command = [sys.executable, "-m", "zlab.cli", "serve", "--port", "0", "--latency", "60"]
    args = [*command, "--quirk", "not_ready_400", "--quirk", "position_1based", "--capacity", "1,2@600"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "quirks: not_ready_400, position_1based" in line and "capacity 1,2@600" in line, line
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        with httpx.Client(base_url=url.group(0), timeout=5) as api:
            ids = wait_for(lambda: _try_submit(api, 2))
            assert isinstance(ids, list)
            assert api.get(f"/v1/requests/{ids[0]}/result").status_code == 400
            assert api.get(f"/v1/requests/{ids[1]}/status").json()["queue_position"] == 1
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_zlab_serve_refuses_an_unknown_quirk() -> None:
    args = [sys.executable, "-m", "zlab.cli", "serve", "--port", "0", "--quirk", "sideways"]
    done_process = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done_process.returncode != 0
    assert "sideways" in done_process.stderr and "not_ready_400" in done_process.stderr


def _try_submit(api: httpx.Client, count: int) -> list[str] | None:
    try:
        return [submit(api) for _ in range(count)]
    except httpx.ConnectError:  # the line is printed just before uvicorn starts accepting
        return None


def test_faults_and_quirks_combine(srv: LocalServer, api: httpx.Client) -> None:
    srv.set_quirks(["not_ready_400", "output_list"])
    srv.set_faults(Faults(server_error=1.0, endpoints=("status",)))
    request_id = submit(api)
    assert api.get(f"/v1/requests/{request_id}/status").status_code == 500
    done(srv, request_id)
    assert api.get(f"/v1/requests/{request_id}/result").json()["output"] == [
        f"{srv.base_url}/files/{request_id}/image.png"
    ]


def _careful(call: Callable[[], httpx.Response], retry: tuple[int, ...] = (429, 503)) -> httpx.Response:
    """One call, repeated while a rate limiter or load balancer answers instead of the service."""
    deadline = time.monotonic() + 10
    while (answer := call()).status_code in retry:
        assert time.monotonic() < deadline, "the service never answered"
    return answer


def test_a_careful_client_finishes_a_sweep_under_strict() -> None:
    """`strict` is hard but fair: a client that handles every variant collects every image, paying once each."""
    sizes = [(784, 1168), (512, 512), (1024, 800)]
    with LocalServer(token=TOKEN, latency=0.02, capacity=2, quirks=["strict", "seed=3"]) as srv, client(srv) as api:
        ids = []
        for seed, (width, height) in enumerate(sizes):
            body = {**SMALL, "seed": seed, "width": width, "height": height}
            answer = _careful(lambda body=body: api.post(SUBMIT, json=body), retry=(429,))  # never resend after a 5xx
            assert answer.status_code == 200 and answer.json()["error_code"] is None
            ids.append(answer.json()["request_id"])
        for request_id, (width, height) in zip(ids, sizes, strict=True):
            wait_for(
                lambda rid=request_id: (
                    _careful(lambda: api.get(f"/v1/requests/{rid}/status")).json()["status"] == "completed"
                )
            )
            result = _careful(lambda rid=request_id: api.get(f"/v1/requests/{rid}/result"))
            assert result.json()["status"] == "completed"
            [item] = result.json()["output"]["images"]
            image = httpx.get(item["url"], follow_redirects=True)  # no token: a file host is not the API
            assert image.headers["content-type"] == "binary/octet-stream"
            assert Image.open(io.BytesIO(image.content)).size == (width // 32 * 32, height // 32 * 32)
        assert set(srv.stats.accepted().values()) == {1} and srv.stats.file_auth == 0
