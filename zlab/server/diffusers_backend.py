"""Z-Image Turbo on your own GPU: a pipelined `Renderer` over diffusers' `ZImagePipeline` behind the local server.

    zlab serve --backend diffusers --model /path/to/Z-Image-Turbo --devices 0,1

Each job goes through three stages, so that a GPU never waits for anything but the GPU:

1. prepare, on a small pool of threads: the LoRA files (downloads, content hash, conversion and
   checks: `AdapterStore`) and the prompt's embeddings (`PromptEncoder`, cached by prompt);
2. compute, on the one thread of a free device (one pipeline per device, all taking prepared jobs
   from one queue): switch adapters, denoise 8 steps, decode latents to pixels;
3. finish, on another pool: crop and PNG-encode (hundreds of ms for a large image).

The server hands the renderer `capacity` = 3 jobs per device, so while a device computes one image,
the next is already prepared and the last is being encoded. The model is loaded once; adapters stay
loaded (least recently used unloaded past `lora_cache`) and are switched per request with the
request's scales. A LoRA that cannot be used fails its cell with one line saying which file, which
kind and why, and is remembered as failed for that file's content.

Every render uses 8 steps and guidance 0 (Z-Image Turbo's recipe: the pipeline's own defaults are 50
and 5.0), and a CPU `torch.Generator` seeded with the request's seed, so the same request gives the
same image on the same machine. A size the model cannot make (not a multiple of 16) is rendered at the
next one up and centre-cropped. Each result says how it was made (the /result body's `"backend"`).

torch and diffusers are imported only when a renderer is built (`pip install "zlab[local]"`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import io
import math
import queue
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlab.core.request import Request
from zlab.errors import ConfigError
from zlab.server.adapters import AdapterStore, PreparedAdapter
from zlab.server.backend import Rendered, RenderError
from zlab.server.lora_formats import short
from zlab.server.loras import LoraFiles
from zlab.server.pipeline_worker import GUIDANCE, STEPS, PipelineWorker, PromptEncoder, linear_layers

if TYPE_CHECKING:
    import numpy as np

# diffusers builds its classes lazily, which type checkers cannot follow: a pipeline is typed loosely.
ZImagePipeline = Any

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
FP16_REFUSED = (
    "--dtype fp16 is refused: Z-Image's activations overflow float16, which gives NaN (black) images "
    "(Tongyi-MAI/Z-Image#14); use bf16 (GPUs since Ampere, and CPUs) or fp32 (older GPUs: T4, V100, RTX 20xx)"
)
MIN_DIFFUSERS = (0, 42)  # 8 steps really make 8 passes (0.39), alpha≠rank and kohya files, LoKr, fused qkv
INSTALL = 'pip install "zlab[local]"   (from a checkout: pip install -e ".[local]")'
SIZE_MULTIPLE = 16  # the VAE's factor 8 times the transformer's 2×2 patches
JOBS_PER_DEVICE = 3  # one computing, one prepared and waiting, one being PNG-encoded
PREPARE_THREADS = 4  # a slow LoRA download must not hold up cells whose LoRAs are ready
CLOSE_WAIT_S = 120.0  # how long `close()` waits for a render in progress (a CPU render of a full-size image)


def missing_local_extra() -> str | None:
    """What to install for the diffusers backend, or None when everything it needs is importable."""
    import importlib.metadata
    import importlib.util

    needed = ("torch", "diffusers", "transformers", "peft", "safetensors", "accelerate")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return f"the diffusers backend needs {', '.join(missing)}: {INSTALL}"
    version = importlib.metadata.version("diffusers")
    if version_tuple(version) < MIN_DIFFUSERS:
        floor = ".".join(map(str, MIN_DIFFUSERS))
        return (
            f"the diffusers backend needs diffusers>={floor} (this is {version}: older ones render 7 of 8 steps, "
            f"misapply LoRAs whose alpha differs from their rank, or refuse kohya and LoKr files): "
            f'pip install -U "diffusers>={floor}"'
        )
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """ "0.42.1" → (0, 42, 1); "0.43.0.dev0" → (0, 43, 0)."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(part):  # "0rc1": a pre-release of this number ends the version
            break
    return tuple(parts)


def render_size(width: int, height: int) -> tuple[int, int]:
    """The size to render so that centre-cropping gives `width`×`height` (the model needs multiples of 16)."""
    return math.ceil(width / SIZE_MULTIPLE) * SIZE_MULTIPLE, math.ceil(height / SIZE_MULTIPLE) * SIZE_MULTIPLE


