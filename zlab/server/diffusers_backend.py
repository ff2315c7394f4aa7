"""Z-Image Turbo on your own GPU: a `Renderer` that runs diffusers' `ZImagePipeline` behind the local server.

    zlab serve --backend diffusers --model /path/to/Z-Image-Turbo --devices 0,1

One pipeline per device, each driven by its own thread, so the server's capacity is the number of
devices. What makes a LoRA sweep fast is what each pipeline keeps between renders:

- the model, loaded once when the server starts;
- LoRA adapters by file (`LoraFiles` fetches them once), switched per request with `set_adapters`
  and the request's scales, the least recently used one unloaded when more than `lora_cache` are in;
- prompt embeddings by prompt: LoRAs change only the transformer, so a scale sweep encodes its
  prompt once.

Every render uses 8 steps and guidance 0 (Z-Image Turbo's recipe: the pipeline's own defaults are 50
and 5.0), and a CPU `torch.Generator` seeded with the request's seed, so the same request gives the
same image on the same machine. A size the model cannot make (not a multiple of 16) is rendered at the
next one up and centre-cropped. Each result says how it was made: model, diffusers and torch versions,
dtype, device (the /result body's `"backend"`).

torch and diffusers are imported only when a renderer is built (`pip install "zlab[local]"`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import io
import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlab.core.request import LoRA, Request
from zlab.errors import ConfigError
from zlab.server.backend import Rendered, RenderError
from zlab.server.loras import LoraFiles, mismatch_message, plan_adapters, unmatched_keys

if TYPE_CHECKING:
    import torch

# diffusers builds its classes lazily, which type checkers cannot follow: a pipeline is typed loosely.
ZImagePipeline = Any

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
STEPS = 8  # Z-Image Turbo is distilled for 8 steps…
GUIDANCE = 0.0  # …and no classifier-free guidance
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
INSTALL = 'pip install "zlab[local]"   (from a checkout: pip install -e ".[local]")'
SIZE_MULTIPLE = 16  # the VAE's factor 8 times the transformer's 2×2 patches


def missing_local_extra() -> str | None:
    """What to install for the diffusers backend, or None when everything it needs is importable."""
    import importlib.util

    needed = ("torch", "diffusers", "transformers", "peft", "safetensors", "accelerate")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"the diffusers backend needs {', '.join(missing)}: {INSTALL}"


def render_size(width: int, height: int) -> tuple[int, int]:
    """The size to render so that centre-cropping gives `width`×`height` (the model needs multiples of 16)."""
    return math.ceil(width / SIZE_MULTIPLE) * SIZE_MULTIPLE, math.ceil(height / SIZE_MULTIPLE) * SIZE_MULTIPLE


@dataclasses.dataclass(frozen=True)
class DiffusersSettings:
    """How to run the model: where it is, on which devices, in which dtype, and what to keep cached.

    `device` is cuda, cpu or mps (default: cuda if there is one, else mps, else cpu); `devices` are GPU
    indices, one pipeline each. `offload` keeps only the running component on the GPU
    (`enable_model_cpu_offload`: slower, but fits 16–24 GB cards).
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    devices: tuple[int, ...] = ()
    dtype: str = "bf16"
    offload: bool = False
    lora_cache: int = 8  # adapters kept loaded per pipeline
    prompt_cache: int = 64  # prompts whose embeddings are kept per pipeline

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.device not in (None, "cuda", "cpu", "mps"):
            raise ConfigError(f"device {self.device!r} is not one of cuda, cpu, mps")
        if self.devices and self.device not in (None, "cuda"):
            raise ConfigError("--devices lists GPU indices; it goes with --device cuda")
        if self.lora_cache < 1 or self.prompt_cache < 1:
            raise ConfigError("lora_cache and prompt_cache must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DiffusersSettings:
        """From ZLAB_MODEL, ZLAB_DEVICE (cuda, cpu, mps, or cuda:0,1), ZLAB_DTYPE and ZLAB_OFFLOAD=1."""
        device, _, indices = (env.get("ZLAB_DEVICE") or "").partition(":")
        return cls(
            model=env.get("ZLAB_MODEL") or DEFAULT_MODEL,
            device=device or None,
            devices=parse_devices(indices),
            dtype=env.get("ZLAB_DTYPE") or "bf16",
            offload=env.get("ZLAB_OFFLOAD", "") not in ("", "0", "false", "no"),
        )

    def targets(self, cuda_count: int, mps: bool) -> tuple[str, ...]:
        """The torch devices to load a pipeline on, given what this machine has."""
        kind = self.device or ("cuda" if cuda_count else "mps" if mps else "cpu")
        if kind == "cuda":
            if not cuda_count:
                raise ConfigError("--device cuda, but torch sees no CUDA GPU (a CPU build of torch?)")
            indices = self.devices or (0,)
            bad = [i for i in indices if not 0 <= i < cuda_count]
            if bad:
                raise ConfigError(f"no GPU {bad[0]}: this machine has {cuda_count} (0 to {cuda_count - 1})")
            return tuple(f"cuda:{i}" for i in dict.fromkeys(indices))
        if kind == "mps" and not mps:
            raise ConfigError("--device mps, but torch has no MPS support here")
        return (kind,)


def parse_devices(text: str) -> tuple[int, ...]:
    """ "0,1" → (0, 1); "" → ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"devices {text!r} must be GPU indices like 0,1") from None


class PipelineWorker:
    """One pipeline on one device, with its adapter and embedding caches; used from one thread at a time."""

    def __init__(
        self, pipe: ZImagePipeline, device: str, info: Mapping[str, Any], files: LoraFiles, settings: DiffusersSettings
    ) -> None:
        import torch

        self.pipe, self.device, self.files, self.settings = pipe, device, files, settings
        self.info = {**info, "device": device}
        pipe.set_progress_bar_config(disable=True)
        # PEFT warns whenever a second adapter joins a model; caching several is this class's point.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
        # The transformer's linear layers as loaded, before any adapter wraps them: what a LoRA must fit.
        self._linears = {
            name: (module.in_features, module.out_features)
            for name, module in pipe.transformer.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        self._adapters: dict[str, str] = {}  # adapter name → LoRA path, in least-recently-used order
        self._embeddings: collections.OrderedDict[str, list[torch.Tensor]] = collections.OrderedDict()
        self._lora_enabled = True
        self.counts: collections.Counter[str] = collections.Counter()  # renders, encodes, adapter loads/unloads
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)  # time on each of those

    def render(self, request: Request) -> Rendered:
        """Render one request (blocking): adapters, cached embeddings, seeded generator, PNG."""
        import torch

        started = time.perf_counter()
        embeddings = self._prompt_embeddings(request.prompt)
        self._activate(request.loras)
        width, height = render_size(request.width, request.height)
        generator = torch.Generator("cpu").manual_seed(request.seed)  # same noise on any device
        try:
            with torch.inference_mode():
                image = self.pipe(
                    prompt_embeds=embeddings,
                    width=width,
                    height=height,
                    num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE,
                    generator=generator,
                    output_type="pil",
                ).images[0]
        except torch.cuda.OutOfMemoryError as exc:
            raise RenderError(
                f"out of GPU memory on {self.device} at {width}x{height}; restart the server with --offload, "
                "or render smaller images"
            ) from exc
        if image.size != (request.width, request.height):
            left, top = (width - request.width) // 2, (height - request.height) // 2
            image = image.crop((left, top, left + request.width, top + request.height))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self.counts["renders"] += 1
        self.seconds["renders"] += time.perf_counter() - started
        return Rendered(buffer.getvalue(), "image/png", {**self.info, "render_size": f"{width}x{height}"})

    def clear(self) -> None:
        """Unload every cached adapter and forget every cached prompt (a benchmark's cold start)."""
        if self._adapters:
            self.pipe.delete_adapters(list(self._adapters))
        self._adapters.clear()
        self._embeddings.clear()

    def _prompt_embeddings(self, prompt: str) -> list[torch.Tensor]:
        cached = self._embeddings.get(prompt)
        if cached is not None:
            self._embeddings.move_to_end(prompt)
            return cached
        import torch

        started = time.perf_counter()
        with torch.inference_mode():
            device = self.pipe._execution_device
            embeddings, _ = self.pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=False)
        self.counts["encodes"] += 1
        self.seconds["encodes"] += time.perf_counter() - started
        self._embeddings[prompt] = embeddings
        while len(self._embeddings) > self.settings.prompt_cache:
            self._embeddings.popitem(last=False)
        return embeddings

    def _activate(self, loras: Sequence[LoRA]) -> None:
        """Make exactly these LoRAs active at these scales, loading and unloading adapters as planned."""
        if not loras:
            if self._adapters and self._lora_enabled:
                self.pipe.disable_lora()
                self._lora_enabled = False
            return
        weights: dict[str, float] = {}  # by adapter: one file named twice adds up (it cannot be active twice)
        paths: dict[str, str] = {}
        for lora in loras:
            name = self._adapter_name(lora.path)
            weights[name] = weights.get(name, 0.0) + lora.scale
            paths.setdefault(name, lora.path)
        plan = plan_adapters(list(self._adapters), list(weights), self.settings.lora_cache)
        if plan.evict:
            started = time.perf_counter()
            self.pipe.delete_adapters(list(plan.evict))
            self.counts["adapter_unloads"] += len(plan.evict)
            self.seconds["adapter_unloads"] += time.perf_counter() - started
            self._adapters = {name: path for name, path in self._adapters.items() if name not in plan.evict}
        for name in plan.load:
            self._load(paths[name], name)  # a LoRA that does not fit raises here, leaving the cache consistent
            self._adapters[name] = paths[name]
        self._adapters = {name: self._adapters[name] for name in plan.order}
        if not self._lora_enabled:
            self.pipe.enable_lora()
            self._lora_enabled = True
        # After loading, only the last adapter is active: always say which ones, with this request's scales.
        self.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))

    def _adapter_name(self, path: str) -> str:
        """An adapter name per file version: a local file edited on disk loads again."""
        local = self.files.local_file(path)
        stat = local.stat()
        identity = f"{local}\0{stat.st_size}\0{stat.st_mtime_ns}"
        return "zlab_" + hashlib.sha256(identity.encode()).hexdigest()[:16]

    def _load(self, path: str, name: str) -> None:
        started = time.perf_counter()
        local = self.files.local_file(path)
        try:
            state_dict, metadata = self.pipe.lora_state_dict(
                str(local.parent),
                weight_name=local.name,
                use_safetensors=True,  # never fall back to unpickling
                local_files_only=True,
                return_lora_metadata=True,
            )
        except Exception as exc:  # a format diffusers cannot convert: the user must hear which file and why
            raise RenderError(f"LoRA {path!r} could not be read as a Z-Image LoRA: {exc}") from exc
        if any(".lokr_" in key for key in state_dict):
            raise RenderError(f"LoRA {path!r} is a LoKr adapter; zlab's diffusers backend loads LoRA adapters only")
        if state_dict and not any(key.startswith("transformer.") for key in state_dict):
            state_dict = {f"transformer.{key}": value for key, value in state_dict.items()}  # a bare PEFT file
        if not state_dict:
            raise RenderError(f"LoRA {path!r} holds no LoRA tensors")
        problems = unmatched_keys({k: tuple(v.shape) for k, v in state_dict.items()}, self._linears)
        if problems:
            raise RenderError(mismatch_message(path, problems, len(state_dict)))
        self.pipe.load_lora_into_transformer(
            state_dict, transformer=self.pipe.transformer, adapter_name=name, metadata=metadata, _pipeline=self.pipe
        )
        self.counts["adapter_loads"] += 1
        self.seconds["adapter_loads"] += time.perf_counter() - started


