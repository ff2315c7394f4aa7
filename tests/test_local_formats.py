"""Every published LoRA layout the diffusers backend loads, against its diffusers-layout twin, over loopback HTTP.

Each twin is the same LoRA written by `zlab.testing.tiny_zimage` in another trainer's layout (ai-toolkit with
alpha ≠ rank, kohya, musubi, ComfyUI, fused qkv, LoKr, PEFT DoRA): rendered through the local server, it must
give the diffusers-layout file's image, exactly or within float rounding. Kinds diffusers cannot apply are
refused in one short line that names them; the reason reaches the results table and the CLI summary.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from test_local_diffusers import MISSING, SIZE, Backend, distance

from zlab import cli
from zlab.testing import tiny_zimage as tz

pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"skipped: {MISSING}")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the whole matrix (building the tiny pipeline is most of a test's time)."""
    made = Backend(tmp_path_factory.mktemp("formats"))
    yield made
    made.close()


def test_a_render_makes_exactly_eight_transformer_passes(shared):
    passes = []
    handle = shared.pipe.transformer.register_forward_hook(lambda *_: passes.append(1))
    try:
        shared.image(seed=11)
    finally:
        handle.remove()
    assert len(passes) == 8  # diffusers before 0.39 made 7 steps and a wasted pass for num_inference_steps=8


def _write(backend: Backend, name: str, tensors) -> str:
    return str(tz.save_lora(tensors, backend.tmp / f"{name}.safetensors"))


EXACT = {
    "PEFT": lambda pipe, t: tz.to_peft(t),
    "ai-toolkit, alpha = rank/2": lambda pipe, t: tz.to_ai_toolkit(t, alpha_over_rank=0.5),
    "ai-toolkit, alpha = 4 x rank": lambda pipe, t: tz.to_ai_toolkit(t, alpha_over_rank=4.0),
    "kohya, alpha = rank/2": lambda pipe, t: tz.to_kohya(t, alpha_over_rank=0.5),
}
CLOSE = {  # summed in another order (block-diagonal fused ups, DoRA's norms): float rounding apart
    "musubi (fused qkv)": lambda pipe, t: tz.to_musubi(t, alpha_over_rank=0.5),
    "ComfyUI (fused qkv)": lambda pipe, t: tz.to_comfyui(t, alpha_over_rank=2.0),
    "fused qkv, lora_A/B": lambda pipe, t: {
        f"diffusion_model.{k.removeprefix('transformer.')}": v for k, v in tz.fuse_qkv(t).items()
    },
    "PEFT DoRA": lambda pipe, t: tz.to_dora(pipe, t),
}


@pytest.mark.parametrize("kind", [*EXACT, *CLOSE])
def test_each_layout_renders_as_its_diffusers_twin(shared, kind):
    tensors = tz.random_lora(shared.pipe, seed=21)
    reference = _write(shared, "reference", tensors)
    twin = _write(
        shared, kind.replace(" ", "_").replace(",", "").replace("/", "-"), (EXACT | CLOSE)[kind](shared.pipe, tensors)
    )
    base = shared.image()
    want, got = shared.image([(reference, 1.0)]), shared.image([(twin, 1.0)])
    assert distance(want, base) > 1  # the LoRA shows, so agreeing means something
    if kind in EXACT:
        assert np.array_equal(got, want)
        assert np.array_equal(shared.image([(twin, 0.5)]), shared.image([(reference, 0.5)]))
    else:
        assert np.abs(got - want).max() <= 2 and distance(got, want) < 0.05, (np.abs(got - want).max(), kind)


def test_a_lokr_renders_as_the_lora_with_its_kronecker_update(shared):
    lokr, twin = tz.random_lokr(shared.pipe, seed=5)
    got = shared.image([(_write(shared, "lokr", lokr), 1.0)])
    want = shared.image([(_write(shared, "lokr-twin", twin), 1.0)])
    assert distance(want, shared.image()) > 1
    assert np.abs(got - want).max() <= 2 and distance(got, want) < 0.05
    assert shared.result([(_write(shared, "lokr", lokr), 0.0)])["status"] == "succeeded"


