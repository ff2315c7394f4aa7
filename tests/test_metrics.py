"""zlab[metrics]: learned metrics as result columns, with tiny random-weight models built here (offline).

Skipped where the extra is not installed (`pip install -e ".[metrics]"`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zlab.client import Client
from zlab.core.request import LoRA, Request
from zlab.metrics.groups import baseline_rows, mean_pairwise_distance, seed_groups
from zlab.runs.sweep import Sweep

METRICS_EXTRA = ("torch", "open_clip", "timm", "lpips")


def _missing() -> str | None:
    import importlib.util

    absent = [m for m in METRICS_EXTRA if importlib.util.find_spec(m) is None]
    return f"zlab[metrics] not installed ({', '.join(absent)})" if absent else None


needs_metrics = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class Counting:
    """A model wrapper that counts the images it embeds (the cache must spare it)."""

    def __init__(self, model):
        self.model, self.name, self.images = model, model.name, 0

    def embed_images(self, images):
        self.images += len(images)
        return self.model.embed_images(images)

    def embed_texts(self, texts):
        return self.model.embed_texts(texts)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random CLIP (open_clip's bundled tokenizer), ViT (timm, pretrained=False) and LPIPS (random trunk)."""
    if _missing():
        pytest.skip(str(_missing()))
    import lpips
    import open_clip
    import timm
    import torch

    from zlab.metrics import ClipModel, LpipsModel, TimmEmbedder

    torch.manual_seed(0)
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("clip-config")
    (folder / "zlab-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    model, _, preprocess = open_clip.create_model_and_transforms("zlab-tiny-clip", pretrained=None)
    clip = ClipModel(model.eval(), preprocess, open_clip.get_tokenizer("zlab-tiny-clip"), "clip:tiny")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=0)
    dino = TimmEmbedder.from_model(vit, "timm:tiny", "cpu", image_size=64)
    net = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()
    for weight in net.lins.parameters():  # LPIPS's learned heads are non-negative; random ones need not be
        weight.data.abs_()
    lp = LpipsModel(net, "lpips:rand", 64)
    return {"clip": clip, "dino": dino, "lpips": lp}


def test_baselines_and_seed_groups_are_found_by_parameters():
    df = pd.DataFrame(
        {
            "prompt": ["p"] * 5,
            "width": [256] * 5,
            "height": [256] * 5,
            "seed": [1, 2, 1, 2, 1],
            "lora1_path": ["a", "a", "a", "a", None],
            "lora1_scale": [0.5, 0.5, 0.0, 1.0, None],
            "image_path": ["x"] * 5,
        }
    )
    assert baseline_rows(df) == [4, None, 4, None, 4]  # no LoRA wins over scale 0; seed 2 has no baseline
    assert seed_groups(df) == [[0, 1], [2], [3], [4]]
    unit = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0])]
    assert mean_pairwise_distance(unit) == pytest.approx(2 / 3) and np.isnan(mean_pairwise_distance(unit[:1]))


@needs_metrics
def test_metrics_become_result_columns_and_are_cached_by_image_hash(server, tmp_path, tiny):
    from zlab.metrics import add_metrics

    sweep = Sweep(
        Request("a fox", loras=[LoRA("owner/lora-12", 1.0)], width=256, height=256),
        {"lora1_scale": [0.5, 1.5], "seed": [1, 2, 3]},
        baseline=True,
    )
    with Client(base_url=server.base_url) as client:
        run = client.run(sweep, tmp_path / "run", progress=False)
    clip, dino = Counting(tiny["clip"]), Counting(tiny["dino"])
    names = ["clip_score", "clip_distance", "dino_distance", "lpips", "seed_variety"]
    df = add_metrics(run, names, clip=clip, dino=dino, lpips=tiny["lpips"], write=True, progress=False)
    assert clip.images == dino.images == 9  # 6 LoRA images and 3 baselines, each embedded once
    base = df[df["baseline"]]
    assert (base["clip_distance"].abs() < 1e-5).all() and (base["lpips"].abs() < 1e-6).all()
    lora = df[~df["baseline"]]
    assert (lora["dino_distance"] > 1e-6).all() and (lora["lpips"] > 0).all() and df["clip_score"].notna().all()
    for _, group in df.groupby(["lora1_scale"], dropna=False):
        assert group["seed_variety"].nunique() == 1 and group["seed_variety"].iloc[0] > 0
    stored = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert set(names) <= set(stored.columns)

    again_clip, again_dino = Counting(tiny["clip"]), Counting(tiny["dino"])
    df2 = add_metrics(tmp_path / "run", names, clip=again_clip, dino=again_dino, lpips=tiny["lpips"], progress=False)
    assert again_clip.images == again_dino.images == 0
    assert np.allclose(df2["dino_distance"], df["dino_distance"], equal_nan=True)
    changed = tmp_path / "run" / df["image_path"].iloc[0]
    Image.new("RGB", (256, 256), "white").save(changed)  # new content, same path: embedded again
    add_metrics(tmp_path / "run", ["dino_distance"], dino=again_dino, progress=False)
    assert again_dino.images == 1


