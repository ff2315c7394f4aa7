"""Scale: a sweep of many cells on the local server at zero latency, time and memory per 1,000 cells.

One sweep of N small cells (256×256, seeds 1..N) runs through zlab's real runner against the local
server in its own process (latency 0, capacity 64, automatic concurrency). Every saved image is
timestamped through the runner's `on_image` hook, with the process's resident memory at that
moment, so the table shows each successive block of 1,000 cells: seconds for the block and memory
at its end. Flat rows mean the run costs the same per cell at cell 20,000 as at cell 1,000 (the
ledger, the planner, progress and results writing included); a growing row points at what grows
faster than linearly. The time to plan (ledger add + decisions) and to write the results table at
the end are reported apart, with their per-1,000-cell cost, and so is opening the finished run as a
gallery model (its table and page layout; thumbnails come page by page). The hook replaces the
client's default one (which caches each image's sheet thumbnail) so the runner alone is measured.
The synthetic renderer's own cost per full-size image is the last row (how fast the stand-in is).

Run alone: ``python benchmarks/bench_scale.py [--quick] [--cells N]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_sweep import PROMPT, ServerProcess

from zlab import AsyncClient, Request, Sweep

BLOCK = 1000


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _sweep(url: str, n: int, out: Path) -> dict[str, Any]:
    stamps: list[tuple[float, float]] = []
    lines: list[tuple[float, str]] = []
    sweep = Sweep(Request(PROMPT, width=256, height=256, seed=1), axes={"seed": list(range(1, n + 1))})

    def saved(*_: object) -> None:
        stamps.append((time.perf_counter(), rss_mb()))

    async with AsyncClient(base_url=url) as client:
        t0 = time.perf_counter()
        result = await client.run(
            sweep, out, progress=False, cache=False, sheet=False, on_image=saved,
            echo=lambda line: lines.append((time.perf_counter(), line)),
        )  # fmt: skip
        total = time.perf_counter() - t0
    planned = next((t for t, line in lines if "plan:" in line), t0) - t0
    finish = total - (stamps[-1][0] - t0) if stamps else float("nan")
    return {"ok": result.ok, "total": total, "plan": planned, "finish": finish, "stamps": stamps, "t0": t0}


def blocks(run: dict[str, Any]) -> list[tuple[int, float, float]]:
    """(cells done, seconds for this block of 1,000, RSS MB at its end)."""
    stamps, out, last = run["stamps"], [], run["t0"] + run["plan"]
    for end in range(BLOCK, len(stamps) + 1, BLOCK):
        t, mb = stamps[end - 1]
        out.append((end, t - last, mb))
        last = t
    return out


def open_costs(run_dir: Path) -> float:
    """Seconds to open the finished run as the gallery's model (its table, picks and page layout)."""
    from zlab.views.gallery_model import GalleryModel

    t0 = time.perf_counter()
    GalleryModel(run_dir)
    return time.perf_counter() - t0


def synthetic_render() -> float:
    """Seconds for the synthetic backend to draw and encode one 1024×1536 image (median of 5)."""
    from zlab.core.request import DEFAULT_LORA_PATH, LoRA
    from zlab.server.synthetic import render_png

    big = Request("t3chnic4lly a woman under a tree", loras=[LoRA(DEFAULT_LORA_PATH, 0.8)], seed=1)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        render_png(big)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool, cells: int | None = None) -> dict[str, Any]:
    n = cells or (2000 if quick else 20000)
    with tempfile.TemporaryDirectory(prefix="zlab-bench-scale-") as tmp, ServerProcess(latency=0.0, capacity=64) as srv:
        out = Path(tmp) / "run"
        got = asyncio.run(_sweep(srv.url, n, out))
        rows = blocks(got)
        opened = open_costs(out)
    return {"cells": n, "run": got, "blocks": rows, "open": opened, "render_s": synthetic_render()}


def table(result: dict[str, Any]) -> list[str]:
    n, got, rows = result["cells"], result["run"], result["blocks"]
    lines = ["| cells done | s for these 1,000 | RSS MB at the end |", "|---|---|---|"]
    shown = rows if len(rows) <= 8 else [r for i, r in enumerate(rows) if i in (0, 1) or (i + 1) % 4 == 0]
    for end, seconds, mb in shown:
        lines.append(f"| {end:,} | {seconds:.2f} | {mb:.0f} |")
    per = [s for _, s, _ in rows]
    lines += [
        "",
        f"{n:,} cells in {got['total']:.1f} s ({'all succeeded' if got['ok'] else 'NOT all succeeded'}); "
        f"plan {got['plan']:.2f} s ({1000 * got['plan'] / n:.3f} s per 1,000); after the last image (results "
        f"table, summary) {got['finish']:.2f} s ({1000 * got['finish'] / n:.3f} s per 1,000); per 1,000 cells: "
        f"first block {per[0]:.2f} s, median {statistics.median(per):.2f} s, last {per[-1]:.2f} s" if per else "",
        f"opening the finished run ({n:,} cells) as a gallery model: {result['open']:.2f} s; "
        f"synthetic render of one 1024×1536 image: {1000 * result['render_s']:.0f} ms",
    ]
    return lines


if __name__ == "__main__":
    arg = sys.argv[sys.argv.index("--cells") + 1] if "--cells" in sys.argv else None
    res = run("--quick" in sys.argv, int(arg) if arg else None)
    print("\n".join(table(res)))