def _tensors(*names: str) -> dict:
    """Stand-in tensors under these names (the refusals below go by the names alone)."""
    import torch

    return {name: torch.ones(4, 32) for name in names}


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda pipe: tz.to_loha(tz.random_lora(pipe, seed=3)), "is a LoHa adapter"),
        (
            lambda pipe: (
                tz.to_kohya(tz.random_lora(pipe, seed=3)) | _tensors("lora_unet_layers_0_attention_to_q.dora_scale")
            ),
            "kohya/LyCORIS DoRA",
        ),
        (
            lambda pipe: _tensors("diffusion_model.layers.0.attention.to_q.diff"),
            "full-weight differences",
        ),
        (
            lambda pipe: _tensors(*(f"diffusion_model.layers.0.attention.qkv.lokr_w{i}" for i in (1, 2))),
            "LoKr on the fused qkv projection",
        ),
    ],
    ids=["LoHa", "kohya DoRA", "full diff", "fused-qkv LoKr"],
)
def test_kinds_diffusers_cannot_apply_are_refused_in_one_short_line(shared, build, words):
    path = _write(shared, "refused", build(shared.pipe))
    answer = shared.result([(path, 1.0)])
    message = answer["error"]["message"]
    assert answer["status"] == "failed" and words in message and "refused.safetensors" in message
    assert "\n" not in message and len(message) < 200, message
    assert shared.image().shape == (SIZE, SIZE, 3)  # the server carries on


def test_a_failed_lora_is_remembered_by_content_and_not_read_again(tmp_path):
    backend = Backend(tmp_path)
    try:
        bad = tz.save_lora(tz.to_loha(tz.random_lora(backend.pipe, seed=3)), tmp_path / "loha.safetensors")
        copy = tmp_path / "copy-of-loha.safetensors"
        shutil.copy(bad, copy)
        answers = [backend.result([(str(path), 1.0)], seed=s) for s in (1, 2) for path in (bad, copy)]
        assert [a["status"] for a in answers] == ["failed"] * 4
        assert backend.renderer.counts["reads"] == 1  # same content: one identity, read once
        assert backend.renderer.counts["hashes"] == 2  # one hash per file, not per cell
    finally:
        backend.close()


def test_a_same_size_file_swapped_in_with_its_old_mtime_is_a_new_adapter(tmp_path):
    backend = Backend(tmp_path)
    try:
        path = tmp_path / "style.safetensors"
        tz.save_lora(tz.random_lora(backend.pipe, seed=1), path)
        first = backend.image([(str(path), 1.0)])
        stat = path.stat()
        retrained = tz.save_lora(tz.random_lora(backend.pipe, seed=2), tmp_path / "retrained.safetensors")
        shutil.copyfile(retrained, path)  # `cp -p` / `rsync -a` of a retrained file: same size, same mtime
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
        hashes = backend.renderer.counts["hashes"]
        swapped = backend.image([(str(path), 1.0)])
        assert np.array_equal(swapped, backend.image([(str(retrained), 1.0)]))
        assert distance(swapped, first) > 1
        backend.image([(str(path), 0.5)])
        assert backend.renderer.counts["hashes"] == hashes + 2  # the swapped file and `retrained`, once each
    finally:
        backend.close()


def test_the_reason_a_cell_failed_reaches_the_table_and_the_cli_summary(shared, tmp_path, monkeypatch, capsys):
    good = _write(shared, "good", tz.random_lora(shared.pipe, seed=1))
    loha = _write(shared, "loha", tz.to_loha(tz.random_lora(shared.pipe, seed=1)))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"prompt: a red fox\nloras:\n  - {{path: {good}, scale: 1.0}}\nwidth: {SIZE}\nheight: {SIZE}\nseed: 7\n"
        f"axes:\n  lora1_scale: [0.5, 1.0]\n  lora1_path: ['{good}', '{loha}']\n"
    )
    monkeypatch.setenv("ZLAB_BASE_URL", shared.server.base_url)

    code = cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--no-progress"])

    assert code == 1
    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    failed = df[df.status == "failed"]
    assert len(failed) == 2 and failed.error.str.contains("is a LoHa adapter").all(), failed.error.tolist()
    summary = capsys.readouterr()
    text = summary.out + summary.err
    line = next(line for line in text.splitlines() if line.startswith("zlab: 2 failed:"))
    assert "is a LoHa adapter" in line and "×2" in line, text