@needs_metrics
def test_reference_similarity_is_highest_for_the_reference_itself(server, tmp_path, tiny):
    from zlab.metrics import add_metrics

    sweep = Sweep(Request("a fox", loras=[], width=256, height=256), {"seed": [1, 2]})
    with Client(base_url=server.base_url) as client:
        run = client.run(sweep, tmp_path / "run", progress=False)
    ref = tmp_path / "run" / run.df["image_path"].iloc[0]
    df = add_metrics(run, ["ref_similarity"], references=[ref], dino=tiny["dino"], progress=False)
    assert df["ref_similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert df["ref_similarity"].iloc[1] < df["ref_similarity"].iloc[0] - 1e-4


@pytest.mark.slow
@needs_metrics
def test_offline_without_weights_the_message_names_what_to_download_and_where(tmp_path):
    script = (
        "from zlab.metrics import TimmEmbedder, ClipModel, LpipsModel, WeightsMissing\n"
        "for load in (TimmEmbedder.load, ClipModel.load, LpipsModel.load):\n"
        "    try:\n"
        "        load(device='cpu')\n"
        "    except WeightsMissing as exc:\n"
        "        print('MISSING:', exc)\n"
    )
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TORCH_HOME": str(tmp_path / "torch"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("MISSING:")]
    assert len(lines) == 3, out.stdout + out.stderr
    assert "timm/vit_small_patch14_dinov2" in lines[0] and "HF_HOME" in lines[0] and "weights=" in lines[0]
    assert "ViT-B-32" in lines[1] and "openai" in lines[1] and "weights=" in lines[1]
    assert "alexnet-owt-7be5be79.pth" in lines[2] and "hub/checkpoints" in lines[2]


def test_import_zlab_metrics_stays_light():
    heavy = "('torch', 'open_clip', 'timm', 'lpips')"
    code = f"import sys, zlab.metrics, zlab.strength; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow
@needs_metrics
def test_metrics_run_end_to_end_on_the_tiny_diffusers_pipeline_with_a_real_lora_file(tmp_path, tiny):
    """Real renders (the tiny random Z-Image pipeline behind the local server) of a LoRA file on disk."""
    from zlab.server.diffusers_backend import DiffusersRenderer, DiffusersSettings, missing_local_extra

    if missing_local_extra():
        pytest.skip(str(missing_local_extra()))
    import torch

    from zlab.metrics import add_metrics
    from zlab.server import LocalServer
    from zlab.server.loras import LoraFiles
    from zlab.testing.tiny_zimage import random_lora, save_lora, tiny_pipeline

    torch.set_num_threads(1)
    pipe = tiny_pipeline()
    lora = save_lora(random_lora(pipe, seed=3, strength=2.0), tmp_path / "style-e10.safetensors")
    settings = DiffusersSettings(model="tiny-random-z-image")
    renderer = DiffusersRenderer.from_pipelines([pipe], "tiny-random-z-image", settings, LoraFiles(tmp_path / "c"))
    sweep = Sweep(
        Request("a red fox", loras=[LoRA(str(lora), 1.0)], width=256, height=256),
        {"lora1_scale": [0.5, 1.5], "seed": [1, 2]},
        baseline=True,
    )
    with LocalServer(renderer=renderer) as server, Client(base_url=server.base_url) as client:
        run = client.run(sweep, tmp_path / "run", progress=False)
    assert run.ok, run.summary()
    names = ["clip_score", "dino_distance", "lpips", "seed_variety"]
    df = add_metrics(run, names, clip=tiny["clip"], dino=tiny["dino"], lpips=tiny["lpips"], progress=False)
    lora_rows = df[~df["baseline"]]
    assert df[names].notna().all().all()
    assert (lora_rows["lpips"] > 0).all() and (df[df["baseline"]]["lpips"].abs() < 1e-6).all()
    far = lora_rows.groupby("lora1_scale")["dino_distance"].mean()
    assert far.loc[1.5] > far.loc[0.5]  # a stronger LoRA moves the image further from the baseline


@needs_metrics
def test_find_scale_can_read_overcook_from_clip_adherence(server, tmp_path, tiny):
    from zlab.metrics import clip_adherence

    calls = []
    adherence = clip_adherence(tiny["clip"])

    def quality(base, image, prompt):
        calls.append(prompt)
        return adherence(base, image, prompt)

    spec = {"prompt": "a fox", "loras": ["owner/lora-12"], "seeds": [1, 2], "width": 256, "height": 256}
    with Client(base_url=server.base_url) as client:
        found = client.find_scale(spec, tmp_path / "run", quality=quality)
    details = [d for p in found.answers[0].diagnosis.probes[1:] for d in p.detail]
    assert len(calls) == len(details) and set(calls) == {"a fox"}
    assert all(np.isfinite(details)) and any(abs(d - 1) > 1e-6 for d in details)  # CLIP's ratio, not a constant
