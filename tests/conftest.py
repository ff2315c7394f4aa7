"""Shared fixtures: a clean environment (no real token, a private cache) and local servers."""

from __future__ import annotations

import pytest

from zlab.server import LocalServer


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    """No test ever reaches RunComfy or a shared cache, whatever the developer's shell has set."""
    for name in ("RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY", "ZLAB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def server():
    """A fast local server: jobs take 50 ms, four at a time."""
    with LocalServer(latency=0.05, capacity=4) as srv:
        yield srv
