"""`find_scale`: the scale search run through a client, resumable in its run directory, budget-capped.

Each round asks `next_scale` for every LoRA still searching and renders those scales (over the spec's
seeds) as one sweep through the runner (`run_sweep`, as `AsyncClient.run` does), into the same run
directory: its ledger makes a rerun resume (decisions are deterministic, so a rerun asks for the same
cells and pays for none of them again). The no-LoRA baseline is rendered first, once per seed, and
shared by every LoRA. Before each round the cost of its cells is added to what the search has used; a
round that would pass `budget` is not sent, and the search ends with the brackets it has.

Spec (a YAML file for `zlab find-scale`, or a mapping)::

    prompt: "t3chnic4lly a fox in the snow"
    loras: [owner/style-a, owner/style-b]   # each searched on its own
    seeds: [1, 2, 3]
    width: 512
    height: 512
    range: [0, 2]          # scales searched
    precision: 0.05        # bracket width for onset and saturation
    thresholds: {noise_floor: 0.002, noise_k: 2, saturation_tol: 0.01, overcook_drop: 0.35, inert_change: 0.01}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from zlab.core.request import LoRA, Request
from zlab.errors import ValidationError, ZlabError
from zlab.runs.runner import Service, run_sweep
from zlab.runs.sweep import Sweep
from zlab.strength import measure
from zlab.strength.combine import CompassSearch, next_point
from zlab.strength.definitions import Diagnosis, Probe, Thresholds, diagnose
from zlab.strength.search import SearchSpace, next_scale

Quality = Callable[[Image.Image, Image.Image, str], float]  # (baseline, image, prompt) → quality relative to baseline
SPEC_KEYS = ("prompt", "loras", "seeds", "width", "height", "range", "precision", "coarse", "max_probes", "thresholds")
RECORD = "find_scale.json"


@dataclass(frozen=True)
class ScaleSpec:
    """What to search: one prompt, LoRAs searched one by one, seeds, size, the search space, thresholds."""

    prompt: str
    loras: tuple[str, ...]
    seeds: tuple[int, ...] = (1, 2, 3)
    width: int = 1024
    height: int = 1024
    space: SearchSpace = field(default_factory=SearchSpace)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if not self.loras or not all(isinstance(p, str) and p for p in self.loras):
            raise ValidationError("loras", list(self.loras), "one or more LoRA paths")
        if len(set(self.loras)) != len(self.loras):
            raise ValidationError("loras", list(self.loras), "distinct LoRA paths")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValidationError("seeds", list(self.seeds), "one or more concrete seeds (integers ≥ 0)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValidationError("seeds", list(self.seeds), "distinct seeds")
        loras = [LoRA(path, 1.0) for path in self.loras]  # each path checked as the model's schema checks it
        Request(self.prompt, loras=loras[:1], width=self.width, height=self.height, seed=self.seeds[0])

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, source: str = "spec") -> ScaleSpec:
        """From the file's structure (see the module docstring); errors name the key."""
        if not isinstance(spec, Mapping):
            raise ValidationError(source, type(spec).__name__, "a mapping with keys " + ", ".join(SPEC_KEYS))
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValidationError(unknown[0], spec[unknown[0]], "a find-scale key: one of " + ", ".join(SPEC_KEYS))
        loras = spec.get("loras")
        loras = [loras] if isinstance(loras, str) else loras
        if not isinstance(loras, list):
            raise ValidationError("loras", loras, "a LoRA path or a list of them")
        seeds = spec.get("seeds", [1, 2, 3])
        if not isinstance(seeds, list):
            raise ValidationError("seeds", seeds, "a list of seeds, e.g. [1, 2, 3]")
        scale_range = spec.get("range", [0.0, 2.0])
        if not isinstance(scale_range, list) or len(scale_range) != 2:
            raise ValidationError("range", scale_range, "two scales [lo, hi], e.g. [0, 2]")
        space_args: dict[str, Any] = {"lo": scale_range[0], "hi": scale_range[1]}
        for key in ("precision", "max_probes"):
            if key in spec:
                space_args[key] = spec[key]
        if "coarse" in spec:
            if not isinstance(spec["coarse"], list):
                raise ValidationError("coarse", spec["coarse"], "a list of scales, e.g. [0.5, 1, 2]")
            space_args["coarse"] = tuple(spec["coarse"])
        thresholds = spec.get("thresholds") or {}
        if not isinstance(thresholds, Mapping) or set(thresholds) - set(Thresholds.__dataclass_fields__):
            raise ValidationError(
                "thresholds", thresholds, "a mapping of: " + ", ".join(Thresholds.__dataclass_fields__)
            )
        prompt = spec.get("prompt")
        if not isinstance(prompt, str):
            raise ValidationError("prompt", prompt, "the prompt (a string)")
        return cls(
            prompt=prompt,
            loras=tuple(loras),
            seeds=tuple(seeds),
            width=spec.get("width", 1024),
            height=spec.get("height", 1024),
            space=SearchSpace(**space_args),
            thresholds=Thresholds(**thresholds),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ScaleSpec:
        """Read a find-scale file (YAML; every key checked by name before anything is sent)."""
        from zlab.runs.yamlfile import load_yaml

        return cls.from_dict(load_yaml(Path(path), "find-scale file"), source=str(path))

    @property
    def fingerprint(self) -> str:
        """A hash of everything the search depends on: the same spec, the same fingerprint (e.g. to name a
        run directory so that a search with other settings never shares another's record)."""
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(fields.encode()).hexdigest()

    def request(self, seed: int, lora: LoRA | None) -> Request:
        """The request of one probe: the spec's prompt and size at `seed`, with `lora` (None: the baseline)."""
        return Request(self.prompt, loras=[lora] if lora else [], width=self.width, height=self.height, seed=seed)


@dataclass(frozen=True)
class LoraAnswer:
    """One LoRA's search: its diagnosis (with the probes as evidence) and the LoRA images it used."""

    path: str
    diagnosis: Diagnosis
    images: int
    grid_images: int
    precision: float
    unfinished: str = ""  # why the search for this LoRA stopped early (a cell without an image)

    def lines(self) -> list[str]:
        d = self.diagnosis
        usable = d.usable_range
        head = f"{self.path}: {self.images} images (a grid at steps of {self.precision:g} needs {self.grid_images})"
        rng = f"  usable range: {usable[0]:g}–{usable[1]:g}" if usable else "  usable range: none found"
        unfinished = [f"  unfinished: {self.unfinished}"] if self.unfinished else []
        return [head, *("  " + line for line in d.lines()[:-1]), rng, *unfinished]


@dataclass(frozen=True)
class ScaleSearch:
    """`find_scale`'s answer: one `LoraAnswer` per LoRA, images and cost against the grid's, and why it stopped."""

    answers: tuple[LoraAnswer, ...]
    run_dir: Path
    baseline_images: int
    cost_usd: float
    grid_cost_usd: float
    stopped: str
    spec: ScaleSpec = field(repr=False)

    @property
    def images(self) -> int:
        """Every image the search used: the shared baseline plus each LoRA's probes."""
        return self.baseline_images + sum(a.images for a in self.answers)

    @property
    def grid_images(self) -> int:
        """What a grid at the search's precision needs for the same LoRAs and seeds (baseline once)."""
        return self.baseline_images + sum(a.grid_images for a in self.answers)

    def lines(self) -> list[str]:
        out = [line for a in self.answers for line in a.lines()]
        out.append(
            f"used {self.images} images (≈${self.cost_usd:.2f}); "
            f"a grid at steps of {self.spec.space.precision:g} needs "
            f"{self.grid_images} (≈${self.grid_cost_usd:.2f}); {self.stopped}"
        )
        out.append(f"definitions: {self.spec.thresholds.describe()}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def frame(self) -> pd.DataFrame:
        """Every probe, one row per (LoRA, scale, seed): change and detail, for plots and reports."""
        rows = [
            {"lora": a.path, "scale": p.scale, "seed": s, "change": c, "detail": d}
            for a in self.answers
            for p in a.diagnosis.probes
            for s, c, d in zip(p.seeds, p.change, p.detail, strict=True)
        ]
        return pd.DataFrame(rows, columns=["lora", "scale", "seed", "change", "detail"])


def _load(run_dir: Path, row: Mapping[str, Any]) -> Image.Image | None:
    """The cell's image as a measuring thumbnail, or None when the cell has none (failed, still pending)."""
    if row.get("status") != "succeeded" or not row.get("image_path"):
        return None
    with Image.open(run_dir / str(row["image_path"])) as opened:
        image = opened.convert("RGB")
    image.thumbnail((measure.WIDTH, measure.WIDTH * 4), Image.Resampling.LANCZOS)
    return image


async def find_scale(
    client: Service,
    spec: ScaleSpec,
    out: str | os.PathLike[str],
    *,
    budget: float | None = None,
    concurrency: int = 8,
    echo: Callable[[str], None] | None = None,
    quality: Quality | None = None,
) -> ScaleSearch:
    """Search every LoRA of `spec` (see the module docstring); returns what was found and what it cost.

    `quality(baseline, image, prompt)` replaces the built-in detail measure behind the overcook test: a value
    relative to the baseline (1 = as good), e.g. `zlab.metrics.clip_adherence(clip)` for prompt adherence.
    """
    score = quality or (lambda base, image, _prompt: measure.relative_detail(base, image))

    run_dir = Path(out)
    say = echo or (lambda line: None)
    price = await client.pricing()
    seeds = list(spec.seeds)
    spent = 0.0

    async def render(path: str | None, scale: float = 0.0) -> tuple[dict[int, Image.Image], str]:
        """Renders the baseline (path None) or one probe over every seed, as one sweep: (images by seed, and
        what is missing, e.g. "seed 2 failed: …"; empty when every seed has its image)."""
        lora = LoRA(path, scale) if path else None
        sweep = Sweep(spec.request(seeds[0], lora), {"seed": seeds}, name="find-scale")
        result = await run_sweep(client, sweep, run_dir, concurrency=concurrency, progress=False, echo=lambda _: None)
        images, missing = {}, []
        for row in result.df.to_dict("records"):
            image = _load(run_dir, row)
            if image is None:
                missing.append(f"seed {row['seed']} {row.get('status')}: {row.get('error') or 'no image'}")
            else:
                images[int(row["seed"])] = image
        return images, "; ".join(missing)

    def cost(n_cells: int) -> float:
        return sum(price.cost(spec.request(s, None)) for s in seeds) * n_cells

    stopped = "every bracket closed"
    base_cost = cost(1)
    if budget is not None and base_cost > budget:
        raise ValidationError("budget", budget, f"at least ${base_cost:.2f} for the baseline images")
    spent += base_cost
    baseline, missing = await render(None)
    if missing:
        raise ZlabError(f"find-scale: the no-LoRA baseline images are not all there ({missing}); rerun to resume")
    probes: dict[str, list[Probe]] = {p: [Probe.baseline(seeds)] for p in spec.loras}
    unfinished: dict[str, str] = {}
    while True:
        searching = [p for p in spec.loras if p not in unfinished]
        asks = [(p, x) for p in searching if (x := next_scale(probes[p], spec.space, spec.thresholds)) is not None]
        if not asks:
            break
        if budget is not None and spent + cost(len(asks)) > budget + 1e-9:
            stopped = f"stopped at the budget (${budget:.2f}): {len(asks)} LoRA(s) not finished"
            break
        spent += cost(len(asks))
        say(f"zlab: find-scale: probing {', '.join(f'{p}@{x:g}' for p, x in asks)}")
        for path, x in asks:
            images, missing = await render(path, x)
            if missing:  # this LoRA stops here; the others go on, and a rerun resumes it
                unfinished[path] = f"scale {x:g}: {missing}; rerun to resume"
                continue
            ims = [images[s] for s in seeds]
            probes[path].append(
                Probe(
                    x,
                    tuple(seeds),
                    tuple(measure.change(baseline[s], im) for s, im in zip(seeds, ims, strict=True)),
                    tuple(score(baseline[s], im, spec.prompt) for s, im in zip(seeds, ims, strict=True)),
                )
            )
    grid = spec.space.grid_scales - 1  # the grid's scale-lo images are the shared baseline
    answers = tuple(
        LoraAnswer(
            p,
            diagnose(probes[p], spec.thresholds),
            (len(probes[p]) - 1) * len(seeds),
            grid * len(seeds),
            spec.space.precision,
            unfinished.get(p, ""),
        )
        for p in spec.loras
    )
    if unfinished and stopped == "every bracket closed":
        stopped = f"{len(unfinished)} LoRA(s) unfinished (a probe has no image); rerun to resume"
    result = ScaleSearch(answers, run_dir, len(seeds), spent, base_cost + cost(grid * len(spec.loras)), stopped, spec)
    _record(result)
    return result


def _record(result: ScaleSearch) -> None:
    """find_scale.json and find_scale.csv in the run directory: the answer and every probe, for people."""
    payload = {
        "answers": [
            {
                "lora": a.path,
                "images": a.images,
                "grid_images": a.grid_images,
                "findings": {
                    name: None if f is None else {"lo": f.lo, "hi": f.hi, "value": f.value, "evidence": f.evidence}
                    for name, f in a.diagnosis.findings()
                },
                "warnings": list(a.diagnosis.warnings),
                "unfinished": a.unfinished or None,
            }
            for a in result.answers
        ],
        "images": result.images,
        "grid_images": result.grid_images,
        "cost_usd": result.cost_usd,
        "grid_cost_usd": result.grid_cost_usd,
        "stopped": result.stopped,
        "definitions": result.spec.thresholds.describe(),
    }
    (result.run_dir / RECORD).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    result.frame().to_csv(result.run_dir / "find_scale.csv", index=False)


async def find_combination(
    client: Service,
    prompt: str,
    loras: Sequence[str],
    targets: Mapping[int, str | os.PathLike[str]],
    out: str | os.PathLike[str],
    search: CompassSearch,
    *,
    width: int = 1024,
    height: int = 1024,
    budget: float | None = None,
) -> dict[tuple[float, ...], float]:
    """The scales of 2–3 LoRAs whose images come closest to `targets` (a target image per seed): objective =
    mean over seeds of the mean |Δpixel| to the target; compass search (`zlab.strength.combine`). Every
    combination is a sweep into `out`, so a rerun resumes; `budget` stops before one would pass it.
    Returns every combination tried with its objective (`combine.best_of` / `combine.describe` read it)."""

    if len(loras) != len(search.start):
        raise ValidationError("start", list(search.start), f"one scale per LoRA ({len(loras)})")
    seeds, run_dir = sorted(targets), Path(out)
    goal = {}
    for seed in seeds:
        with Image.open(targets[seed]) as im:
            goal[seed] = im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
            goal[seed].thumbnail((measure.WIDTH, measure.WIDTH * 4), Image.Resampling.LANCZOS)
    price = await client.pricing()
    per_point = sum(price.cost(Request(prompt, loras=[], width=width, height=height, seed=s)) for s in seeds)
    points: dict[tuple[float, ...], float] = {}
    while (point := next_point(points, search)) is not None:
        if budget is not None and per_point * (len(points) + 1) > budget + 1e-9:
            break
        base = Request(prompt, loras=[LoRA(p, s) for p, s in zip(loras, point, strict=True)], width=width,
                       height=height, seed=seeds[0])  # fmt: skip
        result = await run_sweep(
            client, Sweep(base, {"seed": seeds}, name="find-combination"), run_dir, progress=False,
            echo=lambda _: None,
        )  # fmt: skip
        images: dict[int, Image.Image] = {}
        for row in result.df.to_dict("records"):
            if (image := _load(run_dir, row)) is not None:
                images[int(row["seed"])] = image
        if set(images) != set(seeds):
            raise ZlabError(f"find-combination: images missing at {point}; rerun to resume")
        points[point] = sum(measure.change(goal[s], images[s]) for s in seeds) / len(seeds)
    return points
