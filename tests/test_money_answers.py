"""Issue 18's scenarios about answers no one listed, each through the real client: a stand-in service
(httpx.MockTransport, the transport seam every AsyncClient takes) or the local server in a named dialect.

Each test failed before tolerant reading and the completed money rule, and passes now.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from zlab import errors
from zlab.client import AsyncClient, Client
from zlab.core.protocol import parse_retry_after
from zlab.core.request import Request
from zlab.core.retry import RetryPolicy, backoff_s
from zlab.runs.sweep import Sweep
from zlab.server import Faults, LocalServer
from zlab.server.dialect import Dialect

SMALL = Request("a fox", loras=[], width=256, height=256, seed=3)
SWEEP = Sweep(SMALL, {"seed": [1, 2, 3, 4]})
QUICK = RetryPolicy(base_s=0.005, cap_s=0.05, rate_limit_default_s=0.05, lag_first_s=0.05)


def png(size: tuple[int, int] = (256, 256)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png()).decode()


class StandIn:
    """A stand-in service: `submit(n)` answers the n-th POST; polls say completed with a data: URI image."""

    def __init__(self, submit, *, status=None, result=None) -> None:
        self.posts, self.calls, self.paths = 0, [], []
        self._submit, self._status, self._result = submit, status, result

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        self.paths.append(path)
        if request.method == "POST" and "/v1/models/" in path:
            self.posts += 1
            return self._submit(self.posts)
        rid = path.split("/")[3] if path.startswith("/v1/requests/") else ""
        if path.endswith("/status"):
            return self._status(rid) if self._status else httpx.Response(200, json={"status": "completed"})
        if path.split("?")[0].endswith("/result"):
            if self._result:
                return self._result(rid)
            return httpx.Response(200, json={"status": "succeeded", "output": {"image": data_uri()}})
        if path.endswith("/cancel"):
            return httpx.Response(202, json={"outcome": "not_cancellable"})
        return httpx.Response(404, json={"error_code": 404001})


def client_for(service: StandIn, retry: RetryPolicy = QUICK) -> Client:
    return Client(token="t", base_url="http://api.test", transport=httpx.MockTransport(service), retry=retry)


def run(client: Client, out: Path, sweep: Sweep = SWEEP, **kw):
    return client.run(sweep, out, progress=False, cache=False, sheet=False, **kw)


# The money rule, completed -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, "", "0", 500001])
def test_a_2xx_naming_a_request_id_is_a_job_whatever_its_error_code(tmp_path, code):
    service = StandIn(lambda n: httpx.Response(200, json={"request_id": f"job-{n}", "error_code": code}))
    with client_for(service) as client:
        for _ in range(3):
            result = run(client, tmp_path / "run")
    assert result.ok and service.posts == 4  # 4 cells, 3 runs: paid once each (it was 12)


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"request_id": "x", "n": ' + b"7" * 5000 + b"}", b"\xff\xfe{"],
    ids=["deep_nesting", "huge_number", "bad_utf8"],
)
def test_a_submit_answer_python_cannot_parse_is_unknown_never_resent(tmp_path, body):
    service = StandIn(lambda n: httpx.Response(200, content=body, headers={"Content-Type": "application/json"}))
    with client_for(service) as client:
        with pytest.raises(errors.SubmitUnknownError):
            client.generate(SMALL, timeout=10)
        first = run(client, tmp_path / "run")
        again = run(client, tmp_path / "run")
    assert (first.df.status == "unknown").all() and (again.df.status == "unknown").all()
    assert service.posts == 1 + len(SWEEP.cells())  # each sent once, then held


@pytest.mark.parametrize("request_id", [".", "..", "a/../b", "%2E%2E"])
def test_every_request_id_round_trips_to_its_own_path(request_id):
    service = StandIn(lambda n: httpx.Response(200, json={"request_id": request_id}))
    with client_for(service) as client:
        gen = client.generate(SMALL, timeout=10)
    assert gen.request_id == request_id
    polled = {p.split("?")[0].rsplit("/", 1)[0] for p in service.paths if p.startswith("/v1/requests/")}
    assert len(polled) == 1  # status and result asked at one path, which names this id, never /v1/status
    assert unquote(polled.pop().removeprefix("/v1/requests/")) == request_id


@pytest.mark.parametrize("retry_after", ["0", "-3", "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_a_retry_after_of_zero_or_in_the_past_uses_zlabs_own_backoff(retry_after):
    assert backoff_s(QUICK, 1, "rate_limited", parse_retry_after(retry_after)) >= QUICK.rate_limit_default_s / 2
    storm_until = time.monotonic() + 1.0  # a storm of 429s with that header, for a second

    def submit(n: int) -> httpx.Response:
        if time.monotonic() < storm_until:
            return httpx.Response(429, json={"error_code": 429}, headers={"Retry-After": retry_after})
        return httpx.Response(200, json={"request_id": f"job-{n}"})

    service = StandIn(submit)
    with client_for(service, dataclasses.replace(QUICK, cap_s=2.0)) as client:
        assert client.generate(SMALL, timeout=30).request_id.startswith("job-")  # ridden out, not 8 tries in 0.1 s


def test_submitting_is_written_at_the_wire_not_before_a_429_pause(tmp_path):
    """Cells that never left (held by another call's 429 pause) stay planned: a crash then costs nothing."""
    paused = asyncio.Event()

    def submit(n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(429, json={"error_code": 429}, headers={"Retry-After": "60"})
        return httpx.Response(200, json={"request_id": f"job-{n}"})

    service = StandIn(submit)

    async def interrupted_run() -> None:
        async with AsyncClient("t", "http://api.test", transport=httpx.MockTransport(service), retry=QUICK) as c:
            task = asyncio.ensure_future(c.run(SWEEP, tmp_path / "run", progress=False, cache=False, sheet=False,
                                               concurrency=4, on_interrupt="return", echo=lambda s: None))  # fmt: skip
            while service.posts < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # the other three cells are now waiting out the pause, unsent
            paused.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(interrupted_run())
    assert paused.is_set() and service.posts == 1
    with client_for(StandIn(lambda n: httpx.Response(200, json={"request_id": f"again-{n}"}))) as client:
        rerun = run(client, tmp_path / "run")
    assert rerun.ok  # the refused cell and the never-sent ones are sent, none held as unknown


# Errors wherever they sit ----------------------------------------------------------------------------


def test_a_balance_code_beats_the_http_status_it_came_with(tmp_path):
    def submit(n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(200, json={"request_id": "job-1"})
        return httpx.Response(403, json={"error_code": 400002, "error_message": "insufficient balance"})

    service = StandIn(submit)
    with client_for(service) as client:
        result = run(client, tmp_path / "run", concurrency=1)
    assert result.exit_code == 4 and service.posts == 2 and "balance" in result.summary()
    assert "RUNCOMFY_TOKEN" not in result.summary()


def test_a_rate_limit_code_on_an_http_200_is_waited_out():
    def submit(n: int) -> httpx.Response:
        if n <= 2:
            return httpx.Response(200, json={"error_code": 429, "error_message": "too many requests"})
        return httpx.Response(200, json={"request_id": "job-3"})

    service = StandIn(submit)
    with client_for(service) as client:
        assert client.generate(SMALL, timeout=10).request_id == "job-3"


@pytest.mark.parametrize("status", [500, 422])
def test_a_failed_job_reported_only_as_an_http_error_on_result_is_failed_at_once(tmp_path, status):
    service = StandIn(
        lambda n: httpx.Response(200, json={"request_id": f"job-{n}"}),
        result=lambda rid: httpx.Response(status, json={"detail": "CUDA out of memory while sampling"}),
    )
    with client_for(service) as client:
        result = run(client, tmp_path / "run")
    assert (result.df.status == "failed").all() and result.df.error.str.contains("CUDA out of memory").all()
    results = [p for p in service.paths if "/result" in p]
    assert len(results) == len(SWEEP.cells())  # one answer each, not 8 retries


# Status words and outputs zlab does not know ---------------------------------------------------------


def test_an_unknown_status_word_strands_nothing_and_is_named_once(tmp_path):
    words = {}

    def status(rid: str) -> httpx.Response:
        words[rid] = words.get(rid, 0) + 1
        return httpx.Response(200, json={"status": "WARMING_UP" if words[rid] < 3 else "Completed"})

    service = StandIn(lambda n: httpx.Response(200, json={"request_id": f"job-{n}"}), status=status)
    with client_for(service) as client:
        lines: list[str] = []
        result = run(client, tmp_path / "run", echo=lines.append)
    assert result.ok and service.posts == 4
    said = [line for line in "\n".join(lines).splitlines() if "WARMING_UP" in line]
    assert len(said) == 1 and "4 job(s)" in said[0]


@pytest.mark.parametrize(
    "output",
    [
        {"9": {"images": [{"filename": "ComfyUI_0001.png", "subfolder": "", "type": "output", "url": "{u}"}]}},
        [{"uri": "{u}", "content_type": "image/png"}],
        {"SaveImage": "{u}"},
    ],
    ids=["by_node", "uri_objects", "by_name"],
)
def test_outputs_in_any_envelope_are_found_and_counted(tmp_path, output):
    def result(rid: str) -> httpx.Response:
        body = json.loads(json.dumps(output).replace("{u}", data_uri()))
        return httpx.Response(200, json={"status": "COMPLETED", "outputs": body, "extra": [data_uri()]})

    service = StandIn(lambda n: httpx.Response(200, json={"request_id": f"job-{n}"}), result=result)
    with client_for(service) as client:
        done = run(client, tmp_path / "run")
    assert done.ok and all((tmp_path / "run" / p).is_file() for p in done.df.image_path)


def test_two_images_in_a_result_keep_the_first_and_say_how_many():
    two = {"status": "succeeded", "output": [data_uri(), "https://cdn.invalid/second.png"]}
    service = StandIn(
        lambda n: httpx.Response(200, json={"request_id": "job"}), result=lambda r: httpx.Response(200, json=two)
    )
    with client_for(service) as client:
        gen = client.generate(SMALL, timeout=10)
    assert gen.outputs == 2 and "2 images" in (gen.note or "")


# Lag is not loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["404", "empty", "not_ready", "in_progress"])
def test_a_result_that_trails_status_by_a_second_costs_at_most_8_calls_per_image(tmp_path, form):
    dialect = dataclasses.replace(Dialect.from_seed(3), lag_s=1.0, lag_form=form, not_ready="detail_404")
    with LocalServer(latency=0.0) as srv, Client(base_url=srv.base_url) as client:
        srv.set_dialect(dialect)
        result = run(client, tmp_path / "run")
        polls = srv.stats.calls["status"] + srv.stats.calls["result"]
    assert result.ok and set(srv.stats.accepted().values()) == {1}
    assert polls <= 8 * len(SWEEP.cells()), dict(srv.stats.calls)


# Deadlines end to end ----------------------------------------------------------------------------------


def test_generate_timeout_covers_a_trickling_download():
    faults = Faults(trickle=1.0, trickle_on=("file",))
    with LocalServer(latency=0.0, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        with pytest.raises(errors.DownloadError, match="--collect") as info:
            client.generate(SMALL, timeout=2)
        request_id = srv.stats.submissions[0].request_id
        assert request_id in str(info.value) and srv.stats.calls["submit"] == 1
        srv.set_faults(Faults())
        again = client.job(request_id).download(10)  # collected by its id: never paid again
    assert again.size == (256, 256) and srv.stats.calls["submit"] == 1