@dataclasses.dataclass(frozen=True)
class DiffusersSettings:
    """How to run the model: where it is, on which devices, in which dtype, and what to keep cached.

    `device` is cuda, cpu or mps (default: cuda if there is one, else mps, else cpu); `devices` are GPU
    indices, one pipeline each (prompts are encoded once, on the first: the others load no text
    encoder, about 8 GB of each GPU saved). `offload` keeps the transformer and VAE on the GPU and the text encoder
    (about 8 GB in bf16, run once per new prompt) on the CPU: Z-Image fits 24 GB cards with no weights
    crossing PCIe per image. `compile` wraps the transformer in `torch.compile` (a slow first image,
    one recompile when the scale first changes, none for later scales, and one whenever the set of active
    adapters changes). `attention` picks one of diffusers'
    attention backends (`flash`, `_flash_3`, `sage`, `xformers`, `_native_cudnn`, …; default PyTorch's
    own, `native`): one installed here, never one that downloads kernels at run time. fp16 is refused
    (see `FP16_REFUSED`).
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    devices: tuple[int, ...] = ()
    dtype: str = "bf16"
    offload: bool = False
    lora_cache: int = 8  # adapters kept loaded per pipeline
    prompt_cache: int = 64  # prompts whose embeddings are kept
    compile: bool = False
    attention: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of bf16, fp32")
        if self.dtype == "fp16":
            raise ConfigError(FP16_REFUSED)
        if self.device not in (None, "cuda", "cpu", "mps"):
            raise ConfigError(f"device {self.device!r} is not one of cuda, cpu, mps")
        if self.devices and self.device not in (None, "cuda"):
            raise ConfigError("--devices lists GPU indices; it goes with --device cuda")
        if self.lora_cache < 1 or self.prompt_cache < 1:
            raise ConfigError("lora_cache and prompt_cache must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DiffusersSettings:
        """From ZLAB_MODEL, ZLAB_DEVICE (cuda, cpu, mps, or cuda:0,1), ZLAB_DTYPE, ZLAB_OFFLOAD=1, ZLAB_COMPILE=1,
        ZLAB_ATTENTION."""
        device, _, indices = (env.get("ZLAB_DEVICE") or "").partition(":")
        return cls(
            model=env.get("ZLAB_MODEL") or DEFAULT_MODEL,
            device=device or None,
            devices=parse_devices(indices),
            dtype=env.get("ZLAB_DTYPE") or "bf16",
            offload=_flag(env.get("ZLAB_OFFLOAD")),
            compile=_flag(env.get("ZLAB_COMPILE")),
            attention=env.get("ZLAB_ATTENTION") or None,
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


def _flag(value: str | None) -> bool:
    return (value or "") not in ("", "0", "false", "no")


def parse_devices(text: str) -> tuple[int, ...]:
    """ "0,1" → (0, 1); "" → ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"devices {text!r} must be GPU indices like 0,1") from None


@dataclasses.dataclass
class _Job:
    """One request on its way through the stages, and the future its `render` awaits."""

    request: Request
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Rendered]
    embeddings: Sequence[Any] = ()
    adapters: Sequence[tuple[PreparedAdapter, float]] = ()

    def settle(self, result: Rendered | None = None, error: BaseException | None = None) -> None:
        """Resolve the awaiting coroutine from any thread (a cancelled one is left alone)."""

        def done() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)  # type: ignore[arg-type]

        with contextlib.suppress(RuntimeError):  # the server's loop has closed: nobody awaits this job any more
            self.loop.call_soon_threadsafe(done)


