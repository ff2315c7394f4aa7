"""The adaptive scale search against a grid, on the local server's LoRAs with known curves.

    python benchmarks/bench_find_scale.py [--loras 12] [--seeds 3] [--size 256] [--no-grid]

For each synthetic LoRA (`zlab.server.synthetic.curve_of` gives its true onset, saturation and
overcook; one in eight does nothing), over the same seeds and prompt:

* search: `Client.find_scale` (range 0–2, precision 0.05), every image through the local server;
* grid: a sweep of every 0.05 step from 0.05 to 2 plus the same no-LoRA baseline, read with the same
  definitions (`zlab.strength.diagnose`), i.e. what a person gets from a grid at that precision.

Printed: per LoRA the truth, each method's onset and saturation (midpoint of its bracket) and error, the
images each used; then the worst errors, the LoRAs flagged as doing nothing, and the image ratio.
`--no-grid` skips rendering the grid (its image count is still exact: 40 scales × seeds per LoRA).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from zlab.client import Client
from zlab.core.request import LoRA
from zlab.runs.sweep import Sweep
from zlab.server import LocalServer, synthetic
from zlab.strength import measure
from zlab.strength.definitions import Diagnosis, Probe, diagnose
from zlab.strength.driver import ScaleSpec, _load
from zlab.strength.search import SearchSpace

PROMPT = "t3chnic4lly a fox in a snowy wood"


def grid(client: Client, spec: ScaleSpec, path: str, out: Path) -> tuple[list[Probe], int]:
    """Every multiple of the precision above 0, over the seeds, measured against the baseline."""
    seeds = list(spec.seeds)
    base_sweep = Sweep(spec.request(seeds[0], None), {"seed": seeds})
    base = {
        int(r["seed"]): _load(out, r)
        for r in client.run(base_sweep, out, progress=False, sheet=False, echo=quiet).df.to_dict("records")
    }
    steps = spec.space.grid_scales - 1
    scales = [round(spec.space.lo + spec.space.precision * (i + 1), 3) for i in range(steps)]
    sweep = Sweep(spec.request(seeds[0], LoRA(path, 1.0)), {"lora1_scale": scales, "seed": seeds})
    rows = client.run(sweep, out, progress=False, sheet=False, echo=quiet).df.to_dict("records")
    probes = [Probe.baseline(seeds)]
    for x in scales:
        ims = {int(r["seed"]): _load(out, r) for r in rows if abs(float(r["lora1_scale"]) - x) < 1e-9}
        probes.append(
            Probe(
                x,
                tuple(seeds),
                tuple(measure.change(base[s], ims[s]) for s in seeds),
                tuple(measure.relative_detail(base[s], ims[s]) for s in seeds),
            )
        )
    return probes, len(scales) * len(seeds)


def quiet(line: str) -> None:
    """The runs' own summary lines are left out of the benchmark's output."""


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def one(d: Diagnosis) -> str:
    """A diagnosis as "onset / saturation / overcook" (bracket midpoints), or "does nothing"."""
    if d.does_nothing and d.onset is None:
        return "does nothing"
    values = (f.value if f else None for f in (d.onset, d.saturation, d.overcook))
    return " / ".join(fmt(v) for v in values) + (" ⚠ does nothing" if d.does_nothing else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loras", type=int, default=12, help="LoRAs that act (an inert one is added)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--no-grid", action="store_true", help="do not render the grid (count its images only)")
    args = parser.parse_args(argv)

    names = [f"owner/lora-{i}" for i in range(400)]
    acting = [p for p in names if not synthetic.curve_of(p).inert][: args.loras]
    inert = next(p for p in names if synthetic.curve_of(p).inert)
    paths = [*acting, inert]
    spec = ScaleSpec(PROMPT, tuple(paths), tuple(range(1, args.seeds + 1)), args.size, args.size, SearchSpace())
    rows, worst = [], {"search": [0.0, 0.0], "grid": [0.0, 0.0]}
    os.environ["ZLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="zlab-bench-cache-")  # no image from an earlier run
    started = time.perf_counter()
    with LocalServer(latency=0.0, capacity=64) as server, Client(base_url=server.base_url) as client:
        with tempfile.TemporaryDirectory() as tmp:
            found = client.find_scale(spec, Path(tmp) / "search")
            search_s = time.perf_counter() - started
            for answer in found.answers:
                truth = synthetic.curve_of(answer.path)
                d = answer.diagnosis
                g_images = answer.grid_images
                g = None
                if not args.no_grid:
                    probes, g_images = grid(client, spec, answer.path, Path(tmp) / "grid")
                    g = diagnose(probes, spec.thresholds)
                row = {
                    "lora": answer.path,
                    "truth": truth,
                    "search": d,
                    "grid": g,
                    "images": answer.images,
                    "grid_images": g_images,
                }
                rows.append(row)
                if truth.onset is None:
                    continue
                for name, diag in (("search", d), ("grid", g)):
                    if diag is None:
                        continue
                    for k, (f, t) in enumerate(((diag.onset, truth.onset), (diag.saturation, truth.saturation))):
                        err = float("inf") if f is None or t is None else abs(f.value - t)
                        worst[name][k] = max(worst[name][k], err)
    print(
        f"{len(acting)} acting LoRAs + 1 inert × {args.seeds} seeds, {args.size}×{args.size}, range 0–2, precision 0.05"
    )
    print(
        "| LoRA | true onset / sat / overcook | search onset / sat / overcook | grid onset / sat / overcook "
        "| search images | grid images |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        t, d, g = r["truth"], r["search"], r["grid"]
        truth = "inert" if t.inert else f"{fmt(t.onset)} / {fmt(t.saturation)} / {fmt(t.overcook)}"
        print(
            f"| {r['lora']} | {truth} | {one(d)} | {one(g) if g else 'not run'} | {r['images']} | {r['grid_images']} |"
        )
    total = found.images
    grid_total = found.grid_images
    print()
    print(f"worst |error| search: onset {worst['search'][0]:.3f}, saturation {worst['search'][1]:.3f}")
    if not args.no_grid:
        print(f"worst |error| grid:   onset {worst['grid'][0]:.3f}, saturation {worst['grid'][1]:.3f}")
    per_lora = max(r["images"] for r in rows) / rows[0]["grid_images"]
    print(
        f"images: search {total} (baseline {found.baseline_images} shared), grid {grid_total}: "
        f"{total / grid_total:.1%} of the grid; the most any LoRA used: {per_lora:.1%} of its grid"
    )
    print(f"flagged as doing nothing: {[r['lora'] for r in rows if r['search'].does_nothing]}")
    print(f"search wall time {search_s:.1f} s")
    ok = worst["search"][0] <= 0.05 and worst["search"][1] <= 0.05 and total * 4 <= grid_total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
