"""A LoRA scale sweep on this machine: zlab's diffusers backend against the naive diffusers loop, side by side.

    python benchmarks/bench_local.py [--images 32] [--size 256] [--device cpu|cuda] [--model DIR] [--threads N]

* naive: what a notebook usually does for each image: load the LoRA, set its scale, call the pipeline with
  the prompt (so the text encoder runs every time), unload the LoRA;
* zlab: the same images through `zlab serve --backend diffusers`'s code (a `LocalServer` with a
  `DiffusersRenderer`), submitted over loopback HTTP all at once, each PNG downloaded: the adapter is loaded
  once and switched by scale, and the prompt is encoded once.

Both use 8 steps, guidance 0 and the same seeds. By default the pipeline is the tiny random Z-Image
(`zlab.server.tiny_zimage`), so the figures show the overheads a sweep pays, not the real model's speed;
`--model` runs the real Z-Image Turbo from a local folder (a GPU is then needed to finish in minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from zlab.request import MODEL_ID
from zlab.server import LocalServer
from zlab.server.diffusers_backend import DiffusersRenderer, DiffusersSettings, load_renderer
from zlab.server.loras import LoraFiles
from zlab.server.tiny_zimage import random_lora, save_lora, tiny_pipeline

PROMPT = "t3chnic4lly vibrant 1960s close-up of a woman sitting under a tree"


@dataclasses.dataclass(frozen=True)
class Figures:
    """One contender's run of the sweep."""

    name: str
    images: int
    seconds: float
    encoder_calls: int
    adapter_loads: int

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


class EncoderCounter:
    """Counts the text encoder's forward passes with a hook (the truth, whoever calls it)."""

    def __init__(self, pipe: Any) -> None:
        self.calls = 0
        self._handle = pipe.text_encoder.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def cells(images: int) -> list[tuple[float, int]]:
    """(scale, seed) pairs: scales from 0 to 1.5 across two seeds."""
    per_seed = max(1, images // 2)
    scales = [round(1.5 * i / max(1, per_seed - 1), 4) for i in range(per_seed)]
    return [(scale, seed) for seed in (1, 2) for scale in scales][:images]


def naive(pipe: Any, lora: Path, sweep: list[tuple[float, int]], size: int) -> Figures:
    """Load, scale, render, unload, for every image: the loop most notebooks start with."""
    import io

    import torch

    counter = EncoderCounter(pipe)
    started = time.perf_counter()
    for scale, seed in sweep:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style")
        pipe.set_adapters(["style"], adapter_weights=[scale])
        image = pipe(
            prompt=PROMPT,
            width=size,
            height=size,
            num_inference_steps=8,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        image.save(io.BytesIO(), format="PNG")
        pipe.unload_lora_weights()
    seconds = time.perf_counter() - started
    counter.close()
    return Figures("naive diffusers loop", len(sweep), seconds, counter.calls, len(sweep))


def through_backend(
    server: LocalServer, renderer: DiffusersRenderer, lora: Path, sweep: list[tuple[float, int]], size: int
) -> Figures:
    """The sweep through the local server with the diffusers backend, over loopback HTTP."""
    counter = EncoderCounter(renderer.workers[0].pipe)
    loads_before = renderer.counts.get("adapter_loads", 0)
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        started = time.perf_counter()
        ids = []
        for scale, seed in sweep:
            body = {"prompt": PROMPT, "loras": [{"path": str(lora), "scale": scale}], "seed": seed}
            answer = http.post(f"/v1/models/{MODEL_ID}", json=body | {"width": size, "height": size})
            ids.append(answer.json()["request_id"])
        pending = list(ids)
        while pending:
            request_id = pending[0]
            result = http.get(f"/v1/requests/{request_id}/result").json()
            if result["status"] == "succeeded":
                http.get(result["output"]["image"]).raise_for_status()
                pending.pop(0)
            elif result["status"] == "failed":
                raise RuntimeError(result["error"])
            else:
                time.sleep(0.005)
        seconds = time.perf_counter() - started
    counter.close()
    loads = renderer.counts.get("adapter_loads", 0) - loads_before
    return Figures("zlab diffusers backend (HTTP)", len(sweep), seconds, counter.calls, loads)


def table(rows: list[Figures], baseline: Figures) -> str:
    """A Markdown table of the figures, each row's speed-up against `baseline`."""
    lines = [
        "| contender | images | wall s | images/s | text-encoder calls | adapter loads | vs naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = f"{baseline.seconds / r.seconds:.2f}×"
        lines.append(
            f"| {r.name} | {r.images} | {r.seconds:.2f} | {r.per_second:.2f} | {r.encoder_calls} "
            f"| {r.adapter_loads} | {speedup} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images in the sweep (default 32)")
    parser.add_argument("--size", type=int, default=256, help="width and height (default 256)")
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
        with LocalServer(renderer=renderer) as server:  # closes the renderer when it stops
            # Warm up both paths (first-call allocations, lazy imports) outside the timings.
            naive(pipe, lora, sweep[:1], args.size)
            through_backend(server, renderer, lora, sweep[:1], args.size)
            renderer.clear()  # the timed sweep starts with no adapter and no prompt cached

            slow = naive(pipe, lora, sweep, args.size)
            fast = through_backend(server, renderer, lora, sweep, args.size)

    print(
        f"LoRA scale sweep: {len(sweep)} images of {args.size}x{args.size}, 8 steps, {what} on {device} "
        f"(torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} CPU threads)"
    )
    print(table([slow, fast], slow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
