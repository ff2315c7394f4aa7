"""The diffusers backend's pipelined renderer, its devices, and the images it must not pass as successes.

Tiny random Z-Image pipelines (`zlab.testing.tiny_zimage`) behind the local server over loopback HTTP. The
ordering claims (the next job is prepared while the device computes; a slow LoRA download does not hold up
other cells; a busy device does not hold up a free one) are shown with events held inside model hooks and
the download transport, never with timings: each wait has a deadline only to catch a hang.
"""

from __future__ import annotations

import importlib.util
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from test_local_diffusers import MISSING, SIZE, Backend, one_thread

from zlab import cli
from zlab.core.request import MODEL_ID
from zlab.errors import ConfigError
from zlab.server import LocalServer
from zlab.server.diffusers_backend import (
    DiffusersRenderer,
    DiffusersSettings,
    load_renderer,
    place,
    version_tuple,
)
from zlab.server.loras import LoraFiles
from zlab.testing import tiny_zimage as tz

pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"skipped: {MISSING}")
HANG = 30  # seconds: only to stop a test that would otherwise hang


class Submitter:
    """Submits requests to a local server over loopback HTTP and follows them."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=HANG)

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def __call__(self, prompt: str, seed: int = 1, loras=()) -> str:
        body = {"prompt": prompt, "seed": seed, "width": SIZE, "height": SIZE}
        body["loras"] = [{"path": path, "scale": scale} for path, scale in loras]
        answer = self.http.post(f"/v1/models/{MODEL_ID}", json=body)
        answer.raise_for_status()
        return answer.json()["request_id"]

    def result(self, request_id: str) -> dict:
        return self.http.get(f"/v1/requests/{request_id}/result").json()

    def status(self, request_id: str) -> str:
        return self.result(request_id)["status"]

    def wait(self, request_id: str) -> dict:
        return self.wait_for([request_id], 1)[request_id]

    def wait_for(self, ids: list[str], count: int) -> dict[str, dict]:
        """The finished ones among `ids`, once at least `count` have finished."""
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            answers = {i: self.result(i) for i in ids}
            finished = {i: a for i, a in answers.items() if a["status"] in ("succeeded", "failed")}
            if len(finished) >= count:
                return finished
            time.sleep(0.01)
        raise AssertionError(f"fewer than {count} of {len(ids)} jobs finished within {HANG} s")

    def image(self, request_id: str) -> np.ndarray:
        png = self.http.get(self.wait(request_id)["output"]["image"]).content
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_fp16_is_refused_with_the_reason_before_anything_loads(capsys):
    with pytest.raises(ConfigError, match=r"overflow float16.*NaN.*bf16.*fp32"):
        DiffusersSettings(dtype="fp16")
    assert cli.main(["serve", "--backend", "diffusers", "--dtype", "fp16", "--model", "/nowhere"]) == 2
    assert "--dtype fp16 is refused" in capsys.readouterr().err


def test_a_nan_or_all_black_image_fails_with_the_reason_and_the_server_carries_on(tmp_path):
    import torch

    backend = Backend(tmp_path)
    try:
        good = backend.image()
        weight = backend.pipe.transformer.layers[0].attention.to_out[0].weight
        saved = weight.detach().clone()
        with torch.no_grad():
            weight[0, 0] = float("inf")  # what an fp16 overflow leaves behind
        answer = backend.result(seed=2)
        assert answer["status"] == "failed" and "came out as NaN" in answer["error"]["message"], answer
        assert "fp16" in answer["error"]["message"]
        with torch.no_grad():
            weight.copy_(saved)
            bias = backend.pipe.vae.decoder.conv_out.bias
            bias_saved = bias.detach().clone()
            bias.fill_(-1e4)  # every pixel clipped to 0
        answer = backend.result(seed=3)
        assert answer["status"] == "failed" and "all black" in answer["error"]["message"], answer
        with torch.no_grad():
            bias.copy_(bias_saved)
        assert np.array_equal(backend.image(), good)
    finally:
        backend.close()


def test_after_running_out_of_gpu_memory_the_job_fails_saying_so_and_the_next_one_renders(tmp_path):
    import torch

    backend = Backend(tmp_path)
    raised: list[bool] = []

    def out_of_memory(*_):
        if not raised:  # what the CUDA allocator raises mid-render; on this CPU-only machine, raised by hand
            raised.append(True)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    backend.pipe.transformer.register_forward_pre_hook(out_of_memory)
    try:
        answer = backend.result(seed=4)
        assert answer["status"] == "failed", answer
        assert "out of GPU memory on cpu at 256x256" in answer["error"]["message"]
        assert "--offload" in answer["error"]["message"]
        assert backend.image(seed=4).shape == (SIZE, SIZE, 3)  # cached memory released, the server serves on
    finally:
        backend.close()


def test_the_next_prompt_is_encoded_while_the_device_renders_and_png_is_not_on_its_thread(tmp_path):
    backend = Backend(tmp_path)
    second_encoded, threads = threading.Event(), {}
    waited: list[bool] = []

    def on_encode(*_):
        threads.setdefault("encode", threading.current_thread().name)
        if backend.encoder_calls == 2:  # Backend's own hook, registered first, has counted this call
            second_encoded.set()

    def on_denoise(*_):
        threads.setdefault("compute", threading.current_thread().name)
        if not waited:  # the first job's first step: hold the device until the second prompt is encoded
            waited.append(second_encoded.wait(HANG))

    backend.pipe.text_encoder.register_forward_hook(on_encode)
    backend.pipe.transformer.register_forward_pre_hook(on_denoise)
    try:
        with Submitter(backend.server.base_url) as submit:
            first, second = submit("a red fox"), submit("a blue heron")
            assert submit.wait(first)["status"] == "succeeded" and submit.wait(second)["status"] == "succeeded"
        assert waited == [True]  # prepared beside the busy device, not after it
        assert threads["encode"].startswith("zlab-prepare") and threads["compute"] == "zlab-cpu"
    finally:
        backend.close()


def test_a_slow_lora_download_does_not_hold_up_cells_that_are_ready(tmp_path):
    one_thread()
    pipe = tz.tiny_pipeline()
    body = tz.save_lora(tz.random_lora(pipe, seed=1), tmp_path / "style.safetensors").read_bytes()
    release, asked = threading.Event(), threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        asked.set()
        assert release.wait(HANG)
        return httpx.Response(200, content=body)

    files = LoraFiles(tmp_path / "cache", transport=httpx.MockTransport(slow))
    renderer = DiffusersRenderer.from_pipelines([pipe], "tiny", files=files)
    with LocalServer(renderer=renderer) as server, Submitter(server.base_url) as submit:
        slow_cell = submit("a red fox", loras=[("https://example.org/style.safetensors", 1.0)])
        assert asked.wait(HANG)
        ready = [submit("a red fox", seed=seed) for seed in (1, 2)]
        assert [submit.wait(r)["status"] for r in ready] == ["succeeded", "succeeded"]
        assert submit.status(slow_cell) == "in_progress"  # still downloading: the others went past it
        release.set()
        assert submit.wait(slow_cell)["status"] == "succeeded"


def test_jobs_go_to_whichever_device_is_free_and_render_alike(tmp_path):
    one_thread()
    busy, free = tz.tiny_pipeline(), tz.tiny_pipeline()  # the same weights: one model on two "devices"
    release, held = threading.Event(), []

    def hold(*_):
        if not held:
            held.append(True)
            assert release.wait(HANG)

    busy.transformer.register_forward_pre_hook(hold)
    renderer = DiffusersRenderer.from_pipelines([busy, free], "tiny", files=LoraFiles(tmp_path))
    assert renderer.capacity == 6  # three jobs per device: computing, prepared, being encoded
    with LocalServer(renderer=renderer) as server, Submitter(server.base_url) as submit:
        ids = [submit("a red fox", seed=seed) for seed in (1, 2, 3, 4)]
        done = submit.wait_for(ids, 3)
        assert len(done) == 3 and all(a["status"] == "succeeded" for a in done.values())  # the free device's
        stuck = next(i for i in ids if i not in done)
        assert submit.status(stuck) == "in_progress"  # held on the busy device
        release.set()
        assert submit.wait(stuck)["status"] == "succeeded"
        images = {i: submit.image(i) for i in ids}
        assert sorted(w.counts["renders"] for w in renderer.workers) == [1, 3]
    solo = DiffusersRenderer.from_pipelines([tz.tiny_pipeline()], "tiny", files=LoraFiles(tmp_path))
    with LocalServer(renderer=solo) as server, Submitter(server.base_url) as submit:
        assert np.array_equal(submit.image(submit("a red fox", seed=3)), images[ids[2]])  # any device, same image


def test_offload_keeps_the_transformer_and_vae_on_the_device_and_only_the_text_encoder_on_the_cpu():
    one_thread()
    pipe = tz.tiny_pipeline()
    place(pipe, "meta", offload=True)  # "meta" stands in for a GPU here: weights move, nothing is computed
    devices = {name: next(getattr(pipe, name).parameters()).device.type for name in ("transformer", "vae")}
    assert devices == {"transformer": "meta", "vae": "meta"}
    assert next(pipe.text_encoder.parameters()).device.type == "cpu"


def test_versions_compare_as_numbers():
    assert version_tuple("0.42.1") == (0, 42, 1) and version_tuple("0.43.0.dev0") == (0, 43, 0)
    assert version_tuple("0.9.0") < version_tuple("0.42.0") and version_tuple("1.0.0rc1") == (1, 0, 0)


def test_settings_read_compile_and_offload_from_the_environment():
    settings = DiffusersSettings.from_env({"ZLAB_OFFLOAD": "1", "ZLAB_COMPILE": "yes"})
    assert settings.offload and settings.compile
    assert not DiffusersSettings.from_env({"ZLAB_COMPILE": "0"}).compile


def test_extra_devices_load_no_text_encoder_and_render_alike(tmp_path):
    one_thread()
    tz.tiny_pipeline().save_pretrained(tmp_path / "model")
    settings = DiffusersSettings(model=str(tmp_path / "model"), dtype="fp32")
    renderer = load_renderer(settings, LoraFiles(tmp_path / "cache"), targets=("cpu", "cpu"))  # two "devices"
    try:
        first, second = renderer.workers
        assert first.pipe.text_encoder is not None and second.pipe.text_encoder is None  # encoded once, on the first
        embeddings = renderer.encoder.embeddings("a red fox")
        images = [w.compute(embeddings, [], SIZE, SIZE, seed=3) for w in renderer.workers]
        assert np.array_equal(*images)
    finally:
        renderer.close()


def test_an_attention_backend_is_used_when_asked_and_refused_with_the_reason_when_it_cannot_run(tmp_path):
    one_thread()
    default = DiffusersRenderer.from_pipelines([tz.tiny_pipeline()], "tiny", files=LoraFiles(tmp_path))
    math_only = DiffusersRenderer.from_pipelines(
        [tz.tiny_pipeline()], "tiny", DiffusersSettings(attention="_native_math"), LoraFiles(tmp_path)
    )
    try:
        worker = math_only.workers[0]
        backends = {
            m.processor._attention_backend.value for m in worker.pipe.transformer.modules() if hasattr(m, "processor")
        }
        assert backends == {"_native_math"} and worker.info["attention"] == "_native_math"
        got = [
            r.workers[0].compute(r.encoder.embeddings("a red fox"), [], SIZE, SIZE, seed=3)
            for r in (default, math_only)
        ]
        assert np.abs(got[0].astype(int) - got[1].astype(int)).max() <= 2  # the same attention, another kernel
    finally:
        default.close()
        math_only.close()
    with pytest.raises(ConfigError, match="downloads its kernel"):
        DiffusersRenderer.from_pipelines([tz.tiny_pipeline()], "tiny", DiffusersSettings(attention="flash_hub"))
    with pytest.raises(ConfigError, match=r"not one of diffusers' attention backends: .*_native_math"):
        DiffusersRenderer.from_pipelines([tz.tiny_pipeline()], "tiny", DiffusersSettings(attention="fastest"))
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ConfigError, match="--attention flash cannot run here"):
            DiffusersRenderer.from_pipelines([tz.tiny_pipeline()], "tiny", DiffusersSettings(attention="flash"))
    assert DiffusersSettings.from_env({"ZLAB_ATTENTION": "sage"}).attention == "sage"


@pytest.mark.slow
def test_with_compile_a_scale_sweep_compiles_once_and_renders_as_without(tmp_path, monkeypatch):
    """`--compile` (torch.compile of the transformer) through the same load path, with dynamo's counting backend
    in place of inductor (no C compiler, no minutes of compiling): a new scale is not a new graph, beyond the one
    recompile when the scale first changes, and the images are the eager ones."""
    import functools

    import torch
    from torch._dynamo.testing import CompileCounter

    one_thread()
    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    tz.tiny_pipeline().save_pretrained(tmp_path / "model")
    model = str(tmp_path / "model")
    lora = tz.save_lora(tz.random_lora(tz.tiny_pipeline(), seed=1), tmp_path / "style.safetensors")
    compiled = load_renderer(DiffusersSettings(model=model, dtype="fp32", compile=True), LoraFiles(tmp_path / "a"))
    eager = load_renderer(DiffusersSettings(model=model, dtype="fp32"), LoraFiles(tmp_path / "b"))
    try:

        def render(renderer: DiffusersRenderer, scale: float) -> np.ndarray:
            worker, embeddings = renderer.workers[0], renderer.encoder.embeddings("a red fox")
            return worker.compute(embeddings, [(renderer.store.prepare(str(lora)), scale)], SIZE, SIZE, seed=3)

        first = render(compiled, 0.25)
        assert counter.frame_count > 0  # compiled indeed
        after_first = counter.frame_count
        images = {scale: render(compiled, scale) for scale in (0.5, 0.75, 1.0, 1.5, 0.5)}
        assert counter.frame_count <= after_first + 1
        assert np.array_equal(first, render(eager, 0.25)) and np.array_equal(images[1.5], render(eager, 1.5))
        assert not np.array_equal(images[0.5], images[1.5])  # the scale still acts
    finally:
        compiled.close()
        eager.close()


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_the_cpu_with_the_tiny_model():
    """`bench_gpu.py --tiny`: the GPU benchmark's whole path (the four contenders, the per-GPU scaling over two
    pipelines) on the CPU, so the script is known to run before anyone spends GPU time on it."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"
    done = subprocess.run(
        [sys.executable, str(script), "--tiny", "--images", "2", "--repeats", "1", "--size", "256x320"],
        capture_output=True, text=True, timeout=300, cwd=script.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows if "loop" in r or "zlab" in r] == ["| naive loop (load/unload per image)",
        "| sensible loop (LoRA loaded once)", "| zlab backend", "| zlab run's client over HTTP"]  # fmt: skip
    assert [r.split(" | ")[:2] for r in rows if r[2].isdigit()] == [["| 1", "2"], ["| 2", "4"]]  # 1 and 2 "GPUs"


