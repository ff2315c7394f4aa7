"""Run directories into experiment trackers, where runs are kept and compared side by side.

>>> from zlab.export import to_mlflow
>>> to_mlflow("runs/lora-scale", tracking_uri="sqlite:///mlflow.db")   # doctest: +SKIP
'5f0c…'   # the MLflow run; exporting the directory again updates that same run

Each tracker is an optional extra (`pip install "zlab[mlflow]"`) imported only when an export runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["to_mlflow"]


def to_mlflow(source: Any, **options: Any) -> str:
    """Export a run directory (or a RunResult, or a results DataFrame that knows its directory) to MLflow;
    see `zlab.export.mlflow.to_mlflow`."""
    from zlab.export.mlflow import to_mlflow as export

    return export(source, **options)
