"""The request model: the schema's rules, defaults, canonical form and key."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import zlab
from zlab.core.request import MODEL_ID, Request, input_problems
from zlab.errors import ValidationError


def test_defaults_are_the_schemas():
    req = Request("a fox")
    assert req.to_input() == {
        "prompt": "a fox",
        "loras": [{"path": "renderartist/Technically-Color-Z-Image-Turbo", "scale": 1.0}],
        "width": 1024,
        "height": 1536,
        "seed": -1,
    }


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"prompt": ""}, "prompt", "non-empty string"),
        ({"prompt": 3}, "prompt", "non-empty string"),
        ({"width": 255}, "width", "256 to 1536"),
        ({"height": 1537}, "height", "256 to 1536"),
        ({"width": True}, "width", "integer"),
        ({"width": 512.0}, "width", "integer"),
        ({"seed": -2}, "seed", "-1 to 2147483647"),
        ({"seed": 2**31}, "seed", "-1 to 2147483647"),
        ({"loras": [("a/b", 4.5)]}, "loras[0].scale", "0 to 4"),
        ({"loras": [("a/b", -0.1)]}, "loras[0].scale", "0 to 4"),
        ({"loras": [("a/b", True)]}, "loras[0].scale", "number"),
        ({"loras": [("a/b", float("nan"))]}, "loras[0].scale", "0 to 4"),
        ({"loras": [("a/b", 1), ("", 1)]}, "loras[1].path", "repo id"),
        ({"loras": [("http://x.com/l.safetensors", 1)]}, "loras[0].path", "https://"),
        ({"loras": [("a/b", 1)] * 4}, "loras", "at most 3"),
        ({"loras": [{"path": "a/b", "weight": 1}]}, "loras[0].weight", "path"),
    ],
)
def test_bad_input_names_field_value_and_range(kwargs, field, allowed):
    args = {"prompt": "p", **kwargs}
    with pytest.raises(ValidationError) as info:
        Request(**args)
    assert info.value.field == field
    assert allowed in str(info.value)
    assert isinstance(info.value, zlab.ZlabError)


def test_key_is_stable_and_says_what_was_generated():
    a = Request("fox", loras=[("a/b", 0.1 + 0.2)], seed=1)
    b = Request("fox", loras=[{"path": "a/b", "scale": 0.3}], seed=1)
    assert a == b and a.key == b.key and len(a.key) == 16
    assert Request("fox", loras=[("a/b", 0.3)], seed=2).key != a.key
    assert json.loads(a.canonical_json()) == {"model": MODEL_ID, "input": a.to_input()}


def test_from_input_rejects_unknown_fields_and_requires_prompt():
    with pytest.raises(ValidationError, match="guidance"):
        Request.from_input({"prompt": "x", "guidance": 3})
    with pytest.raises(ValidationError, match="required"):
        Request.from_input({"seed": 1})


def test_input_problems_lists_every_problem():
    problems = input_problems({"prompt": "", "width": 10, "extra": 1, "loras": [("a/b", 9)]})
    assert sorted(p.field for p in problems) == ["extra", "loras[0].scale", "prompt", "width"]
    assert input_problems(Request("ok").to_input()) == []


@given(
    scale=st.floats(allow_nan=True, allow_infinity=True),
    width=st.integers(-5000, 5000),
    seed=st.integers(-(2**40), 2**40),
)
def test_validation_agrees_with_the_schema(scale, width, seed):
    valid = 0 <= scale <= 4 and 256 <= width <= 1536 and width % 16 == 0 and -1 <= seed <= 2**31 - 1
    payload = {"prompt": "p", "loras": [{"path": "a/b", "scale": scale}], "width": width, "seed": seed}
    assert (input_problems(payload) == []) == valid
    try:
        Request.from_input(payload)
        assert valid
    except ValidationError:
        assert not valid


@pytest.mark.parametrize(("size", "nearest"), [(1000, "992 or 1008"), (257, "256 or 272"), (1535, "1520 or 1536")])
def test_sizes_must_be_multiples_of_16_and_the_error_names_the_nearest(size, nearest):
    with pytest.raises(ValidationError, match=f"width: {size} .*multiple of 16.*{nearest}"):
        Request("p", width=size)
    with pytest.raises(ValidationError, match="height"):
        Request("p", height=size)
