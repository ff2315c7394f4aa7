"""Sweeps: range syntax, plan expansion, seed policy and every bad-input case (pure: nothing is sent)."""

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zlab.core.axes import parse_range
from zlab.core.request import LoRA, Request
from zlab.errors import ValidationError
from zlab.runs.sweep import Sweep

BASE = Request("t3chnic4lly a fox", loras=[LoRA("a/b", 1.0)], width=512, height=512, seed=7)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("0-1.5 [4]", [0, 0.5, 1, 1.5]),
        ("0-1 (+0.25)", [0, 0.25, 0.5, 0.75, 1]),
        ("0-1 (+0.3)", [0, 0.3, 0.6, 0.9]),
        ("0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),
        ("1-1 [1]", [1]),
    ],
)
def test_range_syntax(text, values):
    assert parse_range("lora1_scale", text) == values


@given(
    a=st.integers(0, 300).map(lambda i: i / 100),
    span=st.integers(1, 100).map(lambda i: i / 100),
    n=st.integers(2, 50),
)
def test_even_ranges_include_both_ends_and_print_cleanly(a, span, n):
    values = parse_range("x", f"{a}-{round(a + span, 2)} [{n}]")
    assert len(values) == n and values[0] == a and math.isclose(values[-1], a + span, abs_tol=1e-9)
    assert values == sorted(values)
    assert all(len(repr(v).split(".")[-1]) <= 6 for v in values)  # no 0.30000000000000004


@given(a=st.integers(0, 100), step=st.integers(1, 30), count=st.integers(1, 40))
def test_step_ranges_land_on_the_end_when_a_step_does(a, step, count):
    end = (a + step * (count - 1)) / 100
    values = parse_range("x", f"{a / 100}-{end} (+{step / 100})")
    assert len(values) == count and math.isclose(values[-1], end)


@given(
    scales=st.lists(st.integers(0, 40).map(lambda i: i / 10), min_size=1, max_size=5, unique=True),
    seeds=st.lists(st.integers(0, 10**6), min_size=1, max_size=4, unique=True),
)
def test_plan_is_the_product_of_the_axes(scales, seeds):
    sweep = Sweep(BASE, axes={"lora1_scale": scales, "seed": seeds})
    plan = sweep.plan()
    assert len(plan) == len(scales) * len(seeds)
    assert set(zip(plan.lora1_scale, plan.seed, strict=True)) == set(itertools.product(scales, seeds))
    assert plan.key.is_unique
    assert plan.cost_usd.sum() == pytest.approx(sweep.estimate().cost_usd)


def test_size_axis_sets_width_and_height_and_is_a_column():
    plan = Sweep(BASE, axes={"size": ["1024x1024", "768x1344"]}).plan()
    assert list(zip(plan.width, plan.height, strict=True)) == [(1024, 1024), (768, 1344)]
    assert list(plan["size"]) == ["1024x1024", "768x1344"]


def test_zipped_axes_move_together():
    base = BASE.replace(loras=[LoRA("a/b", 1), LoRA("c/d", 1)])
    sweep = Sweep(
        base,
        axes={"lora1_scale": [0, 1], "lora2_scale": [1, 0], "seed": [1, 2]},
        zipped=[["lora1_scale", "lora2_scale"]],
    )
    plan = sweep.plan()
    assert len(plan) == 4 and set(zip(plan.lora1_scale, plan.lora2_scale, strict=True)) == {(0, 1), (1, 0)}


def test_random_seeds_are_resolved_before_sending_and_reusable():
    sweep = Sweep(BASE.replace(seed=-1), axes={"lora1_scale": [0, 1]})
    seeds = {c.request.seed for c in sweep.cells()}
    assert len(seeds) == 1 and -1 not in seeds  # one draw shared by every cell of the base
    again = Sweep(BASE.replace(seed=-1), axes={"lora1_scale": [0, 1]})
    assert again.fingerprint == sweep.fingerprint
    assert [c.key for c in again.with_seed_draws(sweep.seed_draws).cells()] == [c.key for c in sweep.cells()]
    three = Sweep(BASE, axes={"seed": [-1, -1, 5]})
    drawn = [c.request.seed for c in three.cells()]
    assert drawn[2] == 5 and -1 not in drawn and len(three.seed_draws) == 2


@pytest.mark.parametrize(
    ("axes", "field", "words"),
    [
        ({"lora_scale": [1]}, "axes", "did you mean"),
        ({"lora2_scale": [1]}, "lora2_scale", "add a LoRA #2"),
        ({"lora4_scale": [1]}, "axes", "3 LoRAs"),
        ({"lora1_scale": "0-5 [3]"}, "lora1_scale", "0 to 4"),
        ({"lora1_scale": "0-1 [x]"}, "lora1_scale", "a-b [n]"),
        ({"lora1_scale": "1-0 [3]"}, "lora1_scale", "end is not below"),
        ({"lora1_scale": "0-1 (+0)"}, "lora1_scale", "positive step"),
        ({"lora1_scale": [0.5, 0.5]}, "lora1_scale", "distinct"),
        ({"lora1_scale": []}, "lora1_scale", "at least one"),
        ({"seed": ["x"]}, "seed", "integer"),
        ({"size": ["1024*1024"]}, "size", "WxH"),
        ({"size": ["2048x1024"]}, "size", "256 to 1536"),
        ({"width": [100]}, "width", "256 to 1536"),
        ({"prompt": [""]}, "prompt", "non-empty"),
        ({"size": ["512x512"], "width": [512]}, "axes", "not both"),
    ],
)
def test_bad_axes_name_axis_value_and_range(axes, field, words):
    with pytest.raises(ValidationError) as info:
        Sweep(BASE, axes=axes)
    assert info.value.field == field and words in str(info.value)


def test_bad_zip_and_file_keys():
    with pytest.raises(ValidationError, match="equal length"):
        Sweep(BASE, axes={"lora1_scale": [0, 1], "seed": [1]}, zipped=[["lora1_scale", "seed"]])
    with pytest.raises(ValidationError, match="an axis named"):
        Sweep(BASE, axes={"seed": [1]}, zipped=[["seed", "prompt"]])
    with pytest.raises(ValidationError, match="sweep file key"):
        Sweep.from_dict({"prompt": "x", "axis": {}})


def test_sweep_file(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        'prompt: "t3chnic4lly fox"\nloras:\n  - {path: renderartist/Technically-Color-Z-Image-Turbo, scale: 1.0}\n'
        'width: 512\nheight: 768\nseed: 7\naxes:\n  lora1_scale: "0-1.5 [4]"\n  seed: [1, 2]\n'
        "sheet: {x: lora1_scale, y: seed}\n"
    )
    sweep = Sweep.from_file(spec)
    assert len(sweep) == 8 and sweep.sheet == {"x": "lora1_scale", "y": "seed"} and sweep.name == "s"
    spec.write_text("prompt: [unclosed")
    with pytest.raises(ValidationError, match="valid YAML"):
        Sweep.from_file(spec)
    with pytest.raises(ValidationError, match="existing"):
        Sweep.from_file(tmp_path / "missing.yaml")
