"""Sweep benchmarks: wall time against the ideal, polls per image, completion-detection lag, the naive loop, reruns.

Every contender runs against the same local server, started in a separate process
(`python -c ...` running `zlab.server.LocalServer`), so the client under test has the GIL and one
core to itself, as it would against RunComfy. The server process answers a few commands on its
stdin (`jobs`, `quit`), which is how the benchmark reads each job's `finished_mono`: Linux's
`time.monotonic()` is CLOCK_MONOTONIC, one clock for every process on the machine, so the server's
finish times and the client's arrival times are directly comparable.

Contenders (all do the same work per cell: submit, wait, GET /result, download the image, save it):

* zlab: `AsyncClient.run` (the runner, with its adaptive poll planner), progress and cache off;
* fixed-interval pollers at 0.1 s and 2 s written with plain httpx, like peer clients: submit
  under the same concurrency cap, sleep the interval, GET /status until `completed`, then /result;
* the naive loop a user writes by hand: one cell at a time, GET /status every 1 s.

Completion-detection lag is, per job, the time from the server finishing it to the client holding
the /result answer that says `succeeded`; an httpx transport wrapper notes that arrival time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from zlab import AsyncClient, Request, Sweep
from zlab.core.request import MODEL_ID

_SERVER = r"""
import json, sys
from zlab.server import LocalServer
srv = LocalServer(**json.loads(sys.argv[1])).start()
print(json.dumps({"url": srv.base_url}), flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "jobs":
        jobs = {rid: [j.state, j.finished_mono] for rid, j in srv.stats.jobs.items()}
        print(json.dumps(jobs), flush=True)
    elif command == "quit":
        break
srv.stop()
"""

PROMPT = "t3chnic4lly vibrant 1960s close-up of a woman sitting under a tree, benchmark"


class ServerProcess:
    """The local server in its own process; `jobs()` reads its job records over a pipe."""

    def __init__(self, latency: float = 0.0, capacity: int | str = 4, **settings: Any) -> None:
        """`settings`: any other `LocalServer` keyword (quirks, queue regimes), as JSON."""
        self.latency, self.capacity = latency, capacity
        kwargs = {"latency": latency, "capacity": capacity, **settings}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(kwargs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark's local server process did not start with {kwargs}")
        self.url: str = json.loads(line)["url"]

    def jobs(self) -> dict[str, tuple[str, float | None]]:
        """Every job the server has seen: request id → (state, finished_mono)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("jobs\n")
        self.proc.stdin.flush()
        return {rid: (state, mono) for rid, (state, mono) in json.loads(self.proc.stdout.readline()).items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def endpoint_of(path: str) -> str:
    """submit / status / result / cancel / file, from a URL path."""
    if path.startswith("/v1/models/"):
        return "submit"
    if path.startswith("/v1/requests/"):
        return path.rsplit("/", 1)[-1]
    return "file"


class RecordingTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncHTTPTransport` that counts calls per endpoint and notes when each
    /result answer saying `succeeded` arrived (time.monotonic(), after its body is read)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: collections.Counter[str] = collections.Counter()
        self.succeeded_at: dict[str, float] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        kind = endpoint_of(request.url.path)
        self.calls[kind] += 1
        response = await self.inner.handle_async_request(request)
        if kind == "result" and response.status_code == 200:
            await response.aread()
            arrived = time.monotonic()
            with contextlib.suppress(ValueError):
                body = json.loads(response.content)
                if body.get("status") == "succeeded":
                    self.succeeded_at.setdefault(body["request_id"], arrived)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Outcome:
    """One contender's run: wall time, calls by endpoint, images saved, detection lags."""

    name: str
    wall_s: float
    images: int
    calls: dict[str, int]
    lags: list[float] = field(default_factory=list)

    @property
    def polls(self) -> int:
        return self.calls.get("status", 0) + self.calls.get("result", 0)

    @property
    def polls_per_image(self) -> float:
        return self.polls / max(self.images, 1)

    @property
    def median_lag(self) -> float:
        return statistics.median(self.lags) if self.lags else math.nan

    @property
    def max_lag(self) -> float:
        return max(self.lags) if self.lags else math.nan

    @property
    def p90_lag(self) -> float:
        return statistics.quantiles(self.lags, n=10)[-1] if len(self.lags) >= 2 else self.median_lag


def make_sweep(n: int, size: int = 512) -> Sweep:
    """n cells: 4 LoRA scales × n/4 seeds (n a multiple of 4), every image size×size."""
    scales = [0.0, 0.4, 0.8, 1.2]
    return Sweep(Request(PROMPT, width=size, height=size, seed=1),
                 axes={"lora1_scale": scales, "seed": list(range(1, n // len(scales) + 1))})


def lags(transport: RecordingTransport, jobs: dict[str, tuple[str, float | None]]) -> list[float]:
    return [arrived - finished for rid, arrived in transport.succeeded_at.items()
            if (finished := jobs.get(rid, (None, None))[1]) is not None]


async def _zlab(url: str, sweep: Sweep, out: Path, concurrency: int) -> tuple[float, int, RecordingTransport, Any]:
    transport = RecordingTransport()
    async with AsyncClient(base_url=url, transport=transport) as client:
        t0 = time.perf_counter()
        result = await client.run(sweep, out, concurrency=concurrency, progress=False, cache=False,
                                  echo=lambda line: None)
        wall = time.perf_counter() - t0
    return wall, result.counts.get("succeeded", 0), transport, result


def run_zlab(srv: ServerProcess, sweep: Sweep, out: Path, concurrency: int, name: str = "zlab") -> Outcome:
    """zlab's runner on `sweep` into `out`; its calls as the transport saw them."""
    wall, images, transport, _ = asyncio.run(_zlab(srv.url, sweep, out, concurrency))
    return Outcome(name, wall, images, dict(transport.calls), lags(transport, srv.jobs()))


async def _fixed(url: str, payloads: list[dict[str, Any]], out: Path, interval: float, cap: int,
                 transport: RecordingTransport) -> int:
    slots = asyncio.Semaphore(cap)
    out.mkdir(parents=True, exist_ok=True)

    async def one(http: httpx.AsyncClient, i: int, payload: dict[str, Any]) -> None:
        async with slots:
            rid = (await http.post(f"{url}/v1/models/{MODEL_ID}", json=payload)).json()["request_id"]
            while True:
                await asyncio.sleep(interval)
                status = (await http.get(f"{url}/v1/requests/{rid}/status")).json()["status"]
                if status in ("completed", "cancelled"):
                    break
            body = (await http.get(f"{url}/v1/requests/{rid}/result")).json()
            image = (await http.get(body["output"]["image"])).content
            await asyncio.to_thread((out / f"{i:04d}.png").write_bytes, image)

    async with httpx.AsyncClient(transport=transport, timeout=60) as http:
        await asyncio.gather(*(one(http, i, p) for i, p in enumerate(payloads)))
    return len(payloads)


def run_fixed(srv: ServerProcess, sweep: Sweep, out: Path, interval: float, cap: int) -> Outcome:
    """A peer-style poller: fixed `interval` on /status, at most `cap` jobs in flight."""
    payloads = [c.request.to_input() for c in sweep.cells()]
    transport = RecordingTransport()
    t0 = time.perf_counter()
    images = asyncio.run(_fixed(srv.url, payloads, out, interval, cap, transport))
    wall = time.perf_counter() - t0
    return Outcome(f"fixed {interval:g} s poller", wall, images, dict(transport.calls), lags(transport, srv.jobs()))


def run_naive(url: str, sweep: Sweep, out: Path, interval: float = 1.0) -> Outcome:
    """The loop a user writes by hand: one cell at a time, /status every `interval` seconds."""
    out.mkdir(parents=True, exist_ok=True)
    calls: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    with httpx.Client(timeout=60) as http:
        for i, cell in enumerate(sweep.cells()):
            rid = http.post(f"{url}/v1/models/{MODEL_ID}", json=cell.request.to_input()).json()["request_id"]
            calls["submit"] += 1
            while True:
                calls["status"] += 1
                if http.get(f"{url}/v1/requests/{rid}/status").json()["status"] == "completed":
                    break
                time.sleep(interval)
            body = http.get(f"{url}/v1/requests/{rid}/result").json()
            calls["result"] += 1
            (out / f"{i:04d}.png").write_bytes(http.get(body["output"]["image"]).content)
            calls["file"] += 1
    return Outcome(f"naive loop ({interval:g} s)", time.perf_counter() - t0, len(sweep.cells()), dict(calls))


def row(section: int, figure: str, zlab: float, baseline: float, unit: str, ratio: str, target: str,
        met: bool | None, notes: str = "") -> dict[str, Any]:
    """One table row; `section` orders rows in the report (1 sweep … 6 backend), `met` None: no target."""
    return {"section": section, "figure": figure, "zlab": zlab, "baseline": baseline, "unit": unit,
            "ratio": ratio, "target": target, "met": met, "notes": notes}


@contextlib.contextmanager
def _tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="zlab-bench-sweep-") as tmp:
        yield Path(tmp)


def _brief(o: Outcome) -> str:
    return f"    {o.wall_s:.2f} s, {o.polls_per_image:.2f} polls/image, median lag {o.median_lag * 1000:.0f} ms"


def _mode_rows(label: str, z: Outcome, f01: Outcome, f2: Outcome, n: int, cap: int, latency: float,
               ideal: float) -> list[dict[str, Any]]:
    """Sections 1 and 2 for one concurrency mode: zlab against the ideal and the two fixed pollers."""
    calls = [o.polls_per_image for o in (z, f01, f2)]
    pct = [100 * o.median_lag / latency for o in (z, f01, f2)]
    return [
        row(1, f"sweep wall time vs ideal ceil(N/C)·L, {label}", round(z.wall_s, 2), ideal, "s",
            f"{z.wall_s / ideal:.3f}× ideal", "<= 1.15× ideal", z.wall_s / ideal <= 1.15,
            f"N={n}, C={cap}, L={latency:g} s, 512×512; 0.1 s poller {f01.wall_s / ideal:.2f}× ideal"),
        row(2, f"polls per image (status+result calls / images), {label}", round(calls[0], 2),
            f"0.1 s: {calls[1]:.2f} · 2 s: {calls[2]:.2f}", "calls/image",
            f"{calls[0] / calls[1]:.2f}× · {calls[0] / calls[2]:.2f}×", "<= 4", calls[0] <= 4,
            "baselines: fixed-interval /status pollers at 0.1 s and 2 s, same concurrency cap"),
        row(2, f"median completion-detection lag, {label}", round(z.median_lag, 3),
            f"0.1 s: {f01.median_lag:.3f} · 2 s: {f2.median_lag:.3f}", "s",
            f"{pct[0]:.1f}% of L (baselines {pct[1]:.1f}% · {pct[2]:.1f}%)", "<= 10% of L", pct[0] <= 10,
            f"zlab p90 {z.p90_lag * 1000:.0f} ms, max {z.max_lag * 1000:.0f} ms; {len(z.lags)} jobs"),
    ]


def run(quick: bool, say: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[Outcome], dict[str, Any]]:
    """Rows for the table, every contender's outcome (for the detail table) and the settings used."""
    n, cap, latency = (12, 4, 0.5) if quick else (48, 4, 1.0)
    sweep = make_sweep(n)
    ideal = math.ceil(n / cap) * latency
    settings = {"cells": n, "capacity": cap, "latency_s": latency, "ideal_s": ideal, "size": "512x512"}
    rows: list[dict[str, Any]] = []
    contenders: list[Outcome] = []
    with _tmp() as tmp, ServerProcess(latency, cap) as srv:
        say(f"sweep: {n} cells, server capacity {cap}, latency {latency:g} s, ideal {ideal:g} s")
        say("  warm-up (imports, first connections) ...")
        warm = Sweep(sweep.base, axes={"seed": [9001, 9002, 9003, 9004]})
        run_zlab(srv, warm, tmp / "warmup-zlab", cap)
        run_fixed(srv, warm, tmp / "warmup-fixed", 0.1, cap)
        first: Outcome | None = None
        for label, conc in ((f"concurrency {cap}", cap), (f"all {n} queued at once", n)):
            say(f"  zlab, {label} ...")
            z = run_zlab(srv, sweep, tmp / f"zlab-{conc}", conc, name=f"zlab, {label}")
            say(_brief(z))
            first = first or z
            fixed = []
            for interval in (0.1, 2.0):
                say(f"  fixed {interval:g} s poller, {label} ...")
                f = run_fixed(srv, sweep, tmp / f"fixed-{interval}-{conc}", interval, conc)
                f.name += f", {label}"
                say(_brief(f))
                fixed.append(f)
            contenders += [z, *fixed]
            rows += _mode_rows(label, z, *fixed, n=n, cap=cap, latency=latency, ideal=ideal)
        assert first is not None
        say("  naive loop (one cell at a time, /status every 1 s) ...")
        naive = run_naive(srv.url, sweep, tmp / "naive")
        contenders.append(naive)
        say(f"    {naive.wall_s:.2f} s")
        rows.append(row(3, "sweep wall time vs the naive hand-written loop", round(first.wall_s, 2),
                        round(naive.wall_s, 2), "s", f"{naive.wall_s / first.wall_s:.1f}× faster", "report", None,
                        f"zlab at concurrency {cap}; naive: {naive.polls_per_image:.2f} polls/image"))
        say("  rerun of the finished sweep into the same directory ...")
        wall, _, transport, _ = asyncio.run(_zlab(srv.url, sweep, tmp / f"zlab-{cap}", cap))
        requests, before = sum(transport.calls.values()), sum(first.calls.values())
        say(f"    {requests} requests, {wall:.3f} s")
        rows.append(row(5, "rerun of a finished sweep: requests", requests, before, "requests",
                        f"{requests} vs {before} for the first run", "0", requests == 0))
        rows.append(row(5, "rerun of a finished sweep: wall time", round(wall, 3), round(first.wall_s, 2), "s",
                        f"{wall / first.wall_s:.3f}× the first run", "report", None))
    return rows, contenders, settings


if __name__ == "__main__":
    table, outcomes, _ = run(quick="--quick" in sys.argv)
    for r in table:
        print(json.dumps(r))
