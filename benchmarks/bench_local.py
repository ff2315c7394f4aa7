"""A LoRA scale sweep on this machine: zlab's diffusers backend against the naive diffusers loop, side by side.

    python benchmarks/bench_local.py [--images 32] [--size 256] [--repeats 3] [--device cpu|cuda] [--model DIR]
                                     [--threads N]

* naive: what a notebook usually does for each image: load the LoRA, set its scale, call the pipeline with
  the prompt (so the text encoder runs every time), unload the LoRA;
* zlab, direct: the backend's `DiffusersRenderer.render` for each image, in order: the adapter is loaded
  once and switched by scale, the prompt is encoded once, each image is encoded as PNG;
* zlab, HTTP: the same through `zlab serve --backend diffusers`'s code (a `LocalServer` over loopback
  HTTP), every image submitted at once, polled and downloaded: what `zlab run` sees.

All use 8 steps, guidance 0 and the same seeds; each contender starts with nothing cached, and the rounds
alternate so that a busy machine slows all of them alike (the median round is shown). Beside the wall time:
how often the text encoder ran and how long it took, and how many adapter loads there were and how long
loading and unloading took. By default the pipeline is the tiny random Z-Image (`zlab.testing.tiny_zimage`),
whose denoising is cheap, so those two columns are the figures that carry over to the real model (where
one text-encoder pass and one LoRA load each cost about as much as several denoising steps); `--model`
runs the real Z-Image Turbo from a local folder (on a GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from zlab.core.request import MODEL_ID, LoRA, Request
from zlab.server import LocalServer
from zlab.server.diffusers_backend import DiffusersRenderer, DiffusersSettings, load_renderer
from zlab.server.loras import LoraFiles
from zlab.testing.tiny_zimage import random_lora, save_lora, tiny_pipeline

PROMPT = "t3chnic4lly vibrant 1960s close-up of a woman sitting under a tree"
Sweep = list[tuple[float, int]]  # (scale, seed) per image


@dataclasses.dataclass(frozen=True)
class Figures:
    """One contender's run of the sweep."""

    name: str
    images: int
    seconds: float
    encoder_calls: int
    encoder_seconds: float
    adapter_loads: int
    adapter_seconds: float  # loading and unloading adapters

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


