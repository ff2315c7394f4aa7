"""The client against the local server over real loopback HTTP: generate, jobs, faults, errors, secrets."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import httpx
import pytest

from zlab import errors
from zlab.client import AsyncClient, Client
from zlab.core.config import RUNCOMFY_BASE_URL, resolve_settings
from zlab.core.request import MODEL_ID, LoRA, Request
from zlab.core.retry import RetryPolicy
from zlab.server import Faults, LocalServer

SMALL = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 0.7)], width=256, height=384, seed=3)


def test_generate_returns_the_image_and_its_metadata(server):
    with Client(base_url=server.base_url) as client:
        gen = client.generate(SMALL)
    assert gen.image.size == (256, 384)
    assert gen.request == SMALL and gen.url.startswith(server.base_url)
    assert gen.run_s == pytest.approx(0.05, abs=0.03) and gen.queue_s == 0
    assert server.stats.accepted() == {SMALL.key: 1}
    assert server.stats.submissions[0].input == SMALL.to_input()  # every field sent explicitly


def test_no_token_and_no_url_starts_the_builtin_server(capsys):
    with Client() as client:
        gen = client.generate(SMALL)
        assert client.base_url.startswith("http://127.0.0.1:")
    assert gen.image.size == (256, 384)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "built-in local server" in err


def test_sync_facade_works_inside_a_running_event_loop(server):
    """As in Jupyter: the caller's thread already runs a loop, so asyncio.run is not allowed there."""

    async def notebook_cell():
        asyncio.get_running_loop()  # a loop is running, as in a notebook
        with Client(base_url=server.base_url) as client:
            return client.generate(SMALL)

    assert asyncio.run(notebook_cell()).image.size == (256, 384)


def test_async_client_jobs(server):
    async def main():
        async with AsyncClient(base_url=server.base_url) as client:
            job = await client.submit(SMALL)
            outcome = await job.wait(timeout=10)
            again = await client.job(job.request_id).result()
            return job, outcome, again

    job, outcome, again = asyncio.run(main())
    assert outcome.phase == "succeeded" and again.outputs == outcome.outputs
    assert repr(job).startswith("Job(request_id=")


def test_raw_dict_input_for_other_models(server):
    with Client(base_url=server.base_url) as client:
        with pytest.raises(errors.NotFoundError, match="model id"):
            client.submit({"prompt": "x"}, model="someone/other-model")
        with pytest.raises(errors.ConfigError, match="pass a dict"):
            client.submit(SMALL, model="someone/other-model")


def test_cancel_outcomes_and_queue_positions():
    with LocalServer(latency=2.0, capacity=1) as srv, Client(base_url=srv.base_url) as client:
        running, queued = client.submit(SMALL), client.submit(SMALL.replace(seed=4))
        assert queued.status().phase == "queued" and queued.status().queue_position == 0
        assert queued.cancel() == "cancelled"
        assert queued.cancel() == "cancelled"  # twice: a no-op, never an error
        assert queued.status().phase == "cancelled"
        assert running.cancel() == "not_cancellable"
        with pytest.raises(errors.JobCancelled):
            queued.wait(timeout=5)


def test_wait_has_a_deadline_and_generate_cancels_a_queued_job():
    with LocalServer(latency=5.0, capacity=1) as srv, Client(base_url=srv.base_url) as client:
        first = client.submit(SMALL)
        start = time.monotonic()
        with pytest.raises(errors.WaitTimeout) as info:
            first.wait(timeout=0.3)
        assert time.monotonic() - start < 5 and info.value.request_id == first.request_id  # not the 5 s job's end
        with pytest.raises(errors.WaitTimeout, match="cancel outcome: cancelled"):
            client.generate(SMALL.replace(seed=9), timeout=0.3)


def test_failed_job_raises_with_its_request_id():
    with LocalServer(latency=0.01, faults=Faults(job_failure=1.0)) as srv, Client(base_url=srv.base_url) as client:
        with pytest.raises(errors.JobFailed) as info:
            client.generate(SMALL)
    assert info.value.request_id and info.value.detail


