"""Sweeps: the no-LoRA baseline option, prompt search/replace axes, readable labels for LoRA-path axes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zlab.client import Client
from zlab.core.axes import path_labels
from zlab.core.request import LoRA, Request
from zlab.errors import ValidationError
from zlab.runs.sweep import Sweep
from zlab.sheet.cells import assign, ordered_values
from zlab.sheet.layout import axis_label

BASE = Request("TRIGGER a fox in SEASON", loras=[LoRA("me/style-e10.safetensors", 1.0)], width=256, height=256)


def test_baseline_adds_one_no_lora_cell_per_prompt_seed_and_size():
    sweep = Sweep(BASE, {"lora1_scale": [0.5, 1.0], "seed": [1, 2], "size": ["256x256", "256x512"]}, baseline=True)
    cells = sweep.cells()
    extra = [c for c in cells if c.derived["baseline"]]
    assert len(cells) == 8 + 4 and len(extra) == 4
    assert all(c.request.loras == () for c in extra)
    assert {(c.request.seed, c.request.width, c.request.height) for c in extra} == {
        (s, 256, h) for s in (1, 2) for h in (256, 512)
    }
    assert len({c.key for c in cells}) == len(cells)
    assert {c.values["size"] for c in extra} == {"256x256", "256x512"} and "lora1_scale" not in extra[0].values


def test_a_baseline_cell_keeps_its_prompt_axes_so_it_sorts_beside_its_group():
    sweep = Sweep(BASE, {"lora1_scale": [1.0], "prompt_sr": ["TRIGGER", "t3ch"]}, baseline=True)
    plan = sweep.plan()
    added = plan[plan["baseline"]]
    assert list(added["prompt_sr"]) == ["TRIGGER", "t3ch"]
    assert list(added["prompt"]) == ["TRIGGER a fox in SEASON", "t3ch a fox in SEASON"]


def test_scale_zero_cells_are_the_baseline_and_nothing_is_added_there():
    sweep = Sweep(BASE, {"lora1_scale": [0, 0.5], "seed": [1, 2]}, baseline=True)
    cells = sweep.cells()
    assert len(cells) == 4
    assert [c.derived["baseline"] for c in cells] == [True, True, False, False]


def test_a_sweep_without_the_option_keeps_its_fingerprint_and_cells():
    axes = {"lora1_scale": [0.5, 1.0]}
    plain = Sweep(BASE, axes)
    assert (
        plain.fingerprint
        == Sweep(BASE, axes, baseline=False).fingerprint
        != Sweep(BASE, axes, baseline=True).fingerprint
    )
    assert len(plain) == 2 and "baseline" not in plain.plan().columns


def test_the_sweep_file_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("prompt: a fox\nloras: [{path: a/b, scale: 1}]\nbaseline: true\naxes: {lora1_scale: [0.5, 1]}\n")
    assert len(Sweep.from_file(path)) == 3
    with pytest.raises(ValidationError, match="baseline"):
        Sweep.from_dict({"prompt": "a fox", "baseline": "yes"})


def test_prompt_search_replace_axes_work_several_at_once():
    sweep = Sweep(BASE, {"prompt_sr": ["TRIGGER", "t3chnic4lly", ""], "prompt_sr2": ["SEASON", "winter"]})
    prompts = [c.request.prompt for c in sweep.cells()]
    assert prompts == [
        "TRIGGER a fox in SEASON",
        "TRIGGER a fox in winter",
        "t3chnic4lly a fox in SEASON",
        "t3chnic4lly a fox in winter",
        " a fox in SEASON",
        " a fox in winter",
    ]
    assert list(sweep.plan()["prompt_sr"])[:3] == ["TRIGGER", "TRIGGER", "t3chnic4lly"]


def test_search_replace_applies_after_a_prompt_axis_and_needs_its_text_in_every_prompt():
    sweep = Sweep(BASE, {"prompt": ["TRIGGER a cat", "TRIGGER a dog"], "prompt_sr": ["TRIGGER", "zz"]})
    assert [c.request.prompt for c in sweep.cells()] == ["TRIGGER a cat", "zz a cat", "TRIGGER a dog", "zz a dog"]
    with pytest.raises(ValidationError, match=r"prompt_sr: 'TRIGGER'.*'a cat'"):
        Sweep(BASE, {"prompt": ["a cat"], "prompt_sr": ["TRIGGER", "zz"]})
    with pytest.raises(ValidationError, match="prompt_sr"):
        Sweep(BASE, {"prompt_sr": ["", "zz"]})


@pytest.mark.parametrize(
    ("paths", "labels"),
    [
        (["me/style-e10.safetensors", "me/style-e20.safetensors"], ["e10", "e20"]),
        (["a/run_e5_final.safetensors", "a/run_e10_final.safetensors"], ["e5", "e10"]),
        (["https://h/x/lora-step1000.safetensors", "https://h/x/lora-step2000.safetensors"], ["step1000", "step2000"]),
        (["owner/a", "owner/b", "other/a"], ["owner/a", "owner/b", "other/a"]),
        (["one/only.safetensors"], ["only"]),
    ],
)
def test_path_labels_are_short_and_distinct(paths, labels):
    assert path_labels(paths) == labels


def test_a_run_has_the_baseline_and_label_columns_and_scale_zero_matches_the_baseline(server, tmp_path):
    checkpoints = ["me/style-e10.safetensors", "me/style-e20.safetensors"]
    sweep = Sweep(BASE, {"lora1_path": checkpoints, "lora1_scale": [0, 1.0], "seed": [3]}, baseline=True)
    sweep2 = Sweep(BASE, {"lora1_path": checkpoints, "lora1_scale": [1.0], "seed": [3]}, baseline=True)
    with Client(base_url=server.base_url) as client:
        df = client.run(sweep, tmp_path / "a", progress=False).df
        df2 = client.run(sweep2, tmp_path / "b", progress=False).df
    assert list(df["lora1_label"]) == ["e10", "e10", "e20", "e20"] and list(df["baseline"]) == [True, False] * 2
    assert df2["baseline"].tolist() == [False, False, True] and df2["lora1_path"].isna().tolist() == [False] * 2 + [
        True
    ]
    zero = np.asarray(Image.open(tmp_path / "a" / df["image_path"].iloc[0]))
    none = np.asarray(Image.open(tmp_path / "b" / df2["image_path"].iloc[2]))
    assert np.array_equal(zero, none)  # the scale-0 cell is the same image as the no-LoRA one


def test_the_no_lora_baseline_comes_first_on_a_lora_axis_and_says_so(server, tmp_path):
    sweep = Sweep(BASE, {"lora1_scale": [1.0, 0.5], "seed": [1, 2]}, baseline=True)
    with Client(base_url=server.base_url) as client:
        df = client.run(sweep, tmp_path / "run", progress=False).df
    grid = assign(df, x="lora1_scale", y="seed")
    assert grid.x.labels == ("no LoRA", "lora1_scale 0.5", "lora1_scale 1")
    first = grid.placed[grid.placed["sheet_col"] == 0]
    assert first["baseline"].all() and sorted(first["seed"]) == [1, 2]
    assert assign(df, x="seed", y="lora1_scale").y.labels[0] == "no LoRA"  # down the side too
    # Elsewhere a missing value is still last, and still reads as missing.
    assert ordered_values([None, 2, 1]) == (1, 2, None) and axis_label("steps", None) == "steps none"
