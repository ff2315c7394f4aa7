"""What the sweep builder decides, as pure functions: form values in, a `Sweep` and a plan summary out.

`zlab.views.widgets.SweepBuilder` only copies widget values into a `Form` and shows what these functions
return, so everything it does can be tested (and reused by other front ends) without a browser.

>>> form = Form("a red fox", loras=(LoraRow("owner/lora", 0, 1.5, 4),), seeds="1, 2", sizes="512x768")
>>> plan_summary(form).text
'8 cells (lora1_scale[4] × seed[2]), 3.1 MP, ≈$0.03 estimated, ≈4 s at concurrency 8'
>>> parse_seeds("1-4")
[1, 2, 3, 4]
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from zlab.core.axes import axis_values, clean_number, parse_range
from zlab.core.config import DEFAULT_PRICE_PER_MP
from zlab.core.request import MAX_LORAS, LoRA, Request
from zlab.errors import ValidationError, ZlabError
from zlab.runs.sweep import Sweep
from zlab.runs.tables import AXIS_PREFERENCE, axis_rank, sheet_axes

__all__ = [
    "AXIS_PREFERENCE", "Form", "LoraRow", "PlanSummary", "axis_rank", "build_sweep", "default_out_dir",
    "parse_paths", "parse_prompts", "parse_seeds", "parse_sizes", "parse_zip", "plan_summary", "scale_values",
    "sheet_axes",
]  # fmt: skip
_INT_SPAN = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_SPLIT = re.compile(r"[,;\s]+")
MAX_STEPS = 50  # more than this per LoRA row is a typo, not a sweep anyone wants to pay for


@dataclasses.dataclass(frozen=True)
class LoraRow:
    """One LoRA row of the builder: an empty `path` means the row is unused; several paths separated by
    commas make a `loraN_path` axis (the same scales for each file)."""

    path: str = ""
    start: float = 1.0
    end: float = 1.0
    steps: int = 1

    @property
    def used(self) -> bool:
        return bool(self.path.strip())


@dataclasses.dataclass(frozen=True)
class Form:
    """Everything the builder's widgets hold, as plain values (text fields stay text until parsed)."""

    prompt: str  # one prompt per line: several lines make a `prompt` axis
    loras: tuple[LoraRow, ...] = ()
    seeds: str = "1"
    sizes: str = "1024x1024"
    concurrency: int = 8
    zip: str = ""  # axes that move together: "lora1_scale, lora2_scale; prompt, seed"


@dataclasses.dataclass(frozen=True)
class PlanSummary:
    """The builder's live line: `ok` with the sweep, or not with the validation message to show."""

    ok: bool
    text: str
    sweep: Sweep | None = None
    error: ZlabError | None = None


def parse_seeds(text: str) -> list[int]:
    """Seeds from text: "1, 2, 3", "1-4" (every integer), "0-100 [5]" (evenly spaced), "-1" (random).

    >>> parse_seeds("1, 2, 10-12")
    [1, 2, 10, 11, 12]
    """
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("seeds", text, 'seeds such as "1, 2, 3", "1-4" or "0-100 [5]"')
    values: list[Any] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        span = _INT_SPAN.match(piece)
        if span:
            a, b = int(span[1]), int(span[2])
            if b < a or b - a > 10_000:
                raise ValidationError("seeds", piece, "a span a-b with a ≤ b and at most 10,000 seeds")
            values.extend(range(a, b + 1))
        elif "[" in piece or "(" in piece:
            values.extend(round(v) for v in parse_range("seeds", piece))
        else:  # "1 2 3" works as well as "1, 2, 3"
            for token in piece.split():
                try:
                    values.append(int(token))
                except ValueError:
                    raise ValidationError("seeds", token, 'an integer, a span "1-4" or a range "0-100 [5]"') from None
    if not values:
        raise ValidationError("seeds", text, 'at least one seed, e.g. "1, 2, 3"')
    return axis_values("seed", values)


def parse_sizes(text: str) -> list[str]:
    """Sizes from text: "1024x1024, 768x1344" → ["1024x1024", "768x1344"] (each checked)."""
    pieces = [p for p in _SPLIT.split(text.strip()) if p] if isinstance(text, str) else []
    if not pieces:
        raise ValidationError("sizes", text, 'sizes such as "1024x1024, 768x1344"')
    return axis_values("size", pieces)


def scale_values(row: LoraRow, index: int = 1) -> list[float | int]:
    """The scales of one LoRA row: `steps` values from `start` to `end`, both included.

    >>> scale_values(LoraRow("a/b", 0, 1.5, 4))
    [0, 0.5, 1, 1.5]
    """
    name = f"lora{index}_scale"
    if isinstance(row.steps, bool) or not isinstance(row.steps, int) or not 1 <= row.steps <= MAX_STEPS:
        raise ValidationError(f"lora{index} steps", row.steps, f"an integer from 1 to {MAX_STEPS}")
    if row.steps == 1:
        if row.start != row.end:
            raise ValidationError(
                f"lora{index} steps",
                1,
                "2 or more steps to go from start to end",
                f"or set end = start ({row.start:g})",
            )
        return axis_values(name, [row.start])
    if row.end <= row.start:
        raise ValidationError(name, f"{row.start:g} to {row.end:g}", "an end above the start when steps > 1")
    span = row.end - row.start
    return axis_values(name, [clean_number(row.start + span * i / (row.steps - 1)) for i in range(row.steps)])


