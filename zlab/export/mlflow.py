"""A run directory as one MLflow run: the sweep as params, each cell's numbers as stepped metrics and a
row of a table with its thumbnail, the images, the contact sheet and any report as artifacts, the
gallery's picks as columns and tags.

One MLflow run per run directory: the directory keeps the id it was given at its first export
(``DIR/.zlab/export-id``, so a moved directory is still the same run) and the MLflow run is found by that
tag, so exporting again updates the same run: params that already hold the same value are left alone
(one that changed is kept as a `zlab.param.*` tag, as MLflow params never change), metrics are logged
again only where a value differs, and the cells table and images are replaced, not appended.

Needs the `mlflow` extra (`pip install "zlab[mlflow]"`); nothing here is imported by `import zlab`.
Browse with ``mlflow ui --backend-store-uri sqlite:///mlflow.db``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from zlab.core.table import BOOKKEEPING, norm_value, parameter_columns, sheet_axes, varying_columns
from zlab.errors import ConfigError, ValidationError
from zlab.runs.tables import load_results, open_results

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from PIL import Image

__all__ = ["CELL_METRICS", "TABLE_FILE", "to_mlflow"]

TABLE_FILE = "zlab/cells.json"  # the cells table (load it back with mlflow.load_table)
CELL_METRICS = ("run_s", "queue_s", "cost_usd", "rating", "favourite", "succeeded")  # per cell, step = row
ID_FILE = ".zlab/export-id"
ID_TAG = "zlab.run_dir_id"
THUMB_WIDTH = 256
_PARAM_MAX = 6000  # MLflow's limit on a param's value
_BATCH = 1000  # metrics per log_batch call (MLflow's limit; params and tags: 100)


def to_mlflow(
    source: Any,
    *,
    tracking_uri: str | None = None,
    experiment: str = "zlab",
    run_name: str | None = None,
    reports: Iterable[str | os.PathLike[str]] = (),
) -> str:
    """Export a run directory (a path, a RunResult, or a results DataFrame whose ``attrs["run_dir"]`` says
    where it is) to MLflow and return the MLflow run's id.

    `tracking_uri` defaults to MLflow's own (``MLFLOW_TRACKING_URI``, else its default store); `reports`
    are HTML reports (from `zlab report`) to attach beside the contact sheet.
    """
    client = _client(tracking_uri)
    _, root = open_results(source)
    if root is None:
        raise ValidationError("source", type(source).__name__, "a run directory, a RunResult or a table from one")
    df = load_results(root)  # every cell the directory has, with the picks as they are now
    experiment_id = _experiment(client, experiment)
    run_id = _run_for(client, experiment_id, _directory_id(root), run_name or root.resolve().name)
    client.set_tag(run_id, "zlab.run_dir", str(root.resolve()))
    _log_params(client, run_id, _params(root, df))
    _log_metrics(client, run_id, df)
    _log_table(client, run_id, df, root)
    _log_files(client, run_id, root, df, [Path(r) for r in reports])
    client.set_terminated(run_id, "FINISHED")
    return run_id


# ---------------------------------------------------------------- which MLflow run


def _client(tracking_uri: str | None) -> MlflowClient:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError('exporting to MLflow needs the mlflow extra: pip install "zlab[mlflow]"') from None
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _directory_id(root: Path) -> str:
    """The directory's own export id, made at its first export (it moves with the directory)."""
    path = root / ID_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    text = uuid.uuid4().hex
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    return text


def _run_for(client: MlflowClient, experiment_id: str, directory_id: str, name: str) -> str:
    """The MLflow run of this directory: found by its id tag, else created."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{ID_TAG}` = '{directory_id}'", max_results=1)
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(experiment_id, run_name=name, tags={ID_TAG: directory_id, "zlab.exporter": "zlab"})
    return str(run.info.run_id)


# ---------------------------------------------------------------- params: the sweep


def _params(root: Path, df: pd.DataFrame) -> dict[str, str]:
    """The sweep as written (DIR/sweep.json) plus what the table shows: each fixed parameter's value and
    each axis's values, as text MLflow can hold."""
    params: dict[str, Any] = {}
    try:
        spec = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        spec = {}
    if isinstance(spec, dict):
        for name in ("name", "fingerprint", "zip", "sheet"):
            if spec.get(name):
                params[f"sweep.{name}"] = spec[name]
        for axis, values in (spec.get("axes") or {}).items():
            params[f"sweep.axes.{axis}"] = values
    varying = set(varying_columns(df))
    for column in parameter_columns(df):
        values = [norm_value(v) for v in df[column].dropna().unique()]
        if column in varying:
            params[f"axis.{column}"] = sorted(values, key=str)
        elif values:
            params[column] = values[0]
    params["cells"] = len(df)
    return {name: _text(value)[:_PARAM_MAX] for name, value in params.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    have = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in have]
    # A param never changes in MLflow: a value that did (another sweep ran into the directory) is a tag.
    changed = [RunTag(f"zlab.param.{k}", v) for k, v in params.items() if k in have and have[k] != v]
    for i in range(0, max(len(new), len(changed)), 100):
        client.log_batch(run_id, params=new[i : i + 100], tags=changed[i : i + 100])


# ---------------------------------------------------------------- metrics: each cell a step


