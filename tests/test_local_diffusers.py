"""The diffusers backend, end to end: a tiny random Z-Image pipeline behind the local server over loopback HTTP.

The pipeline is built from configs (`zlab.testing.tiny_zimage`): the real `ZImagePipeline`, LoRA loader and
PEFT adapters, with random weights and nothing downloaded. LoRAs are random `.safetensors` files written here.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zlab import cli
from zlab.core.request import MODEL_ID
from zlab.errors import ConfigError
from zlab.server import LocalServer
from zlab.server.backend import RenderError
from zlab.server.diffusers_backend import DiffusersRenderer, DiffusersSettings, missing_local_extra, render_size
from zlab.server.loras import (
    AdapterPlan,
    LoraFiles,
    LoraSource,
    parse_lora_path,
    pick_weight_file,
    plan_adapters,
    unmatched_keys,
)
from zlab.testing.tiny_zimage import random_lora, save_lora, tiny_pipeline, to_kohya

SIZE = 256  # the smallest size the model's schema allows
MISSING = missing_local_extra()
needs_local = pytest.mark.skipif(MISSING is not None, reason=f"skipped: {MISSING}")


def one_thread() -> None:
    """Tiny matrices gain nothing from threads, and on a busy 2-core machine torch's spinning threads
    make each image take 5-20x longer; the subprocesses get OMP_NUM_THREADS=1 for the same reason."""
    import torch

    torch.set_num_threads(1)


class Backend:
    """A local server over a tiny pipeline, and a loopback HTTP client that renders through it."""

    def __init__(self, tmp: Path, lora_cache: int = 8) -> None:
        one_thread()
        self.pipe = tiny_pipeline()
        self.encoder_calls = 0
        self.pipe.text_encoder.register_forward_hook(self._count)  # every real prompt encoding, however it comes
        settings = DiffusersSettings(model="tiny-random-z-image", lora_cache=lora_cache)
        self.renderer = DiffusersRenderer.from_pipelines(
            [self.pipe], "tiny-random-z-image", settings, LoraFiles(tmp / "cache")
        )
        self.server = LocalServer(renderer=self.renderer).start()
        self.http = httpx.Client(base_url=self.server.base_url, timeout=30)
        self.tmp = tmp

    def _count(self, *_: object) -> None:
        self.encoder_calls += 1

    def lora(self, name: str, seed: int, kohya: float | None = None) -> str:
        tensors = random_lora(self.pipe, seed)
        return str(save_lora(to_kohya(tensors, kohya) if kohya else tensors, self.tmp / f"{name}.safetensors"))

    def result(self, loras=(), seed: int = 1, prompt: str = "a red fox") -> dict:
        body = {"prompt": prompt, "loras": [{"path": p, "scale": s} for p, s in loras], "seed": seed}
        submitted = self.http.post(f"/v1/models/{MODEL_ID}", json=body | {"width": SIZE, "height": SIZE})
        submitted.raise_for_status()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = self.http.get(f"/v1/requests/{submitted.json()['request_id']}/result").json()
            if answer["status"] in ("succeeded", "failed"):
                return answer
            time.sleep(0.01)
        raise AssertionError("the render did not finish within 30 s")

    def image(self, loras=(), seed: int = 1, prompt: str = "a red fox") -> np.ndarray:
        answer = self.result(loras, seed, prompt)
        assert answer["status"] == "succeeded", answer
        png = self.http.get(answer["output"]["image"]).content
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def backend(tmp_path):
    if MISSING:
        pytest.skip(f"skipped: {MISSING}")
    made = Backend(tmp_path)
    yield made
    made.close()


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_zlab_run_sweeps_through_the_backend_and_fails_a_mismatched_lora_cell(backend, tmp_path, monkeypatch, capsys):
    good = backend.lora("good", seed=1)
    bad = tmp_path / "sdxl.safetensors"  # keys of another model's UNet: diffusers alone would only log a warning
    import torch

    save_lora(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        bad,
    )
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"prompt: a red fox\nloras:\n  - {{path: {good}, scale: 1.0}}\nwidth: {SIZE}\nheight: {SIZE}\nseed: 7\n"
        f"axes:\n  lora1_scale: [0, 0.5, 1.0]\n  lora1_path: ['{good}', '{bad}']\n"
    )
    monkeypatch.setenv("ZLAB_BASE_URL", backend.server.base_url)

    code = cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--no-progress"])

    assert code == 1  # some cells failed
    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    ok, failed = df[df.lora1_path == good], df[df.lora1_path == str(bad)]
    assert list(ok.status) == ["succeeded"] * 3 and list(failed.status) == ["failed"] * 3
    assert failed.error.str.contains("does not fit Z-Image Turbo").all(), failed.error.tolist()
    assert failed.error.str.contains("sdxl.safetensors").all()
    images = [np.asarray(Image.open(tmp_path / "run" / p)) for p in ok.sort_values("lora1_scale").image_path]
    assert all(image.shape == (SIZE, SIZE, 3) for image in images)
    assert distance(images[0].astype(int), images[2].astype(int)) > 1  # the scale axis shows in the pixels
    assert backend.encoder_calls == 1  # one prompt: encoded once for the whole sweep
    assert backend.renderer.counts["adapter_loads"] == 1  # the good LoRA loaded once, switched by scale


def test_scale_zero_is_the_base_image_and_results_say_how_they_were_made(backend):
    lora = backend.lora("style", seed=1)
    base = backend.image()
    assert np.array_equal(backend.image([(lora, 0.0)]), base)
    assert distance(backend.image([(lora, 1.0)]), base) > 1
    assert np.array_equal(backend.image(), base)  # LoRAs off again after a LoRA request
    facts = backend.result([(lora, 0.5)])["backend"]
    assert facts["model"] == "tiny-random-z-image" and facts["device"] == "cpu" and facts["dtype"] == "float32"
    assert facts["steps"] == 8 and facts["guidance_scale"] == 0.0
    assert facts["diffusers"] and facts["torch"]
    assert all(isinstance(v, str | int | float) for v in facts.values())


def test_the_image_moves_with_scale_and_the_same_request_repeats(backend):
    lora = backend.lora("style", seed=2)
    base = backend.image(seed=3)
    images = {scale: backend.image([(lora, scale)], seed=3) for scale in (0.25, 1.0, 2.0)}
    distances = [distance(images[scale], base) for scale in (0.25, 1.0, 2.0)]
    assert distances[0] < distances[1] < distances[2], distances
    assert np.array_equal(backend.image([(lora, 1.0)], seed=3), images[1.0])  # cached adapter, same image
    assert distance(backend.image([(lora, 1.0)], seed=4), images[1.0]) > 1  # the seed matters


def test_two_loras_both_apply_and_switch_back(backend):
    a, b = backend.lora("a", seed=1), backend.lora("b", seed=2)
    both = backend.image([(a, 1.0), (b, 1.0)])  # both loaded by one request: after loading, only b is active
    only_a = backend.image([(a, 1.0)])
    only_b = backend.image([(b, 1.0)])
    assert distance(both, only_a) > 1 and distance(both, only_b) > 1
    assert np.array_equal(backend.image([(a, 1.0), (b, 1.0)]), both)
    # One file named twice, here by two spellings of its path, is one adapter at the summed scale.
    same_a = str(Path(a).parent / "." / Path(a).name)
    assert np.array_equal(backend.image([(a, 0.25), (same_a, 0.75)]), only_a)
    assert np.array_equal(backend.image([(a, 1.0), (b, 0.0)]), only_a)
    assert np.array_equal(backend.image([(b, 0.0), (a, 1.0)]), only_a)
    assert np.array_equal(backend.image([(a, 1.0)]), only_a)
    assert backend.renderer.counts["adapter_loads"] == 2


def test_local_files_folders_and_home_paths_are_the_same_lora(backend, tmp_path, monkeypatch):
    path = Path(backend.lora("style", seed=5))
    folder = tmp_path / "style-lora"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(path.read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))
    by_file = backend.image([(str(path), 1.0)])
    assert np.array_equal(backend.image([(str(folder), 1.0)]), by_file)
    assert np.array_equal(backend.image([("~/style.safetensors", 1.0)]), by_file)
    missing = backend.result([(str(tmp_path / "nope.safetensors"), 1.0)])
    assert missing["status"] == "failed" and "no such file" in missing["error"]["message"]


def test_kohya_keys_load_identically(backend):
    diffusers_layout = backend.lora("style", seed=6)
    kohya = backend.lora("style-kohya", seed=6, kohya=2.0)  # alpha = 2 × rank, up weights halved: same LoRA
    for scale in (0.5, 1.0):
        assert np.array_equal(backend.image([(kohya, scale)]), backend.image([(diffusers_layout, scale)]))


def test_a_partly_matching_lora_fails_with_a_clear_error_and_the_server_carries_on(backend, tmp_path):
    import torch

    good = backend.lora("good", seed=1)
    tensors = random_lora(backend.pipe, seed=1)
    count = len(tensors)
    # Layers the model lacks: diffusers would load the rest and only log these (a LoRA for a deeper model).
    tensors["transformer.layers.7.attention.to_q.lora_A.weight"] = torch.randn(4, 32)
    tensors["transformer.layers.7.attention.to_q.lora_B.weight"] = torch.randn(32, 4)
    extra = save_lora(tensors, tmp_path / "deeper.safetensors")
    key = next(k for k in tensors if k.endswith("layers.0.attention.to_q.lora_A.weight"))
    tensors = random_lora(backend.pipe, seed=1) | {key: torch.randn(4, 3072)}  # made for a wider transformer
    wide = save_lora(tensors, tmp_path / "wide.safetensors")

    deeper, wider = backend.result([(str(extra), 1.0)]), backend.result([(str(wide), 1.0)])

    assert deeper["status"] == "failed" and wider["status"] == "failed"
    message = deeper["error"]["message"]
    assert "deeper.safetensors" in message and f"2 of {count + 2} tensors match no layer" in message
    assert "layers.7.attention.to_q" in message
    message = wider["error"]["message"]
    assert "does not fit Z-Image Turbo" in message and f"1 of {count}" in message and "[4, 3072]" in message
    assert distance(backend.image([(good, 1.0)]), backend.image()) > 1  # the next request renders as usual


def test_prompt_embeddings_are_encoded_once_per_prompt(backend):
    lora = backend.lora("style", seed=1)
    for scale in (0.0, 0.5, 1.0, 1.5):
        backend.image([(lora, scale)], prompt="a red fox")
    assert backend.encoder_calls == 1
    backend.image([(lora, 1.0)], prompt="a blue heron")
    backend.image([(lora, 0.5)], seed=2, prompt="a red fox")
    assert backend.encoder_calls == 2
    assert backend.renderer.counts["encodes"] == 2
    timings = backend.renderer.seconds
    assert 0 < timings["encodes"] < timings["compute"] and timings["adapter_loads"] > 0


@needs_local
def test_the_adapter_cache_unloads_the_least_recently_used(tmp_path):
    backend = Backend(tmp_path, lora_cache=2)
    try:
        paths = [backend.lora(name, seed=i) for i, name in enumerate("abc")]
        first_a = backend.image([(paths[0], 1.0)])
        backend.image([(paths[1], 1.0)])
        backend.image([(paths[2], 1.0)])  # a is the oldest: unloaded
        assert len(backend.pipe.get_list_adapters()["transformer"]) == 2
        assert np.array_equal(backend.image([(paths[0], 1.0)]), first_a)  # loaded again, same image
        assert backend.renderer.counts["adapter_loads"] == 4
        assert backend.renderer.counts["adapter_unloads"] == 2
    finally:
        backend.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny pipeline saved in diffusers' folder layout, as a downloaded Z-Image-Turbo would be."""
    if MISSING:
        pytest.skip(f"skipped: {MISSING}")
    one_thread()
    folder = tmp_path_factory.mktemp("tiny-z-image")
    tiny_pipeline().save_pretrained(folder)
    return folder


