"""The local diffusers backend on real GPUs, with a full-size Z-Image Turbo of random weights (nothing downloaded).

    python benchmarks/bench_gpu.py [--images 24] [--size 1024x1536] [--repeats 3] [--gpus 0,1,...]
    python benchmarks/bench_gpu.py --tiny     # the same script on the CPU with the tiny model: a check
                                              # before spending GPU time (its numbers mean nothing)

The model is built from Z-Image Turbo's published configs (the transformer's 6.15 B parameters, the
Qwen3-4B text encoder, the 16-channel VAE, the flow-matching scheduler with shift 3) in bf16 on each
GPU, with random weights: timing does not depend on the weights' values. The tokenizer is the tiny
byte-level one (`zlab.testing.tiny_zimage`), so a prompt is a few dozen tokens longer than with Qwen's;
the caption is ~1% of the 6144 image tokens of a 1024×1536 image.

On the first GPU, `bench_local.compare` runs the same four contenders as on the CPU (naive loop,
sensible loop, zlab's renderer, `zlab run`'s client over HTTP) on a LoRA scale sweep, median of the
rounds, with the compute thread's busy fraction: each image's pixels are copied back to the host,
which waits for the GPU, so that thread's busy time is the GPU's. Then per-GPU scaling: zlab's
renderer over 1, 2, … of the listed GPUs (one pipeline each, jobs to whichever is free), images/s
and the busy fraction per GPU. Prints Markdown; name the card when you copy the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_local import PROMPT, Figures, cells, compare, median_round, table, verdict, zlab_direct

from zlab.server import LocalServer
from zlab.server.diffusers_backend import DiffusersRenderer, DiffusersSettings
from zlab.server.loras import LoraFiles
from zlab.testing.tiny_zimage import random_lora, save_lora, tiny_pipeline, tiny_tokenizer

TRANSFORMER = {  # Tongyi-MAI/Z-Image-Turbo transformer/config.json
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
}
TEXT_ENCODER = {  # Qwen3-4B, text_encoder/config.json
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
}
VAE = {  # vae/config.json (the 16-channel autoencoder)
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def full_size_pipeline(device: str) -> Any:
    """Z-Image Turbo at full size with random weights, built in bf16 directly on `device`."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            transformer = ZImageTransformer2DModel(**TRANSFORMER)
            text_encoder = Qwen3Model(Qwen3Config(**TEXT_ENCODER, torch_dtype="bfloat16"))
            vae = AutoencoderKL(**VAE)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # created with torch.empty: fill them, as the tiny pipeline does
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scaling(pipes: list[Any], lora: Path, images_per_gpu: int, size: tuple[int, int], repeats: int) -> list[str]:
    """zlab's renderer over the first 1, 2, … pipelines: images/s and busy fraction, median of the rounds."""
    width, height = size
    lines = ["| GPUs | images | images/s | per GPU | scaling | compute busy (each GPU) |", "|---|---|---|---|---|---|"]
    base = None
    for count in range(1, len(pipes) + 1):
        for pipe in pipes[:count]:
            pipe.unload_lora_weights()  # a previous renderer's adapters: this one starts with none
        renderer = DiffusersRenderer.from_pipelines(pipes[:count], "random-weight Z-Image Turbo", files=LoraFiles())
        sweep = cells(images_per_gpu * count)
        zlab_direct(renderer, lora, sweep[:count], width)  # warm every pipeline
        rounds: list[Figures] = []
        for _ in range(repeats):
            renderer.clear()
            rounds.append(_run(renderer, lora, sweep, width, height))
        figures = median_round(rounds)
        renderer.close()
        base = base or figures.per_second
        lines.append(
            f"| {count} | {figures.images} | {figures.per_second:.3f} | {figures.per_second / count:.3f} "
            f"| {figures.per_second / base / count:.0%} | {figures.busy:.1%} |"
        )
    return lines


def _run(renderer: DiffusersRenderer, lora: Path, sweep: list[tuple[float, int]], width: int, height: int) -> Figures:
    if width == height:
        return zlab_direct(renderer, lora, sweep, width)
    from zlab.core.request import LoRA, Request

    async def run() -> None:
        slots = asyncio.Semaphore(renderer.capacity)

        async def one(scale: float, seed: int) -> None:
            async with slots:
                await renderer.render(
                    Request(PROMPT, loras=[LoRA(str(lora), scale)], width=width, height=height, seed=seed)
                )

        await asyncio.gather(*(one(scale, seed) for scale, seed in sweep))

    compute = renderer.seconds.get("compute", 0.0)
    started = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - started
    busy = (renderer.seconds.get("compute", 0.0) - compute) / wall / len(renderer.workers)
    return Figures("zlab backend", len(sweep), wall, 0, 0, busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images per GPU in each sweep (default 24)")
    parser.add_argument(
        "--size", default="1024x1024", help="WIDTHxHEIGHT (default 1024x1024; the contenders use WIDTH²)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each contender (default 3)")
    parser.add_argument("--gpus", default="", help="GPU indices (default: all)")
    parser.add_argument("--no-contenders", action="store_true", help="only the per-GPU scaling")
    parser.add_argument(
        "--tiny", action="store_true", help="check the script on the CPU: the tiny model on two CPU 'GPUs'"
    )
    args = parser.parse_args(argv)

    import diffusers
    import torch

    if args.tiny:
        gpus, names, model, build = [0, 1], {"CPU (tiny model)"}, "tiny random Z-Image", lambda _: tiny_pipeline()
    elif torch.cuda.is_available():
        gpus = [int(i) for i in args.gpus.split(",") if i.strip()] or list(range(torch.cuda.device_count()))
        names = {torch.cuda.get_device_name(i) for i in gpus}
        model, build = "full-size random-weight Z-Image Turbo, bf16", lambda i: full_size_pipeline(f"cuda:{i}")
    else:
        print("bench_gpu.py needs a CUDA GPU (torch sees none); bench_local.py runs on the CPU", file=sys.stderr)
        return 2
    width, height = (int(n) for n in args.size.lower().split("x"))
    print(
        f"{len(gpus)} × {', '.join(sorted(names))}; torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{model}, 8 steps"
    )
    started = time.perf_counter()
    pipes = [build(i) for i in gpus]
    print(f"built {len(pipes)} pipeline(s) in {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="zlab-bench-gpu-") as tmp:
        rank, strength = (4, 0.5) if args.tiny else (32, 0.02)
        lora = save_lora(random_lora(pipes[0], seed=1, rank=rank, strength=strength), Path(tmp) / "style.safetensors")
        if not args.no_contenders:
            renderer = DiffusersRenderer.from_pipelines(pipes[:1], "random-weight Z-Image Turbo", DiffusersSettings())
            with LocalServer(renderer=renderer) as server:
                rounds = compare(renderer, server, lora, cells(args.images), width, args.repeats)
            rows = {name: median_round(figures) for name, figures in rounds.items()}
            spread = {name: statistics.pstdev([f.seconds for f in figures]) for name, figures in rounds.items()}
            print(f"\nLoRA scale sweep on GPU {gpus[0]}: {args.images} images of {width}x{width}, median of rounds")
            print(table(rows))
            print("round-to-round spread (s): " + ", ".join(f"{k} {v:.2f}" for k, v in spread.items()))
            print("\n".join(verdict(rounds)))
        print(f"\nPer-GPU scaling: {args.images} images per GPU of {width}x{height}")
        print("\n".join(scaling(pipes, lora, args.images, (width, height), args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
