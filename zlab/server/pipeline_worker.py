"""The two halves of a Z-Image render that touch a model: prompt encoding, and denoising + decoding on a device.

- `PromptEncoder` runs the text encoder (on a preparation thread, beside the GPU) and keeps the
  embeddings by prompt: LoRAs change only the transformer, so a scale sweep encodes its prompt once.
- `PipelineWorker` owns one pipeline on one device and is driven by that device's one compute thread:
  it switches adapters (loading prepared ones, unloading the least recently used past `lora_cache`),
  denoises 8 steps, decodes, and hands back the pixels as a uint8 array. It checks them: fp16 and
  broken weights give NaN, which ends as an all-black image that must not pass as a success.

torch and diffusers are imported only inside methods, so this module imports light.
"""

from __future__ import annotations

import collections
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zlab.server.adapters import AdapterStore, PreparedAdapter
from zlab.server.backend import RenderError
from zlab.server.lora_formats import short
from zlab.server.loras import plan_adapters

if TYPE_CHECKING:
    import numpy as np
    import torch

STEPS = 8  # Z-Image Turbo is distilled for 8 steps…
GUIDANCE = 0.0  # …and no classifier-free guidance
NAN_HINT = "fp16 overflows in Z-Image (use bf16 or fp32), or the weights are broken"


def linear_layers(transformer: Any) -> dict[str, tuple[int, int]]:
    """The transformer's linear layers, name → (in_features, out_features): what a LoRA must fit."""
    import torch

    return {
        name: (module.in_features, module.out_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


class PromptEncoder:
    """Prompt embeddings by prompt from one pipeline's text encoder, least recently used dropped past `capacity`.

    Thread-safe: one encode at a time (the text encoder is one module), cache hits never wait for it.
    """

    def __init__(self, pipe: Any, capacity: int) -> None:
        self.pipe, self.capacity = pipe, capacity
        self._cache: collections.OrderedDict[str, list[torch.Tensor]] = collections.OrderedDict()
        self._guard, self._encoding = threading.Lock(), threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)

    def embeddings(self, prompt: str) -> list[torch.Tensor]:
        """The prompt's embeddings on the text encoder's device (encoded on the first request)."""
        import torch

        with self._guard:
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                return self._cache[prompt]
        with self._encoding:
            with self._guard:
                if prompt in self._cache:  # encoded by another thread while this one waited
                    return self._cache[prompt]
            started = time.perf_counter()
            device = next(self.pipe.text_encoder.parameters()).device
            with torch.inference_mode():
                embeddings, _ = self.pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=False)
            with self._guard:
                self.counts["encodes"] += 1
                self.seconds["encodes"] += time.perf_counter() - started
                self._cache[prompt] = embeddings
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            return embeddings

    def clear(self) -> None:
        """Forget every prompt (a benchmark's cold start)."""
        with self._guard:
            self._cache.clear()


