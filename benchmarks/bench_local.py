"""A LoRA scale sweep on this machine: zlab's diffusers backend against two hand-written diffusers loops.

    python benchmarks/bench_local.py [--images 32] [--size 256] [--repeats 3] [--threads 1] [--device cpu|cuda]
                                     [--model DIR]

Four contenders render the same sweep (8 steps, guidance 0, the same seeds and scales), each image
encoded as PNG:

* naive: what a notebook often does for each image: load the LoRA, set its scale, call the pipeline
  with the prompt (the text encoder runs every time), PNG, unload the LoRA;
* sensible: the loop a careful user writes: the LoRA loaded once, its scale set per image with
  `set_adapters`, then the pipeline call with the prompt, then PNG (one thread does it all);
* zlab: the backend's `DiffusersRenderer`, given the whole sweep as the server would give it (its
  `capacity` in flight): prompt encoded once, adapter loaded once, PNG encoding and preparation on
  other threads beside the compute thread;
* zlab over HTTP: the same behind `LocalServer` on loopback, driven by `zlab run`'s own client
  (`AsyncClient.run`) in another process, as in real use: every cell queued, followed, downloaded, saved.

The rounds alternate so a busy machine slows every contender alike; the median round of each is
shown. For zlab, the **compute thread's busy fraction**: the time its one thread spent switching
adapters, denoising and decoding, over the sweep's wall time (on a GPU, the GPU's share of the
sweep, since each image's pixels are copied back, which waits for the GPU); and the same over the
span from its first image's start to its last image's end, with the idle seconds outside that span
(over HTTP: the client planning and submitting before, and noticing, downloading and saving the last
image after). By default the pipeline
is the tiny random Z-Image (`zlab.testing.tiny_zimage`); `--model` runs a Z-Image Turbo folder.
`bench_gpu.py` runs the same contenders on a full-size random-weight Z-Image Turbo on GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zlab.core.request import LoRA, Request
from zlab.server import LocalServer
from zlab.server.diffusers_backend import DiffusersRenderer, DiffusersSettings, load_renderer
from zlab.server.loras import LoraFiles
from zlab.testing.tiny_zimage import random_lora, save_lora, tiny_pipeline

PROMPT = "t3chnic4lly vibrant 1960s close-up of a woman sitting under a tree"
Sweep = list[tuple[float, int]]  # (scale, seed) per image
TARGETS = {"busy": 0.95, "vs sensible": 0.95, "vs naive": 1.4}


@dataclasses.dataclass(frozen=True)
class Figures:
    """One contender's run of the sweep."""

    name: str
    images: int
    seconds: float
    encoder_calls: int
    adapter_loads: int
    busy: float | None = None  # zlab: the compute thread's share of the wall time
    busy_span: float | None = None  # …of the span from its first image's start to its last one's end
    idle_ends: float | None = None  # seconds of the wall before the first image starts and after the last ends

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


