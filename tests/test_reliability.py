"""zlab's guarantees under every fault at once, fuzzed input, bad downloads and a canary token.

The figures these tests establish are quoted in the README's Reliability section.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zlab import cli, errors
from zlab.client import Client
from zlab.core.request import LoRA, Request
from zlab.core.retry import RetryPolicy
from zlab.runs.sweep import Sweep
from zlab.server import Faults, LocalServer

BASE = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256, seed=1)
FAST_RETRY = RetryPolicy(base_s=0.02, cap_s=0.5, rate_limit_default_s=0.05)
SOAK = Faults(
    seed=2026,
    rate_limited=0.04,
    rate_limited_bare=0.03,
    retry_after=0.1,
    server_error=0.03,
    unavailable=0.03,
    error_body=0.03,
    drop_poll=0.03,
    drop_submit_after=0.01,
    job_failure=0.05,
    file_error=0.05,
    file_unavailable=0.05,
    file_delay=0.01,
)


class Recorder(httpx.AsyncBaseTransport):
    """Notes when each API call was sent and answered, and each 429's Retry-After (the transport seam)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.log: list[tuple[float, float, int, float | None, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = await self.inner.handle_async_request(request)
        retry_after = response.headers.get("Retry-After")
        self.log.append(
            (
                sent,
                time.monotonic(),
                response.status_code,
                float(retry_after) if retry_after else None,
                request.url.path,
            )
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.slow
def test_fault_soak_every_cell_accounted_for_and_none_paid_twice(tmp_path):
    sweep = Sweep(BASE, axes={"lora1_scale": "0-2 [10]", "seed": list(range(20))})  # 200 cells
    recorder = Recorder()
    with LocalServer(latency=0.05, capacity=16, faults=SOAK) as srv:
        with Client(base_url=srv.base_url, retry=FAST_RETRY, transport=recorder) as client:
            first = client.run(sweep, tmp_path / "run", concurrency=16, progress=False, cache=False)
            stats = srv.stats
            failed_by_server = {s.key for s in stats.submissions if stats.job(s.request_id).state == "failed"}
            df = first.df
            assert len(df) == 200 and stats.faults.get("job_failure", 0) > 0
            assert set(stats.accepted().values()) == {1}, "a cell was accepted twice"
            assert set(df.key[df.status == "failed"]) == failed_by_server  # the only failures: the server's
            unknown = set(df.key[df.status == "unknown"])
            accepted = stats.accepted()
            # A lost answer, or a 5xx after the body left, is an unknown outcome: recorded, never resent.
            assert len([k for k in unknown if accepted[k] == 1]) == stats.faults.get("drop_submit_after", 0)
            assert all(accepted[k] <= 1 for k in unknown)
            assert (df.status[~df.key.isin(failed_by_server | unknown)] == "succeeded").all()
            assert sum(v for k, v in stats.faults.items() if k != "job_failure") >= 50  # faults of every kind hit

            srv.set_faults(Faults())
            submitted = len(stats.submissions)
            second = client.run(sweep, tmp_path / "run", concurrency=16, progress=False, cache=False)
            resent = {s.key for s in srv.stats.submissions[submitted:]}
    assert resent == failed_by_server and (second.df.status[~second.df.key.isin(unknown)] == "succeeded").all()
    # Retry-After is never undercut: after a 429 arrives, no API call leaves before its pause ends.
    api_calls = [entry for entry in recorder.log if entry[4].startswith("/v1/")]
    for _, answered, status, retry_after, _ in api_calls:
        if status == 429 and retry_after:
            early = [s for s, *_ in api_calls if answered < s < answered + retry_after - 0.005]
            assert not early, f"{len(early)} call(s) within Retry-After={retry_after}"


def test_bad_downloads_keep_the_paid_job_collectable_and_leave_no_file(tmp_path):
    for bad in ("truncated", "wrong_type", "bomb", "non_http_url"):
        with LocalServer(latency=0.01, faults=Faults(bad_output=bad)) as srv, Client(base_url=srv.base_url) as client:
            result = client.run(Sweep(BASE, axes={"seed": [1, 2]}), tmp_path / bad, progress=False, cache=False)
            assert (result.df.status == "pending").all(), bad  # accepted, with the reason: a rerun collects it
            assert result.df.error.str.contains("not collected yet").all(), bad
            assert list((tmp_path / bad / "images").iterdir()) == [], bad
            again = client.run(Sweep(BASE, axes={"seed": [1, 2]}), tmp_path / bad, progress=False, cache=False)
            assert set(srv.stats.accepted().values()) == {1}, bad  # never paid twice
            assert (again.df.status == "pending").all(), bad


def test_expired_ids_are_reported_never_paid_again_and_lost_after_bounded_tries(tmp_path):
    spec = Sweep(BASE, axes={"seed": [1, 2]})
    with LocalServer(latency=0.6, capacity=4, expire_after=0.2) as srv, Client(base_url=srv.base_url) as client:
        result = client.run(spec, tmp_path / "run", progress=False, cache=False)
        assert (result.df.status == "pending").all() and result.df.error.str.contains("expired").all()
        for _ in range(4):
            result = client.run(spec, tmp_path / "run", progress=False, cache=False)
        assert (result.df.status == "lost").all() and "--resend-lost" in result.summary()
        assert set(srv.stats.accepted().values()) == {1}
    with LocalServer(latency=0.05) as srv, Client(base_url=srv.base_url) as client:
        resent = client.run(spec, tmp_path / "run", progress=False, cache=False, resend_lost=True)
    assert resent.ok and set(srv.stats.accepted().values()) == {1}  # paid again only when asked


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
)
_spec = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=20), _values)},
    optional={
        "loras": st.one_of(_values, st.lists(st.fixed_dictionaries({"path": _values, "scale": _values}), max_size=4)),
        "width": _values,
        "height": _values,
        "seed": _values,
        "axes": st.one_of(
            _values,
            st.dictionaries(
                st.sampled_from(["lora1_scale", "lora2_path", "seed", "size", "width", "prompt", "lora_scale", "x"]),
                st.one_of(_values, st.sampled_from(["0-1 [3]", "0-9 [2]", "1-0 (+1)", "a-b", "512x512", "1x1"])),
                max_size=3,
            ),
        ),
        "zip": _values,
        "sheet": _values,
        "extra": _values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_spec)