class DiffusersRenderer:
    """The `Renderer` (see `zlab.server.backend`) over one `PipelineWorker` per device.

    Build it with `load_renderer(DiffusersSettings(...))`, or `from_pipelines` around pipelines you
    made yourself (a test's tiny random one, a quantised one); hand it to `LocalServer(renderer=…)`.
    """

    name = "diffusers"

    def __init__(self, workers: Sequence[PipelineWorker], describe: Mapping[str, Any]) -> None:
        if not workers:
            raise ConfigError("the diffusers backend needs at least one pipeline")
        self.workers = list(workers)
        self.capacity = len(self.workers)
        self._describe = dict(describe)
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix=f"zlab-{w.device}") for w in self.workers]
        self._free: list[int] = list(range(len(self.workers)))
        self._lock = threading.Lock()

    @classmethod
    def from_pipelines(
        cls,
        pipelines: Sequence[ZImagePipeline],
        model: str = "custom",
        settings: DiffusersSettings | None = None,
        files: LoraFiles | None = None,
    ) -> DiffusersRenderer:
        """A renderer over ready pipelines (each already on its device)."""
        settings = settings or DiffusersSettings(model=model)
        files = files or LoraFiles()
        info = versions(model, pipelines[0]) if pipelines else {}
        workers = [PipelineWorker(p, str(p._execution_device), info, files, settings) for p in pipelines]
        devices = ",".join(w.device for w in workers)
        return cls(workers, {**info, "backend": "diffusers", "devices": devices})

    async def render(self, request: Request) -> Rendered:
        """Render on a free pipeline's thread; the scheduler never runs more than `capacity` at once."""
        with self._lock:
            if not self._free:
                raise RuntimeError("more renders than pipelines: the scheduler's capacity must be the renderer's")
            index = self._free.pop(0)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._threads[index], self.workers[index].render, request)
        finally:
            with self._lock:
                self._free.append(index)

    def clear(self) -> None:
        """Empty every pipeline's adapter and prompt caches (call it between renders, not during one)."""
        for worker in self.workers:
            worker.clear()

    def describe(self) -> Mapping[str, Any]:
        """Model, versions, dtype and devices, for the server's start line."""
        return dict(self._describe)

    @property
    def counts(self) -> dict[str, int]:
        """Renders, prompt encodes and adapter loads/unloads, summed over the pipelines."""
        total: collections.Counter[str] = collections.Counter()
        for worker in self.workers:
            total.update(worker.counts)
        return dict(total)

    @property
    def seconds(self) -> dict[str, float]:
        """Time spent on each of `counts` (renders include their encodes and adapter loads), summed."""
        total: collections.defaultdict[str, float] = collections.defaultdict(float)
        for worker in self.workers:
            for what, seconds in worker.seconds.items():
                total[what] += seconds
        return dict(total)

    def close(self) -> None:
        """Stop the render threads (a render in progress finishes first) and free GPU memory."""
        for pool in self._threads:
            pool.shutdown(wait=False, cancel_futures=True)
        self.workers.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def versions(model: str, pipe: ZImagePipeline) -> dict[str, Any]:
    """What a result records about how it was made (flat str → str/number)."""
    import diffusers
    import torch

    dtype = str(pipe.transformer.dtype).removeprefix("torch.")
    return {
        "model": model,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "dtype": dtype,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
    }


