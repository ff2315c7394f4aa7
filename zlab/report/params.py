"""Notebook parameters, checked before anything runs: `-p NAME VALUE` pairs read as YAML, names checked
against the notebook's `parameters` cell, secret-looking names refused (papermill writes parameters into
the executed notebook, so a token must come from the environment)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from zlab.errors import ValidationError
from zlab.report.scrub import MASK, redact, secret_values

_SECRET_NAME = re.compile(r"token|api_?key|secret|passw(or)?d", re.IGNORECASE)


def parse_param_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn `-p NAME VALUE` pairs into a dict, reading each VALUE as YAML.

    `"[5, 6]"` → `[5, 6]`, `"0.5"` → `0.5`, `"a fox"` → `"a fox"`; an empty value or one that is not
    valid YAML stays the string it is. A name given twice keeps its last value.

    >>> parse_param_pairs([("seeds", "[5, 6]"), ("prompt", "a fox"), ("scale", "0.5")])
    {'seeds': [5, 6], 'prompt': 'a fox', 'scale': 0.5}
    """
    out: dict[str, Any] = {}
    for name, raw in pairs:
        try:
            out[name] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[name] = raw
    return out


def check_parameters(parameters: Mapping[str, Any], declared: Mapping[str, Any] | None) -> None:
    """Refuse secret-looking names and names the notebook does not declare (`declared` None: no cell)."""
    secrets = secret_values()
    for name, value in parameters.items():
        if _SECRET_NAME.search(name):
            raise ValidationError(
                name,
                MASK,
                "no secrets as notebook parameters",
                "Papermill writes parameters into the executed notebook; set RUNCOMFY_TOKEN in the "
                "environment instead (the notebook's kernel inherits it).",
            )
        if declared is None:
            raise ValidationError(
                name,
                redact(value, secrets),
                "no parameters: the notebook has no cell tagged 'parameters'",
                "Tag the cell that sets the defaults with 'parameters' (Jupyter: Property Inspector → "
                "Cell Tags), or run it without -p.",
            )
        if name not in declared:
            valid = ", ".join(sorted(declared)) or "(none: its parameters cell assigns nothing)"
            raise ValidationError(name, redact(value, secrets), f"one of the notebook's parameters: {valid}")


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]] | None:
    """The parameters a notebook declares (name → papermill's description), None with no such cell."""
    import nbformat
    import papermill

    nb = nbformat.read(str(notebook), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return None
    try:
        return papermill.inspect_notebook(str(notebook))
    except ValueError:  # no kernelspec in the notebook's metadata; zlab runs it as Python anyway
        from papermill.translators import PythonTranslator

        return {p.name: p._asdict() for p in PythonTranslator.inspect(cell)}


def plain(value: Any) -> Any:
    """numpy scalars, tuples and paths as the plain values papermill writes into the notebook."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalar → Python scalar
    return item() if callable(item) and getattr(value, "shape", None) == () else value