def test_fuzzed_sweep_files_raise_only_zlab_errors(spec):
    try:
        Sweep.from_dict(spec)
    except errors.ZlabError as exc:
        assert str(exc)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_spec)
def test_fuzzed_sweep_files_exit_0_or_2_from_the_command(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli.main(["run", str(path), "--dry-run", "--out", str(path.parent / "o")]) in (0, 2)


@settings(max_examples=60, deadline=None)
@given(
    payload=st.fixed_dictionaries(
        {"prompt": st.one_of(st.text(max_size=8), _values)},
        optional={
            "loras": st.lists(
                st.fixed_dictionaries(
                    {"path": st.sampled_from(["a/b", "", "http://x", "https://x/l"]), "scale": _values}
                ),
                max_size=4,
            ),
            "width": _values,
            "seed": _values,
        },
    )
)
def test_client_and_server_agree_on_what_is_valid(payload):
    try:
        Request.from_input(payload)
        client_ok = True
    except errors.ValidationError:
        client_ok = False
    body = json.dumps(payload)  # not `json=`: httpx refuses NaN and infinities, which the fuzzer sends on purpose
    response = httpx.post(
        f"{AGREE.base_url}/v1/models/tongyi-mai/z-image/turbo/lora",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert (response.status_code == 200) == client_ok, (payload, response.text)


AGREE = LocalServer(latency=0.0, capacity=64)


def setup_module() -> None:
    AGREE.start()


def teardown_module() -> None:
    AGREE.stop()


@pytest.mark.slow
def test_a_canary_token_appears_nowhere(tmp_path, monkeypatch, capsys, caplog):
    canary = "canary-Zq81vX0pL4mN7bR2"
    forms = [canary.encode(), base64.b64encode(canary.encode()), canary[::-1].encode()]
    monkeypatch.setenv("RUNCOMFY_TOKEN", canary)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        'prompt: "t3chnic4lly fox"\nloras: [{path: a/b, scale: 1}]\nwidth: 256\nheight: 256\n'
        "axes: {lora1_scale: [0, 1], seed: [1, 2]}\nsheet: {x: lora1_scale, y: seed}\n"
    )
    with LocalServer(token=canary, latency=0.01) as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
        assert cli.main(["sheet", str(tmp_path / "run"), "--x", "lora1_scale", "--y", "seed", "--html"]) == 0
        with Client() as client:
            shown = repr(client) + repr(client.settings) + repr(client.aclient.api)
            try:
                client.job("missing").status()
            except errors.ZlabError as exc:
                shown += repr(exc) + str(exc)
    out = capsys.readouterr()
    shown += out.out + out.err + caplog.text
    assert not any(form.decode() in shown for form in forms)
    cache = Path(__import__("os").environ["ZLAB_CACHE_DIR"])
    files = [p for root in (tmp_path / "run", cache) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 8
    for path in files:
        data = path.read_bytes()
        assert not any(form in data for form in forms), path