class EncoderClock:
    """Counts and times the text encoder's forward passes with hooks (the truth, whoever calls it)."""

    def __init__(self, pipe: Any) -> None:
        self.calls, self.seconds, self._started = 0, 0.0, 0.0
        encoder = pipe.text_encoder
        self._handles = [encoder.register_forward_pre_hook(self._start), encoder.register_forward_hook(self._stop)]

    def _start(self, *_: object) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.calls += 1
        self.seconds += time.perf_counter() - self._started

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def cells(images: int) -> Sweep:
    """(scale, seed) pairs: scales from 0 to 1.5 across two seeds."""
    per_seed = max(1, images // 2)
    scales = [round(1.5 * i / max(1, per_seed - 1), 4) for i in range(per_seed)]
    return [(scale, seed) for seed in (1, 2) for scale in scales][:images]


def naive(pipe: Any, lora: Path, sweep: Sweep, size: int) -> Figures:
    """Load, scale, render, unload, for every image: the loop most notebooks start with."""
    import torch

    clock, adapter_seconds = EncoderClock(pipe), 0.0
    started = time.perf_counter()
    for scale, seed in sweep:
        t0 = time.perf_counter()
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style")
        pipe.set_adapters(["style"], adapter_weights=[scale])
        adapter_seconds += time.perf_counter() - t0
        image = pipe(
            prompt=PROMPT,
            width=size,
            height=size,
            num_inference_steps=8,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        image.save(io.BytesIO(), format="PNG")
        t0 = time.perf_counter()
        pipe.unload_lora_weights()
        adapter_seconds += time.perf_counter() - t0
    seconds = time.perf_counter() - started
    clock.close()
    return Figures("naive diffusers loop", len(sweep), seconds, clock.calls, clock.seconds, len(sweep), adapter_seconds)


def _backend_figures(name: str, renderer: DiffusersRenderer, run: Callable[[], None], images: int) -> Figures:
    clock = EncoderClock(renderer.workers[0].pipe)
    counts, seconds = renderer.counts, renderer.seconds
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    clock.close()
    loads = renderer.counts.get("adapter_loads", 0) - counts.get("adapter_loads", 0)
    load_seconds = sum(renderer.seconds.get(k, 0.0) - seconds.get(k, 0.0) for k in ("adapter_loads", "adapter_unloads"))
    return Figures(name, images, wall, clock.calls, clock.seconds, loads, load_seconds)


def direct(renderer: DiffusersRenderer, lora: Path, sweep: Sweep, size: int) -> Figures:
    """The backend's own render, image after image, with no server in between."""

    async def run() -> None:
        for scale, seed in sweep:
            await renderer.render(Request(PROMPT, loras=[LoRA(str(lora), scale)], width=size, height=size, seed=seed))

    return _backend_figures("zlab diffusers backend, direct", renderer, lambda: asyncio.run(run()), len(sweep))


def over_http(server: LocalServer, renderer: DiffusersRenderer, lora: Path, sweep: Sweep, size: int) -> Figures:
    """The sweep through the local server with the diffusers backend, over loopback HTTP."""

    def run() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            pending = []
            for scale, seed in sweep:
                body = {"prompt": PROMPT, "loras": [{"path": str(lora), "scale": scale}], "seed": seed}
                answer = http.post(f"/v1/models/{MODEL_ID}", json=body | {"width": size, "height": size})
                pending.append(answer.json()["request_id"])
            while pending:
                result = http.get(f"/v1/requests/{pending[0]}/result").json()
                if result["status"] == "succeeded":
                    http.get(result["output"]["image"]).raise_for_status()
                    pending.pop(0)
                elif result["status"] == "failed":
                    raise RuntimeError(result["error"])
                else:
                    time.sleep(0.005)

    return _backend_figures("zlab diffusers backend, HTTP", renderer, run, len(sweep))


def median_round(rounds: list[Figures]) -> Figures:
    """The round with the median wall time (its other figures come with it)."""
    ordered = sorted(rounds, key=lambda f: f.seconds)
    return ordered[len(ordered) // 2]


def table(rows: list[Figures], baseline: Figures) -> str:
    """A Markdown table of the figures, each row's speed-up against `baseline`."""
    lines = [
        "| contender | images | wall s | images/s | text-encoder calls (s) | adapter loads (s) | vs naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.images} | {r.seconds:.2f} | {r.per_second:.2f} | {r.encoder_calls} "
            f"({r.encoder_seconds:.2f}) | {r.adapter_loads} ({r.adapter_seconds:.2f}) "
            f"| {baseline.seconds / r.seconds:.2f}× |"
        )
    return "\n".join(lines)


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
            pipe, what = renderer.workers[0].pipe, args.model
        else:
            pipe = tiny_pipeline().to(device)
            renderer = DiffusersRenderer.from_pipelines([pipe], "tiny-random-z-image", files=files)
            what = "tiny random Z-Image"
        lora = save_lora(random_lora(pipe, seed=1), Path(tmp) / "style.safetensors")
        sweep = cells(args.images)
        rounds: dict[str, list[Figures]] = {"naive": [], "direct": [], "http": []}
        with LocalServer(renderer=renderer) as server:  # closes the renderer when it stops
            # Warm up every path (first-call allocations, lazy imports) outside the timings.
            naive(pipe, lora, sweep[:1], args.size)
            over_http(server, renderer, lora, sweep[:1], args.size)
            for _ in range(args.repeats):
                renderer.clear()  # each round starts with no adapter and no prompt cached
                rounds["naive"].append(naive(pipe, lora, sweep, args.size))
                renderer.clear()
                rounds["direct"].append(direct(renderer, lora, sweep, args.size))
                renderer.clear()
                rounds["http"].append(over_http(server, renderer, lora, sweep, args.size))
    rows = [median_round(rounds[name]) for name in ("naive", "direct", "http")]
    spread = {name: statistics.pstdev([f.seconds for f in figures]) for name, figures in rounds.items()}

    print(
        f"LoRA scale sweep: {len(sweep)} images of {args.size}x{args.size}, 8 steps, {what} on {device} "
        f"(torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} CPU threads); "
        f"median of {args.repeats} rounds"
    )
    print(table(rows, rows[0]))
    print("round-to-round spread (s): " + ", ".join(f"{name} {value:.2f}" for name, value in spread.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