def test_zlab_serve_loads_a_model_folder_and_renders_over_http(model_dir):
    command = [sys.executable, "-m", "zlab.cli", "serve", "--backend", "diffusers", "--model", str(model_dir)]
    command += ["--device", "cpu", "--dtype", "fp32", "--port", "0"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert "diffusers images" in line and str(model_dir) in line and "capacity 3" in line, line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        with httpx.Client(base_url=url, timeout=120) as http:
            body = {"prompt": "a red fox", "loras": [], "width": SIZE, "height": 288, "seed": 3}
            request_id = http.post(f"/v1/models/{MODEL_ID}", json=body).json()["request_id"]
            deadline = time.monotonic() + 120  # a hang guard: a busy machine renders slowly
            while (answer := http.get(f"/v1/requests/{request_id}/result").json())["status"] != "succeeded":
                assert answer["status"] != "failed" and time.monotonic() < deadline, answer
                time.sleep(0.02)
            image = Image.open(io.BytesIO(http.get(answer["output"]["image"]).content))
        assert image.size == (SIZE, 288)
        assert answer["backend"]["model"] == str(model_dir) and answer["backend"]["dtype"] == "float32"
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=20)


def test_the_built_in_server_uses_the_backend_named_in_the_environment(model_dir, tmp_path):
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "ZLAB_BASE_URL": "local",
        "ZLAB_BACKEND": "diffusers",
        "ZLAB_MODEL": str(model_dir),
        "ZLAB_DEVICE": "cpu",
        "ZLAB_DTYPE": "fp32",
    }
    out = tmp_path / "fox.png"
    command = [sys.executable, "-m", "zlab.cli", "generate", "a red fox", "--no-lora", "--seed", "5"]
    command += ["--width", str(SIZE), "--height", str(SIZE), "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"Z-Image Turbo from {model_dir} on cpu" in done.stderr
    assert Image.open(out).size == (SIZE, SIZE)


def _without_torch(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter where importing torch fails, as when zlab[local] is not installed."""
    prelude = "import sys; sys.modules['torch'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )


def test_without_torch_the_diffusers_backend_says_what_to_install():
    done = _without_torch("from zlab.cli import main; sys.exit(main(['serve', '--backend', 'diffusers']))")
    assert done.returncode == 2, done.stderr
    assert 'pip install "zlab[local]"' in done.stderr and "torch" in done.stderr


def test_import_zlab_and_the_backend_module_stay_light():
    code = (
        "import sys, zlab, zlab.server.diffusers_backend, zlab.server.loras\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- the pure decisions and the download seam (no torch needed) ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "location", "weight_name"),
    [
        ("https://example.org/x/style.safetensors", "url", "https://example.org/x/style.safetensors", None),
        ("/loras/style.safetensors", "local", "/loras/style.safetensors", None),
        ("~/loras/style", "local", "~/loras/style", None),
        ("./style.safetensors", "local", "./style.safetensors", None),
        ("loras/style.safetensors", "local", "loras/style.safetensors", None),
        ("renderartist/Technically-Color-Z-Image-Turbo", "hub", "renderartist/Technically-Color-Z-Image-Turbo", None),
        ("owner/name:sub/style_v2.safetensors", "hub", "owner/name", "sub/style_v2.safetensors"),
    ],
)
def test_lora_paths_are_classified(path, kind, location, weight_name):
    assert parse_lora_path(path) == LoraSource(kind, location, weight_name)


def test_lora_paths_that_cannot_work_are_refused_with_the_forms_that_can():
    with pytest.raises(RenderError, match="only https"):
        parse_lora_path("http://example.org/style.safetensors")
    with pytest.raises(RenderError, match=r"owner/name:file\.safetensors"):
        parse_lora_path("style")
    assert parse_lora_path("style", exists=True).kind == "local"  # a file in the server's working directory


def test_one_weight_file_is_picked_or_the_choice_is_explained():
    assert pick_weight_file(["README.md", "a.safetensors"], "o/n") == "a.safetensors"
    assert pick_weight_file(["a.safetensors", "pytorch_lora_weights.safetensors"], "o/n") == (
        "pytorch_lora_weights.safetensors"
    )
    with pytest.raises(RenderError, match=r"holds 2 \.safetensors files .*e\.g\. o/n:a\.safetensors"):
        pick_weight_file(["a.safetensors", "b.safetensors"], "o/n", repo=True)
    with pytest.raises(RenderError, match=r"no \.safetensors file"):
        pick_weight_file(["lora.bin"], "/loras/x")


def test_the_adapter_cache_plan_is_least_recently_used():
    assert plan_adapters([], ["a"], 2) == AdapterPlan((), ("a",), ("a",))
    assert plan_adapters(["a", "b"], ["b"], 2) == AdapterPlan((), (), ("a", "b"))
    assert plan_adapters(["a", "b"], ["c"], 2) == AdapterPlan(("a",), ("c",), ("b", "c"))
    # A request's own LoRAs always stay, even beyond the capacity.
    assert plan_adapters(["a", "b"], ["c", "d", "a"], 2) == AdapterPlan(("b",), ("c", "d"), ("c", "d", "a"))


def test_unmatched_keys_name_other_modules_other_components_and_wrong_shapes():
    linears = {"layers.0.attention.to_q": (32, 32), "layers.0.feed_forward.w1": (32, 96)}
    good = {
        "transformer.layers.0.attention.to_q.lora_A.weight": (4, 32),
        "transformer.layers.0.attention.to_q.lora_B.weight": (32, 4),
        "transformer.layers.0.feed_forward.w1.lora_B.weight": (96, 4),
        "transformer.layers.0.feed_forward.w1.lora_B.bias": (96,),
    }
    assert unmatched_keys(good, linears) == []
    bad = {
        "transformer.layers.1.attention.to_q.lora_A.weight": (4, 32),
        "text_encoder.layers.0.q_proj.lora_A.weight": (4, 16),
        "transformer.layers.0.feed_forward.w1.lora_A.weight": (4, 3072),
        "transformer.layers.0.attention.to_q.alpha": (),
    }
    assert unmatched_keys(good | bad, linears) == [
        "transformer.layers.1.attention.to_q.lora_A.weight",
        "text_encoder.layers.0.q_proj.lora_A.weight",
        "transformer.layers.0.feed_forward.w1.lora_A.weight [4, 3072]",
        "transformer.layers.0.attention.to_q.alpha",
    ]


def test_settings_pick_devices_and_read_the_environment():
    assert DiffusersSettings().targets(cuda_count=2, mps=False) == ("cuda:0",)
    assert DiffusersSettings(devices=(0, 1)).targets(cuda_count=2, mps=False) == ("cuda:0", "cuda:1")
    assert DiffusersSettings().targets(cuda_count=0, mps=True) == ("mps",)
    assert DiffusersSettings().targets(cuda_count=0, mps=False) == ("cpu",)
    with pytest.raises(ConfigError, match="no GPU 2"):
        DiffusersSettings(devices=(2,)).targets(cuda_count=2, mps=False)
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        DiffusersSettings(device="cuda").targets(cuda_count=0, mps=False)
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        DiffusersSettings(dtype="int8")
    env = {"ZLAB_MODEL": "/models/zit", "ZLAB_DEVICE": "cuda:0,1", "ZLAB_DTYPE": "fp32", "ZLAB_OFFLOAD": "1"}
    assert DiffusersSettings.from_env(env) == DiffusersSettings("/models/zit", "cuda", (0, 1), "fp32", True)
    assert DiffusersSettings.from_env({}) == DiffusersSettings()
    assert render_size(256, 264) == (256, 272)


def _safetensors_bytes() -> bytes:
    header = b'{"__metadata__":{}}'
    return struct.pack("<Q", len(header)) + header


def test_a_url_lora_is_downloaded_once_and_a_bad_body_leaves_nothing(tmp_path):
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("page.safetensors"):
            return httpx.Response(200, text="<html>log in to download</html>")
        if request.url.path.endswith("gone.safetensors"):
            return httpx.Response(404)
        return httpx.Response(200, content=_safetensors_bytes())

    files = LoraFiles(tmp_path, transport=httpx.MockTransport(answer))
    first = files.local_file("https://example.org/loras/style.safetensors?download=true")
    again = files.local_file("https://example.org/loras/style.safetensors?download=true")
    assert first == again and first.read_bytes() == _safetensors_bytes()
    assert first.parent == tmp_path / "loras" and first.name.endswith("-style.safetensors")
    assert calls == ["/loras/style.safetensors"] and files.downloads == 1
    with pytest.raises(RenderError, match=r"is not a \.safetensors file"):
        files.local_file("https://example.org/page.safetensors")
    with pytest.raises(RenderError, match="HTTP 404"):
        files.local_file("https://example.org/gone.safetensors")
    assert sorted(p.name for p in (tmp_path / "loras").iterdir()) == [first.name]  # no partial files left


def test_hub_loras_resolve_from_the_hugging_face_cache_offline(tmp_path):
    pytest.importorskip("huggingface_hub", reason="skipped: hub LoRAs need huggingface_hub (zlab[local])")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--owner--style"  # the cache's own layout, as after a download
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "style.safetensors").write_bytes(_safetensors_bytes())
    code = (
        "import pathlib, sys\n"
        "from zlab.server.loras import LoraFiles\n"
        "files = LoraFiles(pathlib.Path(sys.argv[1]))\n"
        "for path in ('owner/style:style.safetensors', 'owner/style', 'owner/missing'):\n"
        "    try:\n"
        "        print(files.local_file(path))\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    named, single, missing = done.stdout.splitlines()
    expected = str(repo / "snapshots" / revision / "style.safetensors")
    assert named == expected and single == expected, done.stdout + done.stderr
    assert missing.startswith("RenderError LoRA 'owner/missing' could not be fetched from Hugging Face")
