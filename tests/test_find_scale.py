"""find_scale and `zlab find-scale` through the local server: right answers, resumable, budget-capped."""

from __future__ import annotations

import json

import pytest
import yaml

from zlab import cli, errors
from zlab.client import Client
from zlab.server import synthetic

ACTING = "owner/lora-12"  # onset 0.09, saturation 1.17, overcook 1.65
INERT = next(f"owner/lora-{i}" for i in range(80) if synthetic.curve_of(f"owner/lora-{i}").inert)
SPEC = {"prompt": "a fox in a wood", "loras": [ACTING, INERT], "seeds": [1, 2, 3], "width": 256, "height": 256}


def test_find_scale_finds_the_known_curve_flags_the_inert_lora_and_resumes_for_free(server, tmp_path):
    truth = synthetic.curve_of(ACTING)
    assert truth.onset is not None and truth.saturation is not None
    with Client(base_url=server.base_url) as client:
        found = client.find_scale(SPEC, tmp_path / "run")
        sent = len(server.stats.submissions)
        again = client.find_scale(SPEC, tmp_path / "run")
    acting, inert = found.answers
    assert acting.diagnosis.onset is not None and abs(acting.diagnosis.onset.value - truth.onset) <= 0.05
    assert acting.diagnosis.saturation is not None
    assert abs(acting.diagnosis.saturation.value - truth.saturation) <= 0.05
    assert inert.diagnosis.does_nothing and inert.images == 3 * 3  # the coarse scales only, then it stops
    # Every image sent was used once: the baseline per seed plus each probe per seed; none twice.
    assert sent == found.images and set(server.stats.accepted().values()) == {1}
    assert found.images * 4 <= found.grid_images
    assert len(server.stats.submissions) == sent  # the rerun resumed from the ledger: nothing sent again
    assert str(again) == str(found)
    record = json.loads((tmp_path / "run" / "find_scale.json").read_text())
    assert record["answers"][1]["warnings"][0].startswith("does nothing")
    assert "used" in str(found) and "a grid at steps of 0.05 needs" in str(found)


def test_a_probe_that_fails_leaves_its_lora_unfinished_and_a_rerun_completes_it(server, tmp_path):
    def fail_from_now_on(line: str) -> None:
        server.set_faults(job_failure=1.0)  # every job of the first probe round fails on the server

    spec = {**SPEC, "loras": [ACTING]}
    with Client(base_url=server.base_url) as client:
        first = client.find_scale(spec, tmp_path / "run", echo=fail_from_now_on)
        server.set_faults()
        second = client.find_scale(spec, tmp_path / "run")
    assert "scale 0.5" in first.answers[0].unfinished and "rerun to resume" in first.stopped
    assert first.answers[0].diagnosis.onset is None and "unfinished" in str(first)
    assert second.answers[0].unfinished == "" and second.stopped == "every bracket closed"
    assert second.answers[0].diagnosis.onset is not None
    truth = synthetic.curve_of(ACTING)
    assert truth.onset is not None and abs(second.answers[0].diagnosis.onset.value - truth.onset) <= 0.05


def test_find_scale_stops_at_its_budget(server, tmp_path):
    with Client(base_url=server.base_url) as client:
        price = client.pricing()
        from zlab.core.request import Request

        per_image = price.cost(Request("a fox in a wood", loras=[], width=256, height=256, seed=1))
        budget = per_image * 3 * 4 + per_image / 2  # the baseline and three probes of three seeds
        found = client.find_scale({**SPEC, "loras": [ACTING]}, tmp_path / "run", budget=budget)
    assert "stopped at the budget" in found.stopped
    assert len(server.stats.submissions) == 12 and found.cost_usd <= budget


def test_the_find_scale_command_prints_the_interval_images_and_grid_cost(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZLAB_BASE_URL", server.base_url)
    spec = tmp_path / "fox.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "loras": [ACTING], "precision": 0.1}))
    assert cli.main(["find-scale", str(spec), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "onset in (" in out and "a grid at steps of 0.1 needs 63" in out and "definitions:" in out


@pytest.mark.parametrize(
    "bad",
    [
        {"loras": []},
        {"loras": ["a/b", "a/b"]},
        {"seeds": [-1]},
        {"seeds": 3},
        {"range": [2, 1]},
        {"range": [0, 1, 2]},
        {"width": "wide"},
        {"precision": 0},
        {"thresholds": {"bogus": 1}},
        {"colour": 1},
    ],
)
def test_a_bad_spec_is_refused_by_name(bad):
    from zlab.strength.driver import ScaleSpec

    with pytest.raises(errors.ValidationError):
        ScaleSpec.from_dict({**SPEC, **bad})


def test_find_combination_recovers_the_scales_of_a_target_look(server, tmp_path):
    """Targets rendered with two known LoRA scales: the compass search finds them again from (1, 1)."""
    import asyncio

    from zlab.client import AsyncClient
    from zlab.core.request import LoRA, Request
    from zlab.strength.combine import CompassSearch, best_of, describe
    from zlab.strength.driver import find_combination

    paths, truth = ["owner/lora-4", "owner/lora-6"], (0.7, 0.5)  # both on their ramps there (curve_of)
    targets = {}
    for seed in (1, 2):
        loras = [LoRA(p, s) for p, s in zip(paths, truth, strict=True)]
        target = synthetic.render(Request("a fox", loras=loras, width=256, height=256, seed=seed))
        targets[seed] = tmp_path / f"target-{seed}.png"
        target.save(targets[seed])

    async def search():
        async with AsyncClient(base_url=server.base_url) as client:
            return await find_combination(
                client, "a fox", paths, targets, tmp_path / "run", CompassSearch((1.0, 1.0)), width=256, height=256
            )

    points = asyncio.run(search())
    best = best_of(points)
    assert all(abs(b - t) <= 0.07 for b, t in zip(best, truth, strict=True)), describe(points, paths)
    assert len(points) < 60 and "combinations tried" in describe(points, paths)
    sent = len(server.stats.submissions)
    assert asyncio.run(search()) == points and len(server.stats.submissions) == sent  # resumed, nothing resent