@pytest.mark.parametrize(
    "faults",
    [
        Faults(seed=1, rate_limited=0.4, retry_after=0.05),
        Faults(seed=2, rate_limited_bare=0.3),
        Faults(seed=3, server_error=0.3, unavailable=0.3, endpoints=("status", "result", "cancel")),
        Faults(seed=4, error_body=0.4, endpoints=("status", "result", "cancel")),
        Faults(seed=5, drop_poll=0.4, drop_mode="close"),
        Faults(seed=6, drop_poll=0.4, drop_mode="truncate"),
        Faults(seed=7, file_error=0.25, file_unavailable=0.15),
        Faults(seed=8, file_delay=0.2),
    ],
    ids=["429", "429-bare", "5xx", "error-body", "drop", "truncate", "cdn-errors", "slow-file"],
)
def test_generations_complete_through_faults_and_no_submit_is_accepted_twice(faults):
    with LocalServer(latency=0.02, capacity=4, faults=faults) as srv:
        with Client(base_url=srv.base_url, retry=RetryPolicy(base_s=0.01, rate_limit_default_s=0.05)) as c:
            gens = [c.generate(SMALL.replace(seed=s)) for s in range(6)]
        assert all(g.image.size == (256, 384) for g in gens)
        assert set(srv.stats.accepted().values()) == {1}
        assert sum(srv.stats.faults.values()) > 0 or faults.file_delay  # the faults really happened


@pytest.mark.parametrize(
    "faults",
    [Faults(server_error=1.0), Faults(unavailable=1.0), Faults(error_body=1.0)],
    ids=["500", "503", "200+code"],
)
def test_a_5xx_answer_to_a_submit_is_an_unknown_outcome_never_resent(faults):
    with LocalServer(latency=0.01, faults=faults.replace(endpoints=("submit",))) as srv:
        with Client(base_url=srv.base_url) as client, pytest.raises(errors.SubmitUnknownError, match="not resend"):
            client.generate(SMALL)
        assert srv.stats.calls["submit"] == 1  # sent once; the service may have created the job


def test_retry_after_is_honoured():
    faults = Faults(seed=11, rate_limited=0.5, retry_after=0.3, endpoints=("submit",))
    with LocalServer(latency=0.01, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        start = time.monotonic()
        for seed in range(4):
            client.generate(SMALL.replace(seed=seed))
        elapsed = time.monotonic() - start
    limited = srv.stats.faults.get("rate_limited", 0)
    assert limited > 0 and elapsed >= 0.3 * limited


def test_a_submit_whose_answer_is_lost_is_reported_not_resent():
    with LocalServer(latency=0.01, faults=Faults(drop_submit_after=1.0)) as srv, Client(base_url=srv.base_url) as c:
        with pytest.raises(errors.SubmitUnknownError, match="may exist and be billed"):
            c.submit(SMALL)
        assert srv.stats.calls["submit"] == 1 and srv.stats.accepted() == {SMALL.key: 1}


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("truncated", "not a valid image"),
        ("wrong_type", "not an image"),
        ("bomb", "refusing to decode"),
    ],
)
def test_bad_outputs_are_clear_errors(bad, words):
    with LocalServer(latency=0.01, faults=Faults(bad_output=bad)) as srv, Client(base_url=srv.base_url) as client:
        with pytest.raises(errors.DownloadError, match=words) as info:
            client.generate(SMALL)
    assert "collect it again with client.job(" in str(info.value)  # paid for: never just dropped
    assert info.value.url and info.value.url.startswith(srv.base_url)  # the advice keeps what the error knew


