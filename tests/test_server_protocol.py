"""The local server speaks RunComfy's queue protocol: shapes, codes, queueing, cancel, timing, expiry.

Every test talks to a real LocalServer over loopback HTTP with httpx.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from gates import Gate
from PIL import Image
from waiting import wait_for

from zlab.core.request import MODEL_ID, Request
from zlab.errors import ConfigError
from zlab.server import Latency, LocalServer

SUBMIT = f"/v1/models/{MODEL_ID}"
SMALL = {"prompt": "a red fox", "width": 256, "height": 320, "seed": 1}
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,}$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def client(srv: LocalServer, token: str | None = "tok-a") -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=srv.base_url, headers=headers, timeout=5.0)


@pytest.fixture(scope="module")
def shared() -> Iterator[LocalServer]:
    with LocalServer(token="tok-a", tokens=("tok-b",), latency=0.05, capacity=4) as srv:
        yield srv


@pytest.fixture
def srv(shared: LocalServer) -> Iterator[LocalServer]:
    shared.stats.reset()
    yield shared
    shared.set_faults()


@pytest.fixture
def api(srv: LocalServer) -> Iterator[httpx.Client]:
    with client(srv) as c:
        yield c


def submit(api: httpx.Client, **changes: object) -> str:
    answer = api.post(SUBMIT, json={**SMALL, **changes})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["request_id"])


def finished(api: httpx.Client, request_id: str) -> dict:
    return wait_for(lambda: (r := api.get(f"/v1/requests/{request_id}/result").json())["status"] != "in_progress" and r)


def test_submit_answers_an_unguessable_id_and_absolute_urls(srv: LocalServer, api: httpx.Client) -> None:
    answer = api.post(SUBMIT, json=SMALL)
    body = answer.json()
    assert answer.status_code == 200
    assert set(body) == {"request_id", "status_url", "result_url", "cancel_url"}
    rid = body["request_id"]
    assert REQUEST_ID.match(rid)
    root = f"{srv.base_url}/v1/requests/{rid}"
    assert (body["status_url"], body["result_url"], body["cancel_url"]) == (
        f"{root}/status",
        f"{root}/result",
        f"{root}/cancel",
    )
    assert submit(api) != rid


def test_a_job_goes_from_in_progress_to_completed_with_a_downloadable_image(srv: LocalServer) -> None:
    # 1 s: long enough that the three calls below see it running even on a busy machine
    with LocalServer(latency=1.0, capacity=1) as slow, client(slow, token=None) as api:
        rid = submit(api)
        status = api.get(f"/v1/requests/{rid}/status").json()
        assert status == {
            "request_id": rid,
            "status": "in_progress",
            "status_url": f"{slow.base_url}/v1/requests/{rid}/status",
            "result_url": f"{slow.base_url}/v1/requests/{rid}/result",
        }
        assert api.get(f"/v1/requests/{rid}/result").json() == {"request_id": rid, "status": "in_progress"}
        result = finished(api, rid)
        assert result["status"] == "succeeded"
        assert set(result) == {"request_id", "status", "output", "created_at", "finished_at"}
        assert ISO.match(result["created_at"]) and ISO.match(result["finished_at"])
        took = datetime.fromisoformat(result["finished_at"]) - datetime.fromisoformat(result["created_at"])
        assert 0.99 < took.total_seconds() < 4  # the 1 s run (late only when the machine is busy)
        status = api.get(f"/v1/requests/{rid}/status").json()
        assert status["status"] == "completed" and "queue_position" not in status
        url = result["output"]["image"]
        assert url == f"{slow.base_url}/files/{rid}/image.png"
        image = httpx.get(url)  # no Authorization header: output files are public, like a CDN
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (256, 320)


def test_queue_positions_count_the_jobs_ahead_and_fall_as_jobs_finish() -> None:
    gate = Gate(capacity=1, seeds=range(4))  # each job ends when the test opens its gate
    with LocalServer(renderer=gate) as srv, client(srv, token=None) as api:
        ids = [submit(api, seed=i) for i in range(4)]

        def states() -> list[tuple[str, int | None]]:
            bodies = [api.get(f"/v1/requests/{rid}/status").json() for rid in ids]
            return [(b["status"], b.get("queue_position")) for b in bodies]

        assert states() == [("in_progress", None), ("in_queue", 0), ("in_queue", 1), ("in_queue", 2)]
        gate.open(0)
        wait_for(lambda: states()[0][0] == "completed")
        assert states()[1:] == [("in_progress", None), ("in_queue", 0), ("in_queue", 1)]
        gate.open(1)
        wait_for(lambda: states()[1][0] == "completed")
        assert states()[2:] == [("in_progress", None), ("in_queue", 0)]


def test_capacity_bounds_how_many_jobs_run_at_once() -> None:
    gate = Gate(capacity=2, seeds=range(5))
    with LocalServer(renderer=gate) as srv, client(srv, token=None) as api:
        ids = [submit(api, seed=i) for i in range(5)]

        def running() -> list[str]:
            return [api.get(f"/v1/requests/{rid}/status").json()["status"] for rid in ids]

        assert running() == ["in_progress"] * 2 + ["in_queue"] * 3
        gate.open(0)  # job 3 takes the freed slot at once; the other two wait
        wait_for(lambda: running()[0] == "completed")
        assert running()[1:] == ["in_progress"] * 2 + ["in_queue"] * 2
        for seed in range(1, 5):
            gate.open(seed)
        wait_for(lambda: all(srv.stats.job(rid).state == "succeeded" for rid in ids))
        jobs = [srv.stats.job(rid) for rid in ids]
        assert jobs[2].started_at is not None and jobs[2].started_at >= jobs[0].finished_at


def test_synthetic_jobs_run_for_their_latency_and_queued_ones_start_as_others_finish() -> None:
    with LocalServer(latency=0.2, capacity=2) as srv, client(srv, token=None) as api:
        ids = [submit(api, seed=i) for i in range(3)]
        wait_for(lambda: all(srv.stats.job(rid).state == "succeeded" for rid in ids))
        jobs = [srv.stats.job(rid) for rid in ids]
        # The timer fires at start + latency, never before (later only on a busy machine).
        assert all(0.2 <= j.finished_at - j.started_at < 3 for j in jobs)
        assert jobs[2].started_at >= min(jobs[0].finished_at, jobs[1].finished_at) - 0.001  # it waited for a slot


def test_cancel_cancels_a_queued_job_and_leaves_a_running_one() -> None:
    with LocalServer(latency=0.4, capacity=1) as srv, client(srv, token=None) as api:
        running, queued, behind = (submit(api, seed=i) for i in range(3))
        answer = api.post(f"/v1/requests/{queued}/cancel")
        assert answer.status_code == 202
        assert answer.json() == {"request_id": queued, "status": "cancelled", "outcome": "cancelled"}
        again = api.post(f"/v1/requests/{queued}/cancel")  # twice: a no-op, never an error
        assert again.status_code == 202 and again.json()["outcome"] == "cancelled"
        assert api.get(f"/v1/requests/{queued}/status").json()["status"] == "cancelled"
        assert api.get(f"/v1/requests/{queued}/result").json() == {"request_id": queued, "status": "cancelled"}
        assert api.get(f"/v1/requests/{behind}/status").json()["queue_position"] == 0
        refused = api.post(f"/v1/requests/{running}/cancel")
        assert refused.status_code == 202
        assert refused.json() == {"request_id": running, "status": "in_progress", "outcome": "not_cancellable"}
        assert finished(api, running)["status"] == "succeeded"
        done = api.post(f"/v1/requests/{running}/cancel").json()
        assert (done["status"], done["outcome"]) == ("completed", "not_cancellable")
        assert srv.stats.calls["cancel"] == 4


@pytest.mark.parametrize("latency", [0.05, 0.25])
def test_a_job_finishes_within_milliseconds_of_its_latency(latency: float) -> None:
    with LocalServer(latency=latency, capacity=2) as srv, client(srv, token=None) as api:
        ids = [submit(api, seed=i) for i in range(2)]
        wait_for(lambda: all(srv.stats.job(rid).finished_at for rid in ids))
        for rid in ids:
            job = srv.stats.job(rid)
            assert latency <= job.finished_at - job.started_at < latency + 0.015
            assert abs(job.finished_mono - time.monotonic() + (time.time() - job.finished_at)) < 0.05


def test_latency_per_megapixel_scales_with_the_image_size() -> None:
    with LocalServer(latency="0.02+0.2/mp") as srv, client(srv, token=None) as api:
        big = submit(api, width=1024, height=1024)
        wait_for(lambda: srv.stats.job(big).finished_at)
        job = srv.stats.job(big)
        assert job.latency == pytest.approx(0.02 + 0.2 * 1.048576)
        assert job.latency <= job.finished_at - job.started_at < job.latency + 0.015


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.5", Latency(0.5)), ("0.5+0.2/mp", Latency(0.5, 0.2)), ("0.2/mp", Latency(0.0, 0.2)), (1, Latency(1.0))],
)
def test_latency_parses_seconds_and_per_megapixel_forms(text: str, expected: Latency) -> None:
    assert Latency.parse(text) == expected
    assert Latency.parse(str(expected)) == expected


@pytest.mark.parametrize("bad", ["", "fast", "-1", "0.5+", "1/px"])
def test_latency_rejects_what_it_cannot_read(bad: str) -> None:
    with pytest.raises(ConfigError, match="latency"):
        Latency.parse(bad)


def test_missing_or_wrong_token_is_401(srv: LocalServer, api: httpx.Client) -> None:
    rid = submit(api)
    for token in (None, "wrong"):
        with client(srv, token) as other:
            for answer in (
                other.post(SUBMIT, json=SMALL),
                other.get(f"/v1/requests/{rid}/status"),
                other.get(f"/v1/requests/{rid}/result"),
                other.post(f"/v1/requests/{rid}/cancel"),
            ):
                assert answer.status_code == 401
                assert answer.json()["error_code"] == 400004
    assert len(srv.stats.submissions) == 1


def test_another_tokens_request_is_403_and_unknown_ids_are_404(srv: LocalServer, api: httpx.Client) -> None:
    rid = submit(api)
    with client(srv, "tok-b") as other:
        for answer in (
            other.get(f"/v1/requests/{rid}/status"),
            other.get(f"/v1/requests/{rid}/result"),
            other.post(f"/v1/requests/{rid}/cancel"),
        ):
            assert (answer.status_code, answer.json()["error_code"]) == (403, 403001)
        mine = submit(other)
        assert other.get(f"/v1/requests/{mine}/status").status_code == 200
    missing = api.get("/v1/requests/NoSuchRequest123/status")
    assert (missing.status_code, missing.json()["error_code"]) == (404, 404001)
    owners = {s.request_id: s.token_hash for s in srv.stats.submissions}
    assert owners[rid] != owners[mine] and "tok-a" not in str(owners)


def test_unknown_model_is_404_with_400001(api: httpx.Client) -> None:
    answer = api.post("/v1/models/black-forest-labs/flux", json=SMALL)
    assert (answer.status_code, answer.json()["error_code"]) == (404, 400001)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**SMALL, "loras": [{"path": "a/b", "scale": 9}]}, ["body", "loras", 0, "scale"]),
        ({**SMALL, "loras": [{"path": "a/b", "scale": 1}, {"path": "", "scale": 1}]}, ["body", "loras", 1, "path"]),
        ({"width": 512}, ["body", "prompt"]),
        ({**SMALL, "height": 100}, ["body", "height"]),
        ({**SMALL, "seed": "7"}, ["body", "seed"]),
        ({**SMALL, "steps": 8}, ["body", "steps"]),
        (["not", "an", "object"], ["body"]),
    ],
)
def test_schema_violations_are_422_with_the_field_in_detail(srv: LocalServer, api: httpx.Client, body, loc) -> None:
    answer = api.post(SUBMIT, json=body)
    assert answer.status_code == 422
    payload = answer.json()
    assert payload["error_code"] == 422 and payload["error_message"]
    assert [d["loc"] for d in payload["detail"]] == [loc]
    assert all(d["msg"] for d in payload["detail"])
    assert srv.stats.submissions == []


def test_several_problems_are_all_reported(api: httpx.Client) -> None:
    answer = api.post(SUBMIT, json={"prompt": "", "width": 5, "loras": [{"path": "a/b", "scale": -1}]})
    locs = sorted(map(str, (d["loc"] for d in answer.json()["detail"])))
    assert locs == sorted(map(str, [["body", "prompt"], ["body", "width"], ["body", "loras", 0, "scale"]]))


@pytest.mark.parametrize("content", [b"{not json", b'{"prompt": NaN}', b"[" * 100_000, b"\xff\xfe{"])
def test_malformed_json_is_400(srv: LocalServer, api: httpx.Client, content: bytes) -> None:
    answer = api.post(SUBMIT, content=content, headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["error_code"]) == (400, 400)
    assert srv.stats.submissions == []


def test_a_body_over_one_mebibyte_is_413(srv: LocalServer, api: httpx.Client) -> None:
    answer = api.post(SUBMIT, json={**SMALL, "prompt": "x" * (1 << 20)})
    assert (answer.status_code, answer.json()["error_code"]) == (413, 413)
    assert api.post(SUBMIT, json={**SMALL, "prompt": "x" * 500_000}).status_code == 200  # under the limit
    assert len(srv.stats.submissions) == 1


def test_unknown_paths_and_methods_answer_an_error_body(api: httpx.Client) -> None:
    assert api.get("/v2/whatever").json()["error_code"] == 404
    assert api.delete(SUBMIT).status_code == 405
    assert api.get(SUBMIT).json()["error_code"] == 400001  # GET is the price, published only with `price=…`


def test_ids_expire_after_the_configured_age() -> None:
    with LocalServer(expire_after=0.3) as srv, client(srv, token=None) as api:
        rid = submit(api)
        url = finished(api, rid)["output"]["image"]
        assert httpx.get(url).status_code == 200
        time.sleep(0.35)
        for answer in (api.get(f"/v1/requests/{rid}/status"), api.get(f"/v1/requests/{rid}/result")):
            assert (answer.status_code, answer.json()["error_code"]) == (404, 404001)
        assert httpx.get(url).status_code == 404


def test_stats_record_calls_and_each_accepted_submit(srv: LocalServer, api: httpx.Client) -> None:
    ids = [submit(api, seed=s) for s in (1, 2, 1)]
    for rid in ids:
        finished(api, rid)
    submissions = srv.stats.submissions
    assert [s.request_id for s in submissions] == ids
    assert submissions[0].input == Request(**SMALL).to_input()
    assert srv.stats.accepted() == {Request(**SMALL).key: 2, Request(**{**SMALL, "seed": 2}).key: 1}
    calls = srv.stats.calls
    assert calls["submit"] == 3 and calls["result"] >= 3 and "file" not in calls
    assert all(srv.stats.job(rid).state == "succeeded" for rid in ids)


def test_a_seed_of_minus_one_gives_a_different_image_each_time(api: httpx.Client) -> None:
    urls = [finished(api, submit(api, seed=-1))["output"]["image"] for _ in range(2)]
    first, second = (httpx.get(url).content for url in urls)
    assert first != second


def test_the_token_stays_out_of_reprs() -> None:
    srv = LocalServer(token="s3cret-token", tokens=("other-s3cret",))
    with srv:
        assert "s3cret" not in repr(srv) and "token required" in repr(srv)
        assert "s3cret" not in repr(srv.__dict__)
    assert "stopped" in repr(srv)


def test_no_log_line_carries_the_token_or_an_access_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with LocalServer(token="s3cret-token") as srv, client(srv, "s3cret-token") as api:
        rid = submit(api)
        finished(api, rid)
        with client(srv, "wrong-s3cret") as other:
            assert other.get(f"/v1/requests/{rid}/status").status_code == 401
    assert "s3cret" not in caplog.text
    server_lines = [r.getMessage() for r in caplog.records if r.name.startswith(("uvicorn", "starlette", "zlab"))]
    assert not [line for line in server_lines if rid in line]  # no access log


def test_serve_prints_its_url_and_answers_there() -> None:
    code = "from zlab.server import serve; serve(port=0, token='t0k', latency=0.01)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url and "t0k" not in line, line
        with httpx.Client(base_url=url.group(0), headers={"Authorization": "Bearer t0k"}, timeout=5) as api:
            rid = wait_for(lambda: _try_submit(api))
            assert finished(api, rid)["status"] == "succeeded"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _try_submit(api: httpx.Client) -> str | None:
    try:
        return submit(api)
    except httpx.ConnectError:  # the line is printed just before uvicorn starts accepting
        return None