class EncoderCount:
    """Counts the text encoder's forward passes with a hook (the truth, whoever calls it)."""

    def __init__(self, pipe: Any) -> None:
        self.calls = 0
        self._handle = pipe.text_encoder.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def cells(images: int) -> Sweep:
    """(scale, seed) pairs: scales from 0 to 1.5 across two seeds."""
    per_seed = max(1, images // 2)
    scales = [round(1.5 * i / max(1, per_seed - 1), 4) for i in range(per_seed)]
    return [(scale, seed) for seed in (1, 2) for scale in scales][:images]


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _call(pipe: Any, size: int, seed: int) -> Any:
    import torch

    return pipe(
        prompt=PROMPT,
        width=size,
        height=size,
        num_inference_steps=8,
        guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]


def naive(pipe: Any, lora: Path, sweep: Sweep, size: int) -> Figures:
    """Load, scale, render, PNG, unload, for every image."""
    counter = EncoderCount(pipe)
    started = time.perf_counter()
    for scale, seed in sweep:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style")
        pipe.set_adapters(["style"], adapter_weights=[scale])
        _png(_call(pipe, size, seed))
        pipe.unload_lora_weights()
    seconds = time.perf_counter() - started
    counter.close()
    return Figures("naive loop (load/unload per image)", len(sweep), seconds, counter.calls, len(sweep))


def sensible(pipe: Any, lora: Path, sweep: Sweep, size: int) -> Figures:
    """The LoRA loaded once, its scale set per image; prompt, render and PNG on one thread."""
    counter = EncoderCount(pipe)
    started = time.perf_counter()
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style")
    for scale, seed in sweep:
        pipe.set_adapters(["style"], adapter_weights=[scale])
        _png(_call(pipe, size, seed))
    pipe.unload_lora_weights()
    seconds = time.perf_counter() - started
    counter.close()
    return Figures("sensible loop (LoRA loaded once)", len(sweep), seconds, counter.calls, 1)


def _measured(name: str, renderer: DiffusersRenderer, run: Callable[[], None], images: int) -> Figures:
    counter = EncoderCount(renderer.encoder.pipe)
    loads, compute = renderer.counts.get("adapter_loads", 0), renderer.seconds.get("compute", 0.0)
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    counter.close()
    ended = time.perf_counter()
    busy_seconds = (renderer.seconds.get("compute", 0.0) - compute) / len(renderer.workers)
    spans = [w.span for w in renderer.workers if w.span is not None]  # `clear()` restarted them
    first, last = min(s[0] for s in spans), max(s[1] for s in spans)
    return Figures(
        name,
        images,
        wall,
        counter.calls,
        renderer.counts.get("adapter_loads", 0) - loads,
        busy_seconds / wall,
        busy_seconds / (last - first),
        (first - started) + (ended - last),
    )


def zlab_direct(renderer: DiffusersRenderer, lora: Path, sweep: Sweep, size: int) -> Figures:
    """The backend's renderer given the sweep as the server gives it: `capacity` renders in flight."""

    async def run() -> None:
        slots = asyncio.Semaphore(renderer.capacity)

        async def one(scale: float, seed: int) -> None:
            async with slots:
                request = Request(PROMPT, loras=[LoRA(str(lora), scale)], width=size, height=size, seed=seed)
                await renderer.render(request)

        await asyncio.gather(*(one(scale, seed) for scale, seed in sweep))

    return _measured("zlab backend", renderer, lambda: asyncio.run(run()), len(sweep))


CLIENT = """
import asyncio, json, sys, tempfile, time
from zlab import AsyncClient, LoRA, Request, Sweep
url, lora, size, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[6]
scales, seeds = json.loads(sys.argv[4]), json.loads(sys.argv[5])
sweep = Sweep(Request(prompt, loras=[LoRA(lora, 1.0)], width=size, height=size, seed=1),
              axes={"lora1_scale": scales, "seed": seeds})
async def main(out):
    async with AsyncClient(base_url=url) as client:
        print("ready", flush=True)
        sys.stdin.readline()
        result = await client.run(sweep, out, concurrency=len(scales) * len(seeds), progress=False, cache=False,
                                  echo=lambda line: None)
    print(json.dumps(result.counts), flush=True)
with tempfile.TemporaryDirectory() as out:
    asyncio.run(main(out))
"""


def zlab_http(server: LocalServer, renderer: DiffusersRenderer, lora: Path, sweep: Sweep, size: int) -> Figures:
    """`zlab run`'s client (`AsyncClient.run`, in its own process as in real use) against the local server:
    every cell queued at once, followed, downloaded and saved. Timed from its go to its last image."""
    scales = sorted({scale for scale, _ in sweep})
    seeds = sorted({seed for _, seed in sweep})
    args = [str(lora), str(size), json.dumps(scales), json.dumps(seeds), PROMPT]
    child = subprocess.Popen(
        [sys.executable, "-c", CLIENT, server.base_url, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError("the client process did not start")

    def run() -> None:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        counts = json.loads(child.stdout.readline())
        if counts.get("succeeded") != len(scales) * len(seeds):
            raise RuntimeError(f"the client's sweep did not succeed: {counts}")

    try:
        return _measured("zlab run's client over HTTP", renderer, run, len(scales) * len(seeds))
    finally:
        child.wait(timeout=60)


def median_round(rounds: list[Figures]) -> Figures:
    """The round with the median wall time (its other figures come with it)."""
    ordered = sorted(rounds, key=lambda f: f.seconds)
    return ordered[len(ordered) // 2]


def compare(
    renderer: DiffusersRenderer,
    server: LocalServer,
    lora: Path,
    sweep: Sweep,
    size: int,
    repeats: int,
    say: Callable[[str], None] = print,
) -> dict[str, list[Figures]]:
    """Every contender, `repeats` alternating rounds each, one warm-up image each first (not counted)."""
    pipe = renderer.workers[0].pipe
    contenders: dict[str, Callable[[Sweep], Figures]] = {
        "naive": lambda s: naive(pipe, lora, s, size),
        "sensible": lambda s: sensible(pipe, lora, s, size),
        "zlab": lambda s: zlab_direct(renderer, lora, s, size),
        "http": lambda s: zlab_http(server, renderer, lora, s, size),
    }
    rounds: dict[str, list[Figures]] = {name: [] for name in contenders}
    for run in contenders.values():
        renderer.clear()
        run(sweep[:1])  # first-call allocations and lazy imports, outside the timings
    for index in range(repeats):
        for name, run in contenders.items():
            renderer.clear()  # each contender starts with no adapter and no prompt cached
            rounds[name].append(run(sweep))
            say(f"  round {index + 1}: {name} {rounds[name][-1].seconds:.2f} s")
    return rounds


def table(rows: dict[str, Figures]) -> str:
    """A Markdown table: each row's images/s against the naive and the sensible loop's."""
    naive_rate, sensible_rate = rows["naive"].per_second, rows["sensible"].per_second
    lines = [
        "| contender | images | wall s | images/s | text-encoder calls | adapter loads | compute busy "
        "| busy first→last image (idle before + after, s) | vs naive | vs sensible |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        busy = f"{r.busy:.1%}" if r.busy is not None else "–"
        span = f"{r.busy_span:.1%} ({r.idle_ends:.2f})" if r.busy_span is not None else "–"
        lines.append(
            f"| {r.name} | {r.images} | {r.seconds:.2f} | {r.per_second:.2f} | {r.encoder_calls} | {r.adapter_loads} "
            f"| {busy} | {span} | {r.per_second / naive_rate:.2f}× | {r.per_second / sensible_rate:.2f}× |"
        )
    return "\n".join(lines)


def verdict(rounds: dict[str, list[Figures]]) -> list[str]:
    """The issue's targets, met or missed, for zlab (direct) and zlab over HTTP. Speed ratios are the median
    of each round's own ratio (a round runs the contenders back to back, so they share the machine's load)."""
    lines = []
    for name in ("zlab", "http"):
        mine = rounds[name]

        def ratio(other: str, mine: list[Figures] = mine) -> float:
            return statistics.median(m.per_second / o.per_second for m, o in zip(mine, rounds[other], strict=True))

        checks = {
            "busy": statistics.median(r.busy or 0.0 for r in mine),
            "vs sensible": ratio("sensible"),
            "vs naive": ratio("naive"),
        }
        parts = [
            f"{what} {value:.2f} (target ≥ {TARGETS[what]}: {'met' if value >= TARGETS[what] else 'MISSED'})"
            for what, value in checks.items()
        ]
        lines.append(f"{mine[0].name} (medians over rounds): " + "; ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images in the sweep (default 32)")
    parser.add_argument("--size", type=int, default=256, help="width and height, a multiple of 16 (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each contender (default 3)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when there is one")
    parser.add_argument("--model", help="a local Z-Image Turbo folder (default: the tiny random pipeline)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)

    import diffusers
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="zlab-bench-local-") as tmp:
        files = LoraFiles(Path(tmp) / "cache")
        if args.model:
            renderer = load_renderer(DiffusersSettings(model=args.model, device=device), files)
            what = args.model
        else:
            pipe = tiny_pipeline().to(device)
            renderer = DiffusersRenderer.from_pipelines([pipe], "tiny-random-z-image", files=files)
            what = "tiny random Z-Image"
        lora = save_lora(random_lora(renderer.workers[0].pipe, seed=1), Path(tmp) / "style.safetensors")
        sweep = cells(args.images)
        with LocalServer(renderer=renderer) as server:  # closes the renderer when it stops
            rounds = compare(renderer, server, lora, sweep, args.size, args.repeats, say=print)
    rows = {name: median_round(figures) for name, figures in rounds.items()}
    spread = {name: statistics.pstdev([f.seconds for f in figures]) for name, figures in rounds.items()}

    print(
        f"\nLoRA scale sweep: {len(sweep)} images of {args.size}x{args.size}, 8 steps, {what} on {device} "
        f"(torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} torch threads); "
        f"median of {args.repeats} rounds"
    )
    print(table(rows))
    print("round-to-round spread (s): " + ", ".join(f"{name} {value:.2f}" for name, value in spread.items()))
    print("\n".join(verdict(rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
