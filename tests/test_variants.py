"""Every answer the real RunComfy service may give (runcomfy-api.md's variant table), through `zlab run` and
`client.generate` against `zlab serve`'s quirks over loopback HTTP, judged by what a user gets: every image
collected and saved, each cell accepted at most once, no cell left pending, a bounded number of calls per job.
"""

from __future__ import annotations

import asyncio
import io

import pandas as pd
import pytest
from PIL import Image

from zlab import cli, errors
from zlab.client import AsyncClient, Client
from zlab.core.request import LoRA, Request
from zlab.core.retry import RetryPolicy
from zlab.runs.sweep import Sweep
from zlab.server import Faults, LocalServer

BASE = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256, seed=1)
SWEEP = Sweep(BASE, axes={"lora1_scale": [0, 0.5, 1.0], "seed": [1, 2]})  # 6 cells
FAST = RetryPolicy(base_s=0.01, cap_s=0.2, rate_limit_default_s=0.05)
MAX_POLLS_PER_JOB = 8  # status + result calls per image (the poller's own targets are far lower)

# Variants after which a correct client collects every image (the others have tests of their own below).
COLLECTED = [
    "not_ready_400",
    "position_1based",
    "position_missing",
    "position_null",
    "completed_result",
    "null_error_code",
    "output_images",
    "output_string",
    "output_list",
    "output_objects",
    "redirect_files",
    "jpeg_output",
    "webp_output",
    "generic_content_type",
    "snap16",
    "snap32",
    "status_failed",
    "cancel_canceled",
    "cancel_empty",
    "html_503=0.15",
    "rate_limit=0.15",
    "rate_limit_bare=0.15",
    "other_users=0.5",
    "strict",
]


def _server(quirks: list[str], **kw) -> LocalServer:
    return LocalServer(latency=kw.pop("latency", 0.1), capacity=kw.pop("capacity", 2), quirks=quirks, **kw)