class DiffusersRenderer:
    """The `Renderer` (see `zlab.server.backend`): prepare, compute on a free device, finish (module docstring).

    Build it with `load_renderer(DiffusersSettings(...))`, or `from_pipelines` around pipelines you
    made yourself (a test's tiny random one, a quantised one); hand it to `LocalServer(renderer=…)`.
    """

    name = "diffusers"

    def __init__(
        self,
        workers: Sequence[PipelineWorker],
        encoder: PromptEncoder,
        store: AdapterStore,
        describe: Mapping[str, Any],
    ) -> None:
        if not workers:
            raise ConfigError("the diffusers backend needs at least one pipeline")
        self.workers, self.encoder, self.store = list(workers), encoder, store
        self.capacity = JOBS_PER_DEVICE * len(self.workers)
        self._describe = dict(describe)
        self._prepare_pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="zlab-prepare")
        self._finish_pool = ThreadPoolExecutor(len(self.workers), thread_name_prefix="zlab-png")
        self._ready: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._compute_loop, args=(w,), name=f"zlab-{w.device}", daemon=True)
            for w in self.workers
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def from_pipelines(
        cls,
        pipelines: Sequence[ZImagePipeline],
        model: str = "custom",
        settings: DiffusersSettings | None = None,
        files: LoraFiles | None = None,
    ) -> DiffusersRenderer:
        """A renderer over ready pipelines (each already on its device; the first one's text encoder is used)."""
        if not pipelines:
            raise ConfigError("the diffusers backend needs at least one pipeline")
        settings = settings or DiffusersSettings(model=model)
        first = pipelines[0]

        def read(path: Path) -> tuple[dict[str, Any], Any]:
            return first.lora_state_dict(
                str(path.parent),
                weight_name=path.name,
                use_safetensors=True,  # never fall back to unpickling
                local_files_only=True,
                return_lora_metadata=True,
            )

        store = AdapterStore(files or LoraFiles(), read, linear_layers(first.transformer), keep=settings.lora_cache)
        info = versions(model, first)
        if settings.attention:
            for pipe in pipelines:
                use_attention(pipe, settings.attention)
            info["attention"] = settings.attention
        workers = [PipelineWorker(p, str(p._execution_device), info, store, settings.lora_cache) for p in pipelines]
        devices = ",".join(w.device for w in workers)
        return cls(workers, PromptEncoder(first, settings.prompt_cache), store, {**info, "devices": devices})

    async def render(self, request: Request) -> Rendered:
        """Prepare, wait for a free device, compute, encode; a failure raises `RenderError` with its reason."""
        loop = asyncio.get_running_loop()
        job = _Job(request, loop, loop.create_future())
        self._prepare_pool.submit(self._prepare, job)
        return await job.future

    def _prepare(self, job: _Job) -> None:
        try:
            job.adapters = [(self.store.prepare(lora.path), lora.scale) for lora in job.request.loras]
            job.embeddings = self.encoder.embeddings(job.request.prompt)
        except Exception as exc:
            job.settle(error=_readable(exc))
            return
        self._ready.put(job)

    def _compute_loop(self, worker: PipelineWorker) -> None:
        while (job := self._ready.get()) is not None:
            if job.future.done():  # cancelled while it waited: skip it
                continue
            if self._closing:
                job.settle(error=RenderError("the server stopped before this image was rendered"))
                continue
            width, height = render_size(job.request.width, job.request.height)
            try:
                pixels = worker.compute(job.embeddings, job.adapters, width, height, job.request.seed)
            except Exception as exc:
                job.settle(error=_readable(exc))
                continue
            try:
                self._finish_pool.submit(self._finish, job, worker, pixels)
            except RuntimeError:  # `close()` shut the pool down while this image rendered
                job.settle(error=RenderError("the server stopped before the image was encoded"))

    def _finish(self, job: _Job, worker: PipelineWorker, pixels: np.ndarray) -> None:
        try:
            job.settle(result=encode_png(pixels, job.request, worker.info))
        except Exception as exc:
            job.settle(error=_readable(exc))

    def clear(self) -> None:
        """Empty every pipeline's adapters and the prompt cache (call it between renders, not during one)."""
        self.encoder.clear()
        for worker in self.workers:
            worker.clear()

    def describe(self) -> Mapping[str, Any]:
        """Model, versions, dtype and devices, for the server's start line."""
        return dict(self._describe)

    @property
    def counts(self) -> dict[str, int]:
        """Renders, prompt encodes, adapter loads/unloads, file hashes and reads, summed over the pipelines."""
        total: collections.Counter[str] = collections.Counter()
        for worker in self.workers:
            total.update(worker.counts)
        total.update(self.encoder.counts)
        total.update(self.store.counts)
        return dict(total)

    @property
    def seconds(self) -> dict[str, float]:
        """Time spent on each of `counts`, and `compute`: the devices' threads' busy time, summed."""
        total: collections.defaultdict[str, float] = collections.defaultdict(float)
        for source in (*(w.seconds for w in self.workers), self.encoder.seconds):
            for what, seconds in source.items():
                total[what] += seconds
        return dict(total)

    def close(self) -> None:
        """Stop the threads and free GPU memory: a render in progress finishes first (waited for, up to
        CLOSE_WAIT_S: a compute thread still inside torch when the interpreter exits aborts the process), jobs
        still waiting fail saying the server stopped."""
        self._closing = True
        for _ in self._threads:
            self._ready.put(None)
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(CLOSE_WAIT_S)
        self._finish_pool.shutdown(wait=False, cancel_futures=True)
        self.workers.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _readable(exc: Exception) -> Exception:
    """A render failure as the job's error: `RenderError` as it is, anything else with its type named."""
    if isinstance(exc, RenderError):
        return exc
    return RenderError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def encode_png(pixels: np.ndarray, request: Request, info: Mapping[str, Any]) -> Rendered:
    """Crop rendered pixels to the requested size (centred) and encode them as PNG."""
    from PIL import Image

    height, width = pixels.shape[:2]
    if (width, height) != (request.width, request.height):
        left, top = (width - request.width) // 2, (height - request.height) // 2
        pixels = pixels[top : top + request.height, left : left + request.width]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return Rendered(buffer.getvalue(), "image/png", {**info, "render_size": f"{width}x{height}"})


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