def load_renderer(
    settings: DiffusersSettings, files: LoraFiles | None = None, say: Callable[[str], None] | None = None
) -> DiffusersRenderer:
    """Load Z-Image Turbo once per device (a local folder or a Hugging Face id) and wrap it in a renderer.

    `say` hears one line before the (long) load starts, e.g. `print` to stderr.
    """
    problem = missing_local_extra()
    if problem:
        raise ConfigError(problem)
    import torch
    from diffusers import ZImagePipeline

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    targets = settings.targets(torch.cuda.device_count(), mps)
    dtype = getattr(torch, DTYPES[settings.dtype])
    model = str(Path(settings.model).expanduser()) if Path(settings.model).expanduser().exists() else settings.model
    if say is not None:
        say(f"zlab: loading {settings.model} ({settings.dtype}) on {', '.join(targets)}; this takes a while")
    pipelines = []
    for target in targets:
        try:
            with warnings.catch_warnings():  # newer diffusers call it `dtype`; the floor version knows only this
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = ZImagePipeline.from_pretrained(model, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load Z-Image Turbo from {settings.model!r} ({str(exc).splitlines()[0]}); pass --model with "
                f"a folder holding the diffusers layout, or a Hugging Face id such as {DEFAULT_MODEL}"
            ) from exc
        if settings.offload and target.startswith("cuda"):
            pipe.enable_model_cpu_offload(gpu_id=int(target.partition(":")[2] or 0))
        else:
            pipe.to(target)
        pipelines.append(pipe)
    return DiffusersRenderer.from_pipelines(pipelines, settings.model, settings, files)
