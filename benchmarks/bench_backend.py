"""The synthetic image backend's speed, and zlab's client overhead when the server takes no time at all.

* render + encode: `zlab.server.synthetic.render_png` for one 1024×1536 image (the schema's default
  size), median of several seeds, against the same render encoded with Pillow's own PNG encoder;
* client overhead: cells per second through `AsyncClient.run` against a server with zero latency
  (every cost left is the client's and the HTTP round trips'), against the naive hand-written loop
  on the same cells. The server runs in its own process (see `bench_sweep.ServerProcess`).
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_sweep import PROMPT, ServerProcess, row, run_fixed, run_naive, run_zlab

from zlab import Request, Sweep
from zlab.server import synthetic


def render_times(repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per image: zlab's render+encode, and the same render with Pillow's PNG encoder."""
    ours, pillow = [], []
    synthetic.render_png(Request(PROMPT, width=1024, height=1536, seed=0))  # warm caches (fonts, numpy)
    for seed in range(1, repeats + 1):
        request = Request(PROMPT, width=1024, height=1536, seed=seed)
        t0 = time.perf_counter()
        synthetic.render_png(request)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        synthetic.render(request).save(io.BytesIO(), format="PNG")
        pillow.append(time.perf_counter() - t0)
    return ours, pillow


def run(quick: bool, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    repeats = 5 if quick else 15
    say(f"backend: render+encode 1024x1536, median of {repeats} ...")
    ours, pillow = render_times(repeats)
    med, base = statistics.median(ours), statistics.median(pillow)
    say(f"    {med * 1000:.1f} ms (Pillow encoder: {base * 1000:.1f} ms)")
    rows = [row(6, "synthetic backend: render + PNG encode, 1024×1536", round(med * 1000, 1), round(base * 1000, 1),
                "ms", f"{base / med:.1f}× faster than Pillow's encoder", "< 100 ms", med < 0.1,
                f"median of {repeats}; min {min(ours) * 1000:.1f} ms, max {max(ours) * 1000:.1f} ms")]

    n, conc, capacity = (100, 32, 64) if quick else (200, 32, 64)
    sweep = Sweep(Request(PROMPT, width=256, height=256, seed=1),
                  axes={"lora1_scale": [0.0, 0.4, 0.8, 1.2], "seed": list(range(1, n // 4 + 1))})
    say(f"client overhead: {n} cells of 256x256, latency 0, capacity {capacity}, concurrency {conc} ...")
    with tempfile.TemporaryDirectory(prefix="zlab-bench-overhead-") as tmp, ServerProcess(0.0, capacity) as srv:
        warm = Sweep(sweep.base, axes={"seed": [9001, 9002, 9003, 9004]})
        run_zlab(srv, warm, Path(tmp) / "warmup-zlab", conc)
        run_fixed(srv, warm, Path(tmp) / "warmup-plain", 0.0, conc)
        z = run_zlab(srv, sweep, Path(tmp) / "zlab", conc)
        say(f"    zlab {n / z.wall_s:.1f} cells/s ({z.polls_per_image:.2f} polls/image)")
        naive = run_naive(srv.url, sweep, Path(tmp) / "naive")
        say(f"    naive loop {n / naive.wall_s:.1f} cells/s")
        plain = run_fixed(srv, sweep, Path(tmp) / "plain", 0.0, conc)
        say(f"    plain async httpx, no sleeps, {conc} at once: {n / plain.wall_s:.1f} cells/s")
    name = f"client overhead: cells/s at zero latency ({n} cells, 256×256)"
    setup = f"capacity {capacity}, zlab concurrency {conc}, zlab {z.polls_per_image:.2f} polls/image"
    rows.append(row(6, f"{name}, vs the naive loop", round(n / z.wall_s, 1), round(n / naive.wall_s, 1), "cells/s",
                    f"{naive.wall_s / z.wall_s:.2f}× the naive loop's rate", "report", None,
                    f"{setup}; naive (serial, sync httpx) {naive.polls_per_image:.2f} polls/image"))
    rows.append(row(6, f"{name}, vs plain async httpx", round(n / z.wall_s, 1), round(n / plain.wall_s, 1), "cells/s",
                    f"{plain.wall_s / z.wall_s:.2f}× plain httpx's rate", "report", None,
                    f"{setup}; plain: submit, /status, /result, download with one httpx.AsyncClient, "
                    f"{conc} cells at once, no sleeps"))
    return rows


if __name__ == "__main__":
    import json

    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r))