def place(pipe: ZImagePipeline, target: str, offload: bool) -> None:
    """Move a pipeline to its device; with `offload`, the text encoder stays on the CPU (see `DiffusersSettings`)."""
    if offload and target != "cpu":
        pipe.transformer.to(target)
        pipe.vae.to(target)
        if pipe.text_encoder is not None:
            pipe.text_encoder.to("cpu")
    else:
        pipe.to(target)


def use_attention(pipe: ZImagePipeline, name: str) -> None:
    """Run the transformer's attention on diffusers' backend `name`, or say why it cannot be used here."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    offline = sorted(b.value for b in AttentionBackendName if not b.value.endswith("_hub"))
    if name.endswith("_hub"):
        raise ConfigError(f"--attention {name} downloads its kernel at run time; pick an installed one: {offline}")
    if name not in offline:
        raise ConfigError(f"--attention {name!r} is not one of diffusers' attention backends: {', '.join(offline)}")
    try:
        pipe.transformer.set_attention_backend(name)
    except (ImportError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"--attention {name} cannot run here ({short(str(exc))}); leave it out for PyTorch's own attention"
        ) from exc


def load_renderer(
    settings: DiffusersSettings,
    files: LoraFiles | None = None,
    say: Callable[[str], None] | None = None,
    targets: Sequence[str] | None = None,
) -> DiffusersRenderer:
    """Load Z-Image Turbo once per device (a local folder or a Hugging Face id) and wrap it in a renderer.

    `say` hears one line before the (long) load starts, e.g. `print` to stderr. `targets` are the torch
    devices to load on (default: from `settings` and what this machine has).
    """
    problem = missing_local_extra()
    if problem:
        raise ConfigError(problem)
    import torch
    from diffusers import ZImagePipeline

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    targets = tuple(targets or settings.targets(torch.cuda.device_count(), mps))
    dtype = getattr(torch, DTYPES[settings.dtype])
    model = str(Path(settings.model).expanduser()) if Path(settings.model).expanduser().exists() else settings.model
    if say is not None:
        say(f"zlab: loading {settings.model} ({settings.dtype}) on {', '.join(targets)}; this takes a while")
    pipelines: list[ZImagePipeline] = []
    for target in targets:
        # Prompts are encoded once, by the first pipeline's text encoder: the others load none.
        shared = {"text_encoder": None, "tokenizer": None} if pipelines else {}
        try:
            with warnings.catch_warnings():  # some diffusers versions call it `dtype` and warn about this name
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = ZImagePipeline.from_pretrained(model, torch_dtype=dtype, **shared)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load Z-Image Turbo from {settings.model!r} ({str(exc).splitlines()[0]}); pass --model with "
                f"a folder holding the diffusers layout, or a Hugging Face id such as {DEFAULT_MODEL}"
            ) from exc
        place(pipe, target, settings.offload)
        if settings.compile:  # recompiles counted in the tests (dynamo on the CPU); inductor's speed-up is a GPU's
            pipe.transformer.compile()
        pipelines.append(pipe)
    return DiffusersRenderer.from_pipelines(pipelines, settings.model, settings, files)