@pytest.mark.parametrize("quirk", COLLECTED)
def test_a_sweep_collects_every_image_once(quirk, tmp_path):
    faults = Faults(retry_after=0.05)
    with _server(
        [quirk, "webp_output", "generic_content_type"] if quirk == "strict" else [quirk], faults=faults
    ) as srv:
        with Client(base_url=srv.base_url, retry=FAST) as client:
            result = client.run(SWEEP, tmp_path / "run", concurrency=3, progress=False, cache=False)
        accepted = srv.stats.accepted()
        polls = srv.stats.calls.get("status", 0) + srv.stats.calls.get("result", 0)
        file_auth = srv.stats.file_auth
    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert result.ok and (df.status == "succeeded").all(), df[["status", "error"]]
    assert set(accepted.values()) == {1} and set(accepted) == set(df.key)  # each cell paid exactly once
    assert polls <= MAX_POLLS_PER_JOB * len(df), f"{polls} status+result calls for {len(df)} jobs"
    assert file_auth == 0  # the token never goes to a file host
    for row in df.itertuples():
        path = tmp_path / "run" / row.image_path
        with Image.open(path) as image:
            image.load()
            assert path.suffix == {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[image.format]
            assert (image.width, image.height) == (row.image_width, row.image_height)


@pytest.mark.parametrize("quirk", COLLECTED)
def test_generate_under_each_variant(quirk):
    with _server([quirk], faults=Faults(retry_after=0.05)) as srv, Client(base_url=srv.base_url, retry=FAST) as c:
        gen = c.generate(BASE)
        assert srv.stats.file_auth == 0
    assert gen.image.size == (256, 256) and srv.stats.accepted() == {BASE.key: 1}
    with Image.open(io.BytesIO(gen.data)) as served:
        assert gen.suffix == {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[served.format]


def test_a_snapped_size_is_kept_with_its_real_size_and_a_note(tmp_path):
    sweep = Sweep(BASE, axes={"size": ["784x1168", "512x512"]})
    with _server(["snap32"]) as srv, Client(base_url=srv.base_url) as client:
        result = client.run(sweep, tmp_path / "run", progress=False, cache=False)
    df = result.df.set_index("size")
    assert result.ok and (df.image_width.to_dict(), df.image_height.to_dict()) == (
        {"784x1168": 768, "512x512": 512},
        {"784x1168": 1152, "512x512": 512},
    )
    assert "768×1152" in df.note["784x1168"] and pd.isna(df.note["512x512"])


def test_a_size_the_model_cannot_render_is_refused_before_anything_is_sent(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("prompt: fox\nwidth: 1000\nheight: 1024\naxes: {seed: [1, 2]}\n")
    with _server([]) as srv:
        code = cli.main(["run", str(spec), "--out", str(tmp_path / "run")])
        assert srv.stats.calls.get("submit", 0) == 0
    err = capsys.readouterr().err
    assert code == 2 and "width" in err and "1000" in err and "992 or 1008" in err


def test_a_5xx_after_the_job_was_created_is_never_resent(tmp_path):
    with _server(["submit_5xx_after_accept=0.5", "seed=3"]) as srv, Client(base_url=srv.base_url) as client:
        first = client.run(SWEEP, tmp_path / "run", concurrency=3, progress=False, cache=False)
        again = client.run(SWEEP, tmp_path / "run", concurrency=3, progress=False, cache=False)
        accepted = srv.stats.accepted()
    unknown = set(first.df.key[first.df.status == "unknown"])
    assert 0 < len(unknown) < len(SWEEP) and set(accepted.values()) == {1}  # created once, never again
    assert set(again.df.key[again.df.status == "unknown"]) == unknown and "--retry-unknown" in again.summary()
    assert (first.df.status[~first.df.key.isin(unknown)] == "succeeded").all()


def test_failed_jobs_say_why_and_are_not_left_pending(tmp_path):
    with _server(["status_failed"], faults=Faults(seed=4, job_failure=0.5)) as srv:
        with Client(base_url=srv.base_url) as client:
            result = client.run(SWEEP, tmp_path / "run", concurrency=3, progress=False, cache=False)
    failed = result.df[result.df.status == "failed"]
    assert len(failed) > 0 and set(result.df.status) <= {"succeeded", "failed"}
    assert failed.error.str.contains("Model run failed").all() and "job failed on the server" in result.summary()


@pytest.mark.parametrize("quirks", [[], ["auth_403_message"]], ids=["401", "403+message"])
def test_a_refused_token_stops_all_sending_at_once(quirks, tmp_path, monkeypatch, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("prompt: fox\nwidth: 256\nheight: 256\naxes: {seed: [1, 2, 3, 4, 5, 6, 7, 8]}\n")
    with _server(quirks, token="the-right-one") as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        monkeypatch.setenv("RUNCOMFY_TOKEN", "a-wrong-one")
        code = cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--concurrency", "2"])
        submits = srv.stats.calls.get("submit", 0)
    err = capsys.readouterr().err
    assert code == 3 and submits <= 2  # only what was already in flight
    assert "stopped sending: the token was refused" in err and "token refused (40" in err


def test_an_empty_balance_stops_sending_and_still_collects_what_was_accepted(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("prompt: fox\nwidth: 256\nheight: 256\naxes: {seed: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n")
    with _server(["balance_after=4"], latency=0.2) as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        code = cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--concurrency", "2"])
        submits, accepted = srv.stats.calls.get("submit", 0), srv.stats.accepted()
    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert code == 4 and len(accepted) == 4 and submits <= 4 + 2
    assert set(df.key[df.status == "succeeded"]) == set(accepted)  # every accepted job collected
    assert set(df.status) == {"succeeded", "planned"}  # the rest: never sent, nothing paid
    assert "balance ran out" in capsys.readouterr().err


@pytest.mark.parametrize("quirk", ["cancel_canceled", "cancel_empty", None])
def test_cancelled_at_ctrl_c_and_the_same_command_finishes_the_sweep(quirk, tmp_path):
    quirks = [quirk] if quirk else []

    async def interrupted_then_resumed(srv: LocalServer) -> tuple:
        async with AsyncClient(base_url=srv.base_url) as client:
            task = asyncio.ensure_future(
                client.run(SWEEP, tmp_path / "run", concurrency=6, progress=False, cache=False, on_interrupt="return")
            )
            await asyncio.sleep(0.6)  # the first job runs, the others wait in the queue
            task.cancel()
            first = await task
        async with AsyncClient(base_url=srv.base_url) as client:
            second = await client.run(SWEEP, tmp_path / "run", concurrency=6, progress=False, cache=False)
        return first, second

    with _server(quirks, latency=1.0, capacity=1) as srv:
        first, second = asyncio.run(interrupted_then_resumed(srv))
        cancelled = srv.stats.cancelled()
    assert first.interrupted and (first.df.status == "cancelled").sum() == len(cancelled) >= 4
    assert second.ok and (second.df.status == "succeeded").all()
    assert all(n <= 2 for n in srv.stats.accepted().values())  # sent again only what the server cancelled


def test_a_found_cancelled_job_is_sent_again_in_the_same_run(tmp_path):
    async def run_and_cancel_one(srv: LocalServer):
        async with AsyncClient(base_url=srv.base_url) as client:
            task = asyncio.ensure_future(
                client.run(SWEEP, tmp_path / "run", concurrency=6, progress=False, cache=False)
            )
            while len(srv.stats.submissions) < len(SWEEP):
                await asyncio.sleep(0.01)
            async with AsyncClient(base_url=srv.base_url) as other:  # someone cancels it (a dashboard, say)
                assert await other.job(srv.stats.submissions[-1].request_id).cancel() == "cancelled"
            return await task

    with _server(["cancel_canceled"], latency=0.3, capacity=1) as srv:
        result = asyncio.run(run_and_cancel_one(srv))
        accepted = srv.stats.accepted()
    assert result.ok and sorted(accepted.values()) == [1] * 5 + [2]


def test_a_local_lora_file_is_refused_before_anything_is_sent_to_a_remote_api():
    request = BASE.replace(loras=[LoRA("/home/me/epoch-10.safetensors", 1.0)])
    with Client(token="t", base_url="https://model-api.runcomfy.net") as client:
        with pytest.raises(errors.ValidationError, match="upload it") as info:
            client.generate(request)
    assert info.value.field == "loras[0].path" and client.aclient.api.calls == {}