class PipelineWorker:
    """One pipeline on one device, driven by one compute thread (see the module docstring)."""

    def __init__(
        self, pipe: Any, device: str, info: Mapping[str, Any], store: AdapterStore, lora_cache: int = 8
    ) -> None:
        self.pipe, self.device, self.store, self.lora_cache = pipe, device, store, lora_cache
        self.info = {**info, "device": device}
        pipe.set_progress_bar_config(disable=True)
        # PEFT warns whenever a second adapter joins a model; caching several is this class's point.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
        self._adapters: list[str] = []  # loaded adapter names, least recently used first
        self._lora_enabled = True
        self.counts: collections.Counter[str] = collections.Counter()  # renders, adapter loads/unloads
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)  # time on each
        self.span: tuple[float, float] | None = None  # perf_counter of the first compute's start, the last's end

    def compute(
        self,
        embeddings: Sequence[torch.Tensor],
        adapters: Sequence[tuple[PreparedAdapter, float]],
        width: int,
        height: int,
        seed: int,
    ) -> np.ndarray:
        """Denoise and decode one image (blocking, on this worker's thread): height×width×3 uint8 pixels."""
        import torch

        started = time.perf_counter()
        self._activate(adapters)
        execution = self.pipe._execution_device
        embeds = [e if e.device == execution else e.to(execution, non_blocking=True) for e in embeddings]
        generator = torch.Generator("cpu").manual_seed(seed)  # same noise on any device
        try:
            with torch.inference_mode():
                images = self.pipe(
                    prompt_embeds=embeds,
                    width=width,
                    height=height,
                    num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE,
                    generator=generator,
                    output_type="pt",
                ).images
                if torch.isnan(images).any():
                    raise RenderError(f"the image came out as NaN on {self.device} ({NAN_HINT})")
                # As diffusers' own PIL conversion: float32, ×255, round half to even.
                pixels = (images[0].float() * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        except torch.cuda.OutOfMemoryError as exc:
            # CUDA only, untested here (no GPU): free what the failed render cached so the next job fits.
            del exc
            torch.cuda.empty_cache()
            raise RenderError(
                f"out of GPU memory on {self.device} at {width}x{height}; restart the server with --offload "
                "(text encoder on the CPU), or render smaller images"
            ) from None
        finally:
            ended = time.perf_counter()
            self.seconds["compute"] += ended - started
            self.span = (self.span[0] if self.span else started, ended)
        if not pixels.any():
            raise RenderError(f"the image came out all black on {self.device} ({NAN_HINT})")
        self.counts["renders"] += 1
        return pixels

    def clear(self) -> None:
        """Unload every adapter and restart `span` (a benchmark's cold start; call it between renders)."""
        self.span = None
        if self._adapters:
            self.pipe.delete_adapters(list(self._adapters))
        self._adapters.clear()

    def _activate(self, adapters: Sequence[tuple[PreparedAdapter, float]]) -> None:
        """Make exactly these adapters active at these scales, loading and unloading as planned."""
        if not adapters:
            if self._adapters and self._lora_enabled:
                self.pipe.disable_lora()
                self._lora_enabled = False
            return
        weights: dict[str, float] = {}  # by adapter: one file named twice adds up (it cannot be active twice)
        prepared: dict[str, PreparedAdapter] = {}
        for adapter, scale in adapters:
            weights[adapter.name] = weights.get(adapter.name, 0.0) + scale
            prepared.setdefault(adapter.name, adapter)
        plan = plan_adapters(self._adapters, list(weights), self.lora_cache)
        if plan.evict:
            started = time.perf_counter()
            self.pipe.delete_adapters(list(plan.evict))
            self.counts["adapter_unloads"] += len(plan.evict)
            self.seconds["adapter_unloads"] += time.perf_counter() - started
            self._adapters = [name for name in self._adapters if name not in plan.evict]
        for name in plan.load:
            self._load(prepared[name])  # a LoRA the model refuses raises here, leaving the cache consistent
            self._adapters.append(name)
        self._adapters = list(plan.order)
        if not self._lora_enabled:
            self.pipe.enable_lora()
            self._lora_enabled = True
        # After loading, only the last adapter is active: always say which ones, with this request's scales.
        self.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))

    def _load(self, adapter: PreparedAdapter) -> None:
        started = time.perf_counter()
        try:
            self.pipe.load_lora_into_transformer(
                dict(adapter.state_dict),  # diffusers pops from the dict it is given
                transformer=self.pipe.transformer,
                adapter_name=adapter.name,
                metadata=adapter.metadata,
                _pipeline=self.pipe,
            )
        except Exception as exc:
            if adapter.name in getattr(self.pipe.transformer, "peft_config", {}):
                self.pipe.delete_adapters([adapter.name])  # a half-made adapter would haunt later renders
            message = f"LoRA {adapter.path!r} ({adapter.layout}) could not be loaded: {short(str(exc))}"
            self.store.fail(adapter.name, message)
            raise RenderError(message) from exc
        self.counts["adapter_loads"] += 1
        self.seconds["adapter_loads"] += time.perf_counter() - started