def test_a_non_http_output_url_is_never_fetched():
    faults = Faults(bad_output="non_http_url")
    with LocalServer(latency=0.01, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        with pytest.raises(errors.ProtocolError, match=r"no http\(s\) URL"):
            client.generate(SMALL)


def test_an_image_of_another_size_is_kept_with_a_note():
    faults = Faults(bad_output="wrong_size")
    with LocalServer(latency=0.01, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        gen = client.generate(SMALL)
    assert gen.image.size != (SMALL.width, SMALL.height) and gen.size == gen.image.size
    assert "rendered" in gen.note and f"{SMALL.width}×{SMALL.height}" in gen.note


def test_oversized_output_is_refused():
    faults = Faults(bad_output="oversized", oversized_bytes=(64 << 20) + 4096)
    with LocalServer(latency=0.01, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        with pytest.raises(errors.DownloadError, match="cap"):
            client.generate(SMALL)


def _tiny_png_uri() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (SMALL.width, SMALL.height), (200, 10, 10)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_an_unknown_status_is_followed_as_still_going_until_a_known_end():
    words = iter(["hibernating", "Hibernating", "COMPLETED"])
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": "r1"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"request_id": "r1", "status": next(words, "COMPLETED")})
        return httpx.Response(200, json={"status": "Done", "outputs": {"9": [{"url": _tiny_png_uri()}]}})

    with Client(token="t", base_url="http://api.test", transport=httpx.MockTransport(answer)) as client:
        gen = client.generate(SMALL, timeout=30)
    assert gen.size == (SMALL.width, SMALL.height) and calls.count("/v1/models/" + MODEL_ID) == 1


def test_an_unknown_status_that_never_ends_is_bounded_by_the_deadline():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            return httpx.Response(202, json={"request_id": "r1", "outcome": "not_cancellable"})
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": "r1"})
        return httpx.Response(200, json={"request_id": "r1", "status": "hibernating"})

    with Client(token="t", base_url="http://api.test", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(errors.WaitTimeout, match="r1"):
            client.generate(SMALL, timeout=1.5)


def test_auth_errors_say_what_to_do():
    with LocalServer(token="right-token") as srv:
        with Client(base_url=srv.base_url) as client, pytest.raises(errors.AuthError, match="RUNCOMFY_TOKEN"):
            client.submit(SMALL)
    with LocalServer(tokens=("alice", "bob")) as srv:
        with Client("alice", srv.base_url) as alice, Client("bob", srv.base_url) as bob:
            job = alice.submit(SMALL)
            with pytest.raises(errors.AuthError, match="another account"):
                bob.job(job.request_id).status()


def test_the_token_never_shows(caplog, capsys):
    canary = "canary-7f3a9c1e55d04b2b"
    caplog.set_level(logging.DEBUG)
    with LocalServer(token=canary, latency=0.01) as srv, Client(canary, srv.base_url) as client:
        gen = client.generate(SMALL)
        shown = [repr(client), repr(client.settings), repr(client.aclient.api), repr(gen), repr(srv)]
        caught = []
        for call in (lambda: client.job("nope").status(), lambda: client.submit({"prompt": ""})):
            try:
                call()
            except errors.ZlabError as exc:
                caught += [str(exc), repr(exc), repr(exc.__dict__)]
    out = capsys.readouterr()
    text = "\n".join([*shown, *caught, caplog.text, out.out, out.err])
    assert caught and canary not in text
    assert "**********" in repr(client.settings.token)


def test_settings_come_from_argument_then_environment():
    env = {"RUNCOMFY_TOKEN": "a", "RUNCOMFY_API_KEY": "b", "ZLAB_BASE_URL": "https://x.test/"}
    assert resolve_settings(env=env).token.reveal() == "a"
    assert resolve_settings(env={"RUNCOMFY_API_KEY": "b"}).token.reveal() == "b"
    assert resolve_settings("c", env=env).token.reveal() == "c"
    assert resolve_settings(env=env).base_url == "https://x.test"
    assert resolve_settings(env={"RUNCOMFY_TOKEN": "a"}).base_url == RUNCOMFY_BASE_URL
    assert resolve_settings(env={}).local and resolve_settings(env={**env, "ZLAB_BASE_URL": "local"}).local
    with pytest.raises(errors.ConfigError, match="http"):
        resolve_settings(env={"RUNCOMFY_TOKEN": "a", "ZLAB_BASE_URL": "ftp://x"})


def test_every_client_verifies_tls_through_one_shared_context():
    """Reading the CA bundle costs ~40 ms per HTTP client; every client of a process shares one context,
    and it verifies certificates and host names (a shortcut here would be a hole, not a speed-up)."""
    from zlab.api.http import tls

    first, second = AsyncClient(base_url="http://127.0.0.1:9"), AsyncClient(base_url="http://127.0.0.1:9")
    contexts = [
        transport._pool._ssl_context
        for client in (first, second)
        for transport in (client.api._http._transport.inner, client.downloads._http._transport)
    ]
    assert all(context is tls() for context in contexts)
    assert tls().verify_mode == ssl.CERT_REQUIRED and tls().check_hostname
