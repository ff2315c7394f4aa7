"""A sweep: a base request plus named axes; every combination is one cell. Pure: no network.

>>> sweep = Sweep(Request("t3chnic4lly a fox"), axes={"lora1_scale": "0-1.5 [4]", "seed": [1, 2, 3]})
>>> len(sweep.cells())
12

Sweep files are YAML with the base request's fields plus `axes:` (and optionally `zip:` for axes
that vary together, `sheet:` for the contact sheet drawn after a run, and `baseline: true` to add
the no-LoRA image for every prompt/seed/size: the cells where every LoRA scale is 0 already are one,
so none is added there; the result column `baseline` marks them). A seed of -1 is resolved
to a concrete random seed before anything is sent; the draws are recorded in the run directory, so
rerunning the same file into the same directory resumes with the same seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from zlab.core.axes import SR_AXIS, axis_values, check_axis_name, parse_size, path_labels
from zlab.core.concurrency import ASSUMED_CAPACITY
from zlab.core.config import DEFAULT_PRICE_PER_MP
from zlab.core.pricing import Pricing
from zlab.core.request import MODEL_ID, SEED_RANGE, LoRA, Request
from zlab.core.table import request_row
from zlab.errors import ValidationError

MAX_CELLS = 100_000  # a sweep beyond this is almost surely a typo in an axis; max_cells=… allows more
FILE_KEYS = ("prompt", "loras", "width", "height", "seed", "axes", "zip", "sheet", "name", "baseline")
SECONDS_PER_IMAGE = 4.0  # a working guess for RunComfy (cold starts aside); plans say it is a guess


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of a sweep: the concrete request and the axis values that produced it."""

    index: int
    request: Request
    values: Mapping[str, Any]
    derived: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # `baseline`, `loraN_label`

    @property
    def key(self) -> str:
        return self.request.key

    def row(self) -> dict[str, Any]:
        """The cell as result columns: every request parameter plus each axis value."""
        return {**request_row(self.request, self.values), **self.derived}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What a plan will cost before anything is sent."""

    cells: int
    megapixels: float
    cost_usd: float
    seconds: float
    concurrency: int | str  # "auto": waves of an assumed capacity (zlab.core.concurrency)

    def __str__(self) -> str:
        minutes = f"{self.seconds / 60:.1f} min" if self.seconds >= 90 else f"{self.seconds:.0f} s"
        return (
            f"{self.cells} cells, {self.megapixels:.1f} MP, ≈${self.cost_usd:.2f} estimated, "
            f"≈{minutes} at concurrency {self.concurrency}"
        )


class Sweep:
    """A base request and axes; `cells()` is their product (zipped axes move together)."""

    def __init__(
        self,
        base: Request,
        axes: Mapping[str, Any] | None = None,
        *,
        zipped: Sequence[Sequence[str]] = (),
        sheet: Mapping[str, Any] | None = None,
        name: str | None = None,
        seed_draws: Sequence[int] | None = None,
        max_cells: int = MAX_CELLS,
        baseline: bool = False,
    ) -> None:
        if not isinstance(base, Request):
            raise ValidationError("base", base, "a zlab.Request")
        self.base, self.name = base, name
        self.sheet = _check_sheet(sheet)
        raw_axes = dict(axes or {})
        for axis in raw_axes:
            check_axis_name(axis, len(base.loras))
        if "size" in raw_axes and ({"width", "height"} & set(raw_axes)):
            raise ValidationError("axes", "size", "either a size axis or width/height axes, not both")
        self.axes: dict[str, list[Any]] = {axis: axis_values(axis, values) for axis, values in raw_axes.items()}
        self.zip = _check_zip(zipped, self.axes)
        self.max_cells = max_cells
        count = math.prod(len(self.axes[group[0]]) for group in self._groups())
        if count > max_cells:  # checked before anything is expanded: a typo must not build millions of cells
            raise ValidationError(
                "axes", f"{count:,} cells", f"at most {max_cells:,} cells", "Shrink the axes, or pass max_cells=…"
            )
        if not isinstance(baseline, bool):
            raise ValidationError("baseline", baseline, "true or false")
        self.baseline = baseline
        self._check_search_replace()
        self._raw: dict[str, Any] = {"base": base.to_input(), "axes": raw_axes, "zip": [list(g) for g in self.zip]}
        if baseline:  # only then: sweeps written before the option keep their fingerprint
            self._raw["baseline"] = True
        self.seed_draws = self._draw_seeds(seed_draws)
        self._cells: list[Cell] | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, source: str = "sweep", max_cells: int = MAX_CELLS) -> Sweep:
        """Build from the sweep file's structure (see the module docstring)."""
        if not isinstance(spec, Mapping):
            raise ValidationError(source, type(spec).__name__, "a mapping with keys " + ", ".join(FILE_KEYS))
        unknown = sorted(set(spec) - set(FILE_KEYS))
        if unknown:
            raise ValidationError(unknown[0], spec[unknown[0]], "a sweep file key: one of " + ", ".join(FILE_KEYS))
        fields = {k: spec[k] for k in ("prompt", "loras", "width", "height", "seed") if k in spec}
        if "loras" in fields and fields["loras"] is None:
            fields["loras"] = ()
        base = Request.from_input(fields)
        axes = spec.get("axes") or {}
        if not isinstance(axes, Mapping):
            raise ValidationError("axes", axes, "a mapping of axis name to values")
        zipped, sheet, name = spec.get("zip") or (), spec.get("sheet"), spec.get("name")
        baseline = spec.get("baseline", False)
        return cls(base, axes, zipped=zipped, sheet=sheet, name=name, baseline=baseline, max_cells=max_cells)

    @classmethod
    def from_file(cls, path: str | Path, *, max_cells: int = MAX_CELLS) -> Sweep:
        """Read a YAML sweep file; errors name the file and the field (see `zlab.runs.yamlfile` for the checks)."""
        from zlab.runs.yamlfile import load_yaml

        path = Path(path)
        spec = load_yaml(path)
        sweep = cls.from_dict(spec, source=str(path), max_cells=max_cells)
        sweep.name = sweep.name or path.stem
        return sweep

    @property
    def fingerprint(self) -> str:
        """Names the sweep as written (seeds still -1): equal fingerprints reuse the recorded seed draws."""
        text = json.dumps({"model": MODEL_ID, **self._raw}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The sweep as written, plus the concrete seed draws; what a run directory records."""
        return {
            **self._raw,
            "sheet": self.sheet,
            "name": self.name,
            "seed_draws": list(self.seed_draws),
            "fingerprint": self.fingerprint,
        }

    def with_seed_draws(self, draws: Sequence[int]) -> Sweep:
        """The same sweep with the draws for `seed: -1` fixed (a run directory keeps its draws forever)."""
        return Sweep(
            self.base,
            self._raw["axes"],
            zipped=self.zip,
            sheet=self.sheet,
            name=self.name,
            seed_draws=draws,
            max_cells=self.max_cells,
            baseline=self.baseline,
        )

    def _random_slots(self) -> int:
        if "seed" in self.axes:
            return sum(1 for s in self.axes["seed"] if s == -1)
        return 1 if self.base.seed == -1 else 0

    def _draw_seeds(self, draws: Sequence[int] | None) -> tuple[int, ...]:
        needed = self._random_slots()
        if draws is None:
            rng = random.SystemRandom()
            return tuple(rng.randint(0, SEED_RANGE[1]) for _ in range(needed))
        if len(draws) != needed:
            raise ValidationError("seed_draws", list(draws), f"{needed} concrete seeds (one per -1)")
        return tuple(int(d) for d in draws)

    def _groups(self) -> list[list[str]]:
        """Axes in declaration order; zipped axes form one group at the place of their first member."""
        groups: list[list[str]] = []
        placed: set[str] = set()
        for axis in self.axes:
            if axis in placed:
                continue
            group = next((list(g) for g in self.zip if axis in g), [axis])
            groups.append(group)
            placed.update(group)
        return groups

    def cells(self) -> list[Cell]:
        """Every cell, in order: the first axis varies slowest."""
        if self._cells is not None:
            return self._cells
        axes = dict(self.axes)
        if "seed" in axes:
            draws = iter(self.seed_draws)
            axes["seed"] = [next(draws) if s == -1 else s for s in axes["seed"]]
        base = self.base.replace(seed=self.seed_draws[0]) if "seed" not in axes and self.base.seed == -1 else self.base
        groups = self._groups()
        choices = [[{a: axes[a][i] for a in g} for i in range(len(axes[g[0]]))] for g in groups]
        terms = {axis: values[0] for axis, values in self.axes.items() if SR_AXIS.match(axis)}
        labels = {
            f"{axis[:-5]}_label": dict(zip(values, path_labels(values), strict=True))
            for axis, values in self.axes.items()
            if axis.startswith("lora") and axis.endswith("_path")
        }
        cells = []
        for index, combo in enumerate(itertools.product(*choices)):
            values: dict[str, Any] = {k: v for part in combo for k, v in part.items()}
            derived = {column: names[values[column[:-6] + "_path"]] for column, names in labels.items()}
            cells.append(Cell(index, apply_values(base, values, terms), values, derived))
        if self.baseline:
            cells = _with_baseline(cells)
        self._cells = cells
        return cells

    @property
    def derived_columns(self) -> list[str]:
        """Result columns computed from the axes: `baseline` (with the option), `loraN_label` for path axes."""
        labels = [f"{a[:-5]}_label" for a in self.axes if a.startswith("lora") and a.endswith("_path")]
        return [*(["baseline"] if self.baseline else []), *labels]

    def _check_search_replace(self) -> None:
        """Each S/R axis's search text must be in every prompt it applies to, or the axis would do nothing."""
        prompts = self.axes.get("prompt", [self.base.prompt])
        for axis, values in self.axes.items():
            if SR_AXIS.match(axis):
                missing = next((p for p in prompts if values[0] not in p), None)
                if missing is not None:
                    raise ValidationError(axis, values[0], f"text found in the prompt (not in {missing!r})")

    def estimate(
        self,
        concurrency: int | str = 8,
        *,
        price_per_mp: float = DEFAULT_PRICE_PER_MP,
        seconds_per_image: float = SECONDS_PER_IMAGE,
        cells: Sequence[Cell] | None = None,
        pricing: Pricing | None = None,
    ) -> Estimate:
        """Megapixels, cost and wall time (waves of `concurrency`) of some or all cells.

        The cost follows `pricing` (per image or per megapixel, see `zlab.core.pricing`), else `price_per_mp`."""
        chosen = self.cells() if cells is None else cells
        mp = sum(c.request.megapixels for c in chosen)
        price = pricing or Pricing(None, price_per_mp, "price_per_mp")
        cost = sum(price.cost(c.request) for c in chosen)
        waves = math.ceil(len(chosen) / max(1, concurrency if isinstance(concurrency, int) else ASSUMED_CAPACITY))
        return Estimate(len(chosen), mp, cost, waves * seconds_per_image, concurrency)

    def plan(
        self, concurrency: int | str = 8, *, price_per_mp: float = DEFAULT_PRICE_PER_MP, pricing: Pricing | None = None
    ) -> pd.DataFrame:
        """A DataFrame of cells (key, every parameter, megapixels, cost); `.attrs['estimate']` sums it up."""
        price = pricing or Pricing(None, price_per_mp, "price_per_mp")
        rows = []
        for cell in self.cells():
            row = cell.row()
            row["megapixels"] = cell.request.megapixels
            row["cost_usd"] = price.cost(cell.request)
            rows.append(row)
        df = pd.DataFrame(rows)
        df.attrs["estimate"] = self.estimate(concurrency, pricing=price)
        return df

    def __len__(self) -> int:
        return len(self.cells())

    def __repr__(self) -> str:
        axes = " × ".join(f"{a}[{len(v)}]" for a, v in self.axes.items()) or "no axes"
        return f"<Sweep {self.name or ''} {axes} = {len(self)} cells>".replace("  ", " ")


def apply_values(base: Request, values: Mapping[str, Any], terms: Mapping[str, str] | None = None) -> Request:
    """The base request with axis values applied (`size` sets width and height together); `terms` gives
    each search/replace axis's search text, replaced in the prompt after any `prompt` axis."""
    changes: dict[str, Any] = {}
    loras = list(base.loras)
    for axis, value in values.items():
        if SR_AXIS.match(axis):
            continue
        if axis == "size":
            changes["width"], changes["height"] = parse_size(axis, value)
        elif axis.startswith("lora"):
            index, part = int(axis[4]) - 1, axis.split("_", 1)[1]
            lora = loras[index]
            loras[index] = LoRA(value, lora.scale) if part == "path" else LoRA(lora.path, value)
        else:
            changes[axis] = value
    prompt = changes.get("prompt", base.prompt)
    for axis, search in (terms or {}).items():
        prompt = prompt.replace(search, values[axis])
    if prompt != base.prompt:
        changes["prompt"] = prompt
    return base.replace(loras=tuple(loras), **changes)


def _with_baseline(cells: list[Cell]) -> list[Cell]:
    """`cells` plus one no-LoRA cell per (prompt, seed, size), unless a cell there has every scale at 0
    (it is the same image); every cell says whether it is a baseline. An added cell keeps the axis values
    that do not concern LoRAs (prompt, search/replace, seed, size), so it sorts beside its group."""
    groups: dict[tuple[str, int, int, int], tuple[bool, Cell]] = {}
    marked = []
    for cell in cells:
        req = cell.request
        group = (req.prompt, req.seed, req.width, req.height)
        zero = not req.loras or all(lora.scale == 0 for lora in req.loras)
        covered, first = groups.get(group, (False, cell))
        groups[group] = (covered or zero, first)
        marked.append(dataclasses.replace(cell, derived={**cell.derived, "baseline": zero}))
    for (prompt, seed, width, height), (covered, first) in groups.items():
        if not covered:
            request = Request(prompt, loras=(), width=width, height=height, seed=seed)
            values = {k: v for k, v in first.values.items() if not k.startswith("lora")}
            marked.append(Cell(len(marked), request, values, {"baseline": True}))
    return marked


SHEET_KEYS = ("x", "y", "page", "cell_width", "stack", "title")


def _check_sheet(sheet: Any) -> dict[str, Any] | None:
    """`sheet:` in a sweep file: which columns go across, down and onto pages (drawn after a run)."""
    if sheet is None:
        return None
    allowed = "a mapping like {x: lora1_scale, y: seed} with keys " + ", ".join(SHEET_KEYS)
    if not isinstance(sheet, Mapping) or "x" not in sheet:
        raise ValidationError("sheet", sheet, allowed)
    unknown = sorted(set(sheet) - set(SHEET_KEYS), key=str)
    if unknown:
        raise ValidationError(f"sheet.{unknown[0]}", sheet[unknown[0]], allowed)
    return dict(sheet)


def _check_zip(groups: Any, axes: Mapping[str, list[Any]]) -> tuple[tuple[str, ...], ...]:
    if not isinstance(groups, list | tuple):
        raise ValidationError("zip", groups, "a list of lists of axis names, e.g. [[lora1_scale, lora2_scale]]")
    checked: list[tuple[str, ...]] = []
    used: set[str] = set()
    for group in groups:
        if not isinstance(group, list | tuple) or len(group) < 2:
            raise ValidationError("zip", group, "a list of two or more axis names")
        for axis in group:
            if axis not in axes:
                raise ValidationError("zip", axis, "an axis named under 'axes:' (" + ", ".join(axes) + ")")
            if axis in used:
                raise ValidationError("zip", axis, "each axis in at most one zip group")
            used.add(axis)
        lengths = {axis: len(axes[axis]) for axis in group}
        if len(set(lengths.values())) > 1:
            raise ValidationError("zip", lengths, "axes of equal length (they move together)")
        checked.append(tuple(group))
    return tuple(checked)
