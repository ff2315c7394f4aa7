"""LoRA strength curves: SSIM in numpy, onset detection, per-group distances, the figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zlab.sheet import StrengthCurve, VaryingColumnsError, strength_curve
from zlab.sheet.curves import _box_mean, mean_abs_diff, onsets, ssim

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


def test_box_mean_matches_brute_force():
    x = np.random.default_rng(1).random((9, 12))
    got = _box_mean(x, 3)
    want = np.array([[x[i : i + 3, j : j + 3].mean() for j in range(10)] for i in range(7)])
    assert got.shape == (7, 10) and np.allclose(got, want)


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((64, 64))
    assert ssim(a, a) == pytest.approx(1.0)
    # two flat images, black vs white: only the constants remain: C1 / (1 + C1)
    assert ssim(np.zeros((16, 16)), np.ones((16, 16))) == pytest.approx(1e-4 / (1 + 1e-4))
    noisy = [np.clip(a + rng.normal(0, s, a.shape), 0, 1) for s in (0.05, 0.15, 0.4)]
    scores = [ssim(a, b) for b in noisy]
    assert scores[0] > scores[1] > scores[2] and scores[0] < 1
    assert ssim(a, noisy[1]) == pytest.approx(ssim(noisy[1], a))
    with pytest.raises(ValueError, match="shape"):
        ssim(a, a[:10])


def test_mean_abs_diff():
    assert mean_abs_diff(np.zeros((4, 4)), np.full((4, 4), 0.25)) == pytest.approx(0.25)


def test_onsets():
    assert onsets([0, 0.5, 1.0, 1.5], [0, 0.05, 0.3, 0.31]) == (0.5, 1.0)
    assert onsets([1.0, 0.0, 0.5], [1.0, 0.0, 0.05]) == (1.0, 1.0)  # unsorted input; 0.05 is not > 10%
    assert onsets([0, 1], [0, 0]) == (None, None)
    assert onsets([0, 1, 2], [0, float("nan"), 0.5]) == (2, 2)


def make_run(root: Path) -> pd.DataFrame:
    """Per seed, images drifting further from the scale-0 image as the scale rises (saturating at 0.75)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        base = rng.random((96, 64, 3))
        target = rng.random((96, 64, 3))
        for scale in SCALES:
            t = min(scale, 0.75) / 0.75
            img = Image.fromarray(((1 - t) * base * 255 + t * target * 255).astype(np.uint8))
            key = f"s{seed}x{scale}"
            path = f"images/{key}.png"
            img.save(root / path)
            failed = seed == 2 and scale == 0.5
            rows.append(
                {
                    "key": key,
                    "prompt": "p",
                    "width": 64,
                    "height": 96,
                    "seed": seed,
                    "lora1_path": "a/b",
                    "lora1_scale": scale,
                    "status": "failed" if failed else "succeeded",
                    "error": "boom" if failed else None,
                    "image_path": None if failed else path,
                }
            )
    df = pd.DataFrame(rows)
    df.attrs["run_dir"] = str(root)
    return df


def test_strength_curve_distances(tmp_path):
    curve = strength_curve(make_run(tmp_path), scale="lora1_scale", by="seed", width=64)
    assert isinstance(curve, StrengthCurve)
    df = curve.df
    assert list(df.columns[:5]) == ["by", "scale", "mad", "ssim_distance", "key"]
    assert list(df["by"].unique()) == ["seed 1", "seed 2"]
    one = df[df["by"] == "seed 1"]
    assert list(one["scale"]) == list(SCALES)
    assert one["mad"].iloc[0] == 0 and one["ssim_distance"].iloc[0] == pytest.approx(0, abs=1e-9)
    assert one["ssim_distance"].is_monotonic_increasing and one["mad"].is_monotonic_increasing
    assert one["ssim_distance"].iloc[-1] == pytest.approx(one["ssim_distance"].iloc[-2])  # saturated
    failed = df[df["key"] == "s2x0.5"].iloc[0]
    assert np.isnan(failed["ssim_distance"]) and failed["note"] == "failed: boom"
    summary = curve.summary().set_index("by")
    assert summary.loc["seed 1", "bites_at"] == 0.25
    assert summary.loc["seed 1", "saturates_at"] == 0.75


def test_strength_curve_figure_and_save(tmp_path):
    curve = strength_curve(make_run(tmp_path / "run"), width=64)
    fig = curve.figure()
    assert len(fig.axes) == 3  # the curves + one film strip per seed
    assert len(fig.axes[0].lines) >= 4
    out = curve.save(tmp_path / "curve.png")
    assert Image.open(out).size[0] > 300
    assert curve._repr_png_().startswith(b"\x89PNG")


def test_strength_curve_refuses_two_images_per_scale(tmp_path):
    df = make_run(tmp_path)
    with pytest.raises(VaryingColumnsError) as info:
        strength_curve(df, by=None)
    assert info.value.columns == ("seed",) and "by=['seed']" in str(info.value)


def test_with_a_baseline_the_curve_is_read_from_the_no_lora_image(server, tmp_path):
    """A sweep with `baseline: true`: each seed's no-LoRA image is the reference (drawn at scale 0, "no LoRA" in
    its strip), so the lowest scale's own effect shows instead of being the zero everything else is read from."""
    from zlab.client import Client
    from zlab.core.request import LoRA, Request
    from zlab.runs.sweep import Sweep

    base = Request("a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256)
    sweep = Sweep(base, {"lora1_scale": [0.5, 1.0, 1.5], "seed": [1, 2]}, baseline=True)
    with Client(base_url=server.base_url) as client:
        df = client.run(sweep, tmp_path / "run", progress=False).df
    curve = strength_curve(df, scale="lora1_scale", by="seed", width=64)
    one = curve.df[curve.df["by"] == "seed 1"]
    no_lora = df[df["baseline"] & (df["seed"] == 1)]["key"].item()
    assert list(one["scale"]) == [0.0, 0.5, 1.0, 1.5] and one["key"].iloc[0] == no_lora
    assert one["mad"].iloc[0] == 0 and (one["mad"].iloc[1:] > 0).all()  # scale 0.5 measured against no LoRA
    assert curve.reference == "no LoRA" and [name for name, _ in curve.strips["seed 1"]][:2] == ["no LoRA", 0.5]
    assert curve.figure().axes[0].get_ylabel() == "distance from no LoRA"
    plain = strength_curve(df[~df.baseline], scale="lora1_scale", by="seed", width=64)
    assert plain.reference == "lowest scale" and list(plain.df[plain.df["by"] == "seed 1"]["scale"]) == [0.5, 1.0, 1.5]
