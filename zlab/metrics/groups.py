"""Which rows of a results table go together: each image's no-LoRA baseline, and its group across seeds. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

PARAMS = ("prompt", "width", "height")


def _lora_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("lora") and (c.endswith("_path") or c.endswith("_scale"))]


def _norm(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def is_baseline(row: pd.Series) -> bool:
    """No LoRA at all, or every LoRA at scale 0 (the same image)."""
    scales = [_norm(row[c]) for c in row.index if c.startswith("lora") and c.endswith("_scale")]
    return all(s is None or s == 0 for s in scales)


def baseline_rows(df: pd.DataFrame) -> list[int | None]:
    """For each row (by position), the position of its baseline: same prompt, seed and size, no LoRA (preferred)
    or every LoRA at scale 0, and an image; None where the table has none."""
    found: dict[tuple[Any, ...], int] = {}
    for i in range(len(df)):
        row = df.iloc[i]
        if not is_baseline(row) or not _norm(row.get("image_path")):
            continue
        key = tuple(_norm(row[c]) for c in (*PARAMS, "seed"))
        no_lora = all(_norm(row[c]) is None for c in df.columns if c.startswith("lora") and c.endswith("_path"))
        if key not in found or no_lora:
            found[key] = i
    return [found.get(tuple(_norm(df.iloc[i][c]) for c in (*PARAMS, "seed"))) for i in range(len(df))]


def seed_groups(df: pd.DataFrame) -> list[list[int]]:
    """Rows (by position) equal in prompt, size and LoRAs, differing only in seed: the groups seed variety is over."""
    columns = [c for c in (*PARAMS, *_lora_columns(df)) if c in df.columns]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i in range(len(df)):
        groups.setdefault(tuple(_norm(df.iloc[i][c]) for c in columns), []).append(i)
    return list(groups.values())


def mean_pairwise_distance(vectors: Sequence[np.ndarray]) -> float:
    """Mean of 1 − cosine over every pair of unit vectors (NaN for fewer than two)."""
    if len(vectors) < 2:
        return float("nan")
    m = np.stack(vectors)
    sims = m @ m.T
    n = len(vectors)
    return float((n * n - sims.sum()) / (n * (n - 1)))  # the diagonal's ones cancel n of the n² terms