def test_close_waits_for_the_render_in_progress_and_fails_the_jobs_still_waiting(tmp_path):
    """`close()` with jobs in flight: it returns once the compute thread has stopped (a thread left inside torch at
    interpreter exit aborts the process), and every job has an answer: its image, or "the server stopped"."""
    import asyncio

    from zlab.core.request import Request

    one_thread()
    renderer = DiffusersRenderer.from_pipelines([tz.tiny_pipeline()], "tiny", files=LoraFiles(tmp_path))
    threads = list(renderer._threads)

    async def sweep() -> list[object]:
        requests = [Request("a fox", loras=[], width=SIZE, height=SIZE, seed=s) for s in range(6)]
        jobs = [asyncio.ensure_future(renderer.render(r)) for r in requests]
        await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.to_thread(renderer.close)
        assert not any(thread.is_alive() for thread in threads)  # stopped by the time close() returns
        _, pending = await asyncio.wait(jobs, timeout=HANG)
        assert not pending  # no job is left waiting for an answer
        return [job.exception() or job.result() for job in jobs]

    answers = asyncio.run(sweep())
    stopped = [a for a in answers if isinstance(a, Exception)]
    assert 1 <= len(answers) - len(stopped) < 6 and all("the server stopped" in str(a) for a in stopped)