def cell_metrics(df: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value)]}: one step per cell in the table's order; missing values are left out."""
    series: dict[str, list[tuple[int, float]]] = {}
    for step, row in enumerate(df.itertuples(index=False)):
        values = row._asdict()
        values["succeeded"] = values.get("status") == "succeeded"
        for name in CELL_METRICS:
            value = norm_value(values.get(name))
            if isinstance(value, bool | int | float) and math.isfinite(float(value)):
                series.setdefault(f"cell.{name}", []).append((step, float(value)))
    return series


def summary_metrics(df: pd.DataFrame) -> dict[str, float]:
    """The directory at a glance: cells by outcome, what was paid for generated images, the picks."""
    succeeded = df["status"] == "succeeded"
    generated = succeeded & ~df.get("cached", pd.Series(False, index=df.index)).fillna(False).astype(bool)
    return {
        "cells": float(len(df)),
        "succeeded": float(succeeded.sum()),
        "not_succeeded": float((~succeeded).sum()),
        "paid_usd": float(df.loc[generated, "cost_usd"].fillna(0).sum()),
        "favourites": float(df["favourite"].sum()),
        "rated": float((df["rating"] > 0).sum()),
    }


def _log_metrics(client: MlflowClient, run_id: str, df: pd.DataFrame) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    wanted = {**cell_metrics(df), **{k: [(0, v)] for k, v in summary_metrics(df).items()}}
    metrics = []
    for key, points in wanted.items():
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        latest = {m.step: m.value for m in history}  # the last value logged at each step
        metrics += [Metric(key, value, now, step) for step, value in points if latest.get(step) != value]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH])


# ---------------------------------------------------------------- the cells table and the files


def _log_table(client: MlflowClient, run_id: str, df: pd.DataFrame, root: Path) -> None:
    """Every cell as a row: its parameters, outcome, picks and thumbnail (an image column MLflow shows)."""
    from zlab.sheet.thumbs import cache_dir, load_many

    table = df.drop(columns=[c for c in df.columns if c.startswith("backend_")])
    table = table.assign(step=range(len(table)))
    for column in table.columns:
        if pd.api.types.is_datetime64_any_dtype(table[column]):
            table[column] = table[column].astype(str)
    paths = [_image(root, row) for row in df.to_dict("records")]
    tiles = load_many(paths, THUMB_WIDTH, cache_dir(root))
    table["thumbnail"] = [tile if _is_image(tile) else _placeholder() for tile in tiles]
    _delete(client, run_id, [TABLE_FILE, f"table_images/{Path(TABLE_FILE).with_suffix('').as_posix()}"])
    client.log_table(run_id, table, TABLE_FILE)  # (it appends to an existing table: the old one is gone)


def _image(root: Path, row: Mapping[str, Any]) -> Path | None:
    path = norm_value(row.get("image_path"))
    if row.get("status") != "succeeded" or not path:
        return None
    full = root / str(path)
    return full if full.is_file() else None


def _is_image(tile: Any) -> bool:
    return hasattr(tile, "save") and hasattr(tile, "size")


def _placeholder() -> Image.Image:
    """A cell without an image (failed, not run) still needs one: MLflow refuses a half-image column."""
    from PIL import Image

    return Image.new("RGB", (THUMB_WIDTH, THUMB_WIDTH), (226, 226, 232))


def _delete(client: MlflowClient, run_id: str, paths: Sequence[str]) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    for path in paths:  # a store that cannot delete keeps the old files beside the new ones
        with contextlib.suppress(NotImplementedError, MlflowException, OSError):
            repo.delete_artifacts(path)


def _log_files(client: MlflowClient, run_id: str, root: Path, df: pd.DataFrame, reports: Sequence[Path]) -> None:
    """The images as they are in the directory, the contact sheet (drawn on the sweep's axes when the
    directory has none), the results table and picks, and the reports."""
    if (root / "images").is_dir():
        client.log_artifacts(run_id, str(root / "images"), "images")
    for name in ("results.parquet", "picks.json", "sweep.json"):
        if (root / name).is_file():
            client.log_artifact(run_id, str(root / name), "zlab")
    sheets = sorted(p for p in root.glob("sheet*") if p.suffix in (".png", ".jpg", ".webp", ".html"))
    with tempfile.TemporaryDirectory() as tmp:
        if not sheets and (df["status"] == "succeeded").any():
            sheets = _draw_sheet(df, root, Path(tmp))
        for sheet in sheets:
            client.log_artifact(run_id, str(sheet), "sheet")
    for report in reports:
        if not report.is_file():
            raise ValidationError("report", str(report), "an HTML report file (from `zlab report`)")
        client.log_artifact(run_id, str(report), "report")
    picks = df[df["favourite"] | (df["rating"] > 0)]
    client.set_tag(run_id, "zlab.favourites", ",".join(picks.loc[picks["favourite"], "key"].astype(str))[:5000])


def _draw_sheet(df: pd.DataFrame, root: Path, folder: Path) -> list[Path]:
    from zlab.sheet import contact_sheet

    x, y, page = sheet_axes([c for c in varying_columns(df) if c not in BOOKKEEPING])
    return list(contact_sheet(df, x, y, page, root=root, stack=True).save(folder / "sheet.png"))
