"""Cost as RunComfy bills it: per request, the service's own price first, the real cost when the result says it."""

from __future__ import annotations

import pytest

from zlab import cli, errors
from zlab.client import Client
from zlab.core.config import Settings
from zlab.core.pricing import Pricing, final_cost, resolve_pricing
from zlab.core.protocol import Price
from zlab.core.request import LoRA, Request
from zlab.runs.sweep import Sweep
from zlab.server import LocalServer

BASE = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=512, height=512, seed=1)
SWEEP = Sweep(BASE, axes={"seed": [1, 2, 3]})


def test_the_service_price_beats_the_settings_which_beat_the_per_megapixel_default():
    settings = Settings(base_url="http://x", token=None, price_per_mp=0.01, price_per_image=0.05)
    assert resolve_pricing(Price(0.02, "image"), settings) == Pricing(0.02, None, "the service's price")
    assert resolve_pricing(Price(0.001, "second"), settings).per_image == pytest.approx(0.004)
    assert resolve_pricing(None, settings) == Pricing(0.05, None, "ZLAB_PRICE_PER_IMAGE")
    per_mp = resolve_pricing(None, Settings(base_url="http://x", token=None, price_per_mp=0.01))
    assert per_mp.cost(BASE) == pytest.approx(0.01 * 0.262144) and "/MP" in str(per_mp)
    assert final_cost(0.013, 0.01) == (0.013, "service") and final_cost(None, 0.01) == (0.01, "estimate")


def test_a_run_uses_the_service_price_and_records_the_real_cost(tmp_path):
    lines: list[str] = []
    with LocalServer(latency=0.02, quirks=["price=0.012"]) as srv, Client(base_url=srv.base_url) as client:
        result = client.run(SWEEP, tmp_path / "run", progress=False, cache=False, echo=lines.append)
    assert "$0.0120/image (the service's price)" in lines[0] and result.estimate.cost_usd == pytest.approx(0.036)
    assert (result.df.cost_usd == 0.012).all() and (result.df.cost_source == "service").all()


def test_without_a_service_price_the_per_image_setting_estimates(tmp_path, monkeypatch):
    monkeypatch.setenv("ZLAB_PRICE_PER_IMAGE", "0.02")
    with LocalServer(latency=0.02) as srv, Client(base_url=srv.base_url) as client:
        result = client.run(SWEEP, tmp_path / "run", progress=False, cache=False)
    assert (result.df.cost_usd == 0.02).all() and (result.df.cost_source == "estimate").all()


def test_the_budget_follows_the_same_price_and_nothing_is_sent_over_it(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("prompt: fox\nwidth: 512\nheight: 512\naxes: {seed: [1, 2, 3, 4, 5]}\n")
    with LocalServer(latency=0.02, quirks=["price=0.01"]) as srv:
        monkeypatch.setenv("ZLAB_BASE_URL", srv.base_url)
        assert cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--budget", "0.04"]) == 2
        assert srv.stats.calls.get("submit", 0) == 0 and "$0.05" in capsys.readouterr().err
        assert cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--budget", "0.05", "--no-progress"]) == 0


def test_a_budget_must_be_a_finite_number():
    with Client(base_url="http://127.0.0.1:9") as client, pytest.raises(errors.ValidationError, match="budget"):
        client.run(SWEEP, "/tmp/never-made", budget=float("nan"))


def test_the_local_server_publishes_a_price_only_when_asked():
    import httpx

    with LocalServer(quirks=["price=0.02"]) as priced, LocalServer() as plain:
        url = "/v1/models/tongyi-mai/z-image/turbo/lora"
        body = httpx.get(priced.base_url + url).json()
        assert (body["base_price_usd"], body["price_unit"]) == (0.02, "image")
        assert httpx.get(plain.base_url + url).status_code == 404


def test_the_built_in_server_is_free_and_says_so(tmp_path):
    lines: list[str] = []
    with Client() as client:  # no token, no base URL: the built-in server
        result = client.run(SWEEP, tmp_path / "run", progress=False, cache=False, echo=lines.append)
    assert "the built-in server bills nothing" in lines[0] and result.estimate.cost_usd == 0
    assert (result.df.cost_usd == 0).all()


def test_a_finished_sweep_rerun_by_a_fresh_client_asks_nothing_not_even_the_price(tmp_path):
    with LocalServer(latency=0.02, quirks=["price=0.01"]) as srv:
        with Client(base_url=srv.base_url) as client:
            client.run(SWEEP, tmp_path / "run", progress=False, cache=False)
        calls = dict(srv.stats.calls)
        with Client(base_url=srv.base_url) as fresh:
            again = fresh.run(SWEEP, tmp_path / "run", progress=False, cache=False)
        assert again.ok and srv.stats.calls == calls and (again.df.cost_usd == 0.01).all()