def parse_prompts(text: str) -> list[str]:
    """Prompts from text, one per non-empty line (several lines make a prompt axis)."""
    prompts = [line.strip() for line in text.splitlines() if line.strip()] if isinstance(text, str) else []
    if not prompts:
        raise ValidationError("prompt", text, "a prompt (one per line for several)")
    if len(set(prompts)) < len(prompts):
        raise ValidationError("prompt", text, "different prompts on each line")
    return prompts


def parse_paths(text: str, index: int = 1) -> list[str]:
    """LoRA files from a row's text: "owner/a, owner/b" → two paths (a `loraN_path` axis)."""
    paths = [p.strip() for p in text.split(",") if p.strip()]
    if len(set(paths)) < len(paths):
        raise ValidationError(f"lora{index}_path", text, "different LoRA paths, separated by commas")
    return paths


def parse_zip(text: str) -> list[list[str]]:
    """Zip groups from text: "lora1_scale, lora2_scale; prompt, seed" → [[lora1_scale, lora2_scale], [prompt, seed]]."""
    groups = []
    for piece in (text or "").split(";"):
        names = [n for n in _SPLIT.split(piece.replace("+", " ").strip()) if n]
        if names:
            groups.append(names)
    return groups


def build_sweep(form: Form, *, name: str | None = None) -> Sweep:
    """The sweep a form describes. Axes with one value go into the base request, so the plan's axes
    (and the sheet's) are only what actually varies: several prompt lines make a `prompt` axis, several
    paths in a LoRA row a `loraN_path` axis, and axes named in `form.zip` move together."""
    used = [(i, row) for i, row in enumerate(form.loras, start=1) if row.used]
    if len(form.loras) > MAX_LORAS:
        raise ValidationError("loras", f"{len(form.loras)} rows", f"at most {MAX_LORAS} LoRA rows")
    # Rows are numbered by position among the *used* rows: that is the LoRA's index in the request.
    scales = [(n, scale_values(row, n)) for n, (_, row) in enumerate(used, start=1)]
    paths = [(n, parse_paths(row.path, n)) for n, (_, row) in enumerate(used, start=1)]
    prompts = parse_prompts(form.prompt)
    seeds = parse_seeds(form.seeds)
    sizes = parse_sizes(form.sizes)
    width, height = (int(v) for v in sizes[0].split("x"))
    loras = tuple(LoRA(p[0], s[0]) for (_, p), (_, s) in zip(paths, scales, strict=True))
    base = Request(prompts[0], loras=loras, width=width, height=height, seed=seeds[0])
    axes: dict[str, list[Any]] = {}
    if len(prompts) > 1:
        axes["prompt"] = prompts
    for (n, values), (_, files) in zip(scales, paths, strict=True):
        if len(files) > 1:
            axes[f"lora{n}_path"] = files
        if len(values) > 1:
            axes[f"lora{n}_scale"] = values
    if len(seeds) > 1:
        axes["seed"] = seeds
    if len(sizes) > 1:
        axes["size"] = sizes
    zipped = parse_zip(form.zip)
    sheet = dict(zip(("x", "y", "page"), sheet_axes(_sheet_columns(axes, zipped)), strict=True))
    return Sweep(base, axes, zipped=zipped, name=name, sheet=sheet)


def _sheet_columns(axes: dict[str, list[Any]], zipped: list[list[str]]) -> list[str]:
    """Axes that need a place on the sheet: one per zip group (its partners follow it)."""
    followers = {name for group in zipped for name in sorted(group, key=axis_rank)[1:]}
    return [a for a in axes if a not in followers]


def plan_summary(form: Form, *, price_per_mp: float = DEFAULT_PRICE_PER_MP) -> PlanSummary:
    """One line for the builder: cells, axes, megapixels, estimated cost and time; or what is wrong."""
    try:
        sweep = build_sweep(form)
        if isinstance(form.concurrency, bool) or not isinstance(form.concurrency, int) or form.concurrency < 1:
            raise ValidationError("concurrency", form.concurrency, "an integer from 1 to 256")
    except ZlabError as exc:
        return PlanSummary(False, f"⚠ {exc}", None, exc)
    est = sweep.estimate(form.concurrency, price_per_mp=price_per_mp)
    zipped = {a: group for group in sweep.zip for a in group}
    shown = []
    for a, v in sweep.axes.items():
        if a not in zipped:
            shown.append(f"{a}[{len(v)}]")
        elif zipped[a][0] == a:  # a zip group counts once, named by all its axes
            shown.append(f"{'+'.join(zipped[a])}[{len(v)}]")
    axes = " × ".join(shown) or "no axis"
    cells = "1 cell" if est.cells == 1 else f"{est.cells} cells"
    # Estimate's own str says the rest; reuse it so the builder and `zlab run` word the plan alike.
    rest = str(est).split(", ", 1)[1]
    return PlanSummary(True, f"{cells} ({axes}), {rest}", sweep)


def default_out_dir(sweep: Sweep, parent: str = "runs") -> str:
    """A run directory named by the sweep's fingerprint: the same sweep resumes, a changed one starts fresh
    (a run directory's results hold every cell ever run into it, so sweeps should not share one)."""
    return f"{parent}/builder-{sweep.fingerprint[:10]}"
