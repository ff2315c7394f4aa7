"""The results table's conventions, in one place: where a table's run directory is, which columns vary,
which axis a column prefers, and the picks (favourites and ratings) a person made in the gallery.

The columns themselves are `zlab.runs.ledger.RESULT_COLUMNS`; everything that reads a results table to show
it (sheets, the gallery, the builder, reports) asks this module rather than guessing.

>>> df = load_results("runs/tc")          # results.parquet + DIR/picks.json   # doctest: +SKIP
>>> df[df["favourite"]]                   # the cells starred in the gallery   # doctest: +SKIP
>>> sheet_axes(["seed", "size", "lora1_scale"])
('lora1_scale', 'seed', 'size')
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from zlab.api.download import write_atomic
from zlab.core.table import AXIS_PREFERENCE, RESULT_COLUMNS, axis_rank, sheet_axes, varying_columns
from zlab.errors import ValidationError

__all__ = [
    "AXIS_PREFERENCE",
    "PICKS_FILE",
    "axis_rank",
    "load_results",
    "open_results",
    "read_picks",
    "recorded_axes",
    "run_dir_of",
    "set_pick",
    "sheet_axes",
    "varying_columns",
    "with_picks",
    "write_results",
]

PICKS_FILE = "picks.json"  # DIR/picks.json: {key: {"favourite": bool, "rating": 0-5}}
PICKS_LOCK = ".zlab/picks.lock"  # held while one change is read, merged and written


# ---------------------------------------------------------------- finding a table and its directory


def run_dir_of(df: pd.DataFrame) -> Path | None:
    """The run directory a results table came from (``df.attrs["run_dir"]``, set by runs and loaders)."""
    root = df.attrs.get("run_dir")
    return Path(root) if root else None


def open_results(source: Any) -> tuple[pd.DataFrame, Path | None]:
    """(results DataFrame, run directory) from a run directory, its results.parquet, a RunResult or a
    DataFrame (whose ``attrs["run_dir"]`` says where its images are)."""
    if isinstance(source, pd.DataFrame):
        return source, run_dir_of(source)
    if hasattr(source, "df") and hasattr(source, "out"):  # a RunResult, without importing the runner
        # The directory's whole table (every cell it has: the sweep's and, say, a gallery's reruns);
        # a dry run's plan has no directory yet, so its own table.
        root = Path(source.out)
        if (root / "results.parquet").is_file():
            return open_results(root)
        return source.df, root
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        parquet = path if path.suffix == ".parquet" else path / "results.parquet"
        if not parquet.is_file():
            raise ValidationError(
                "run_dir",
                str(path),
                "a run directory containing results.parquet",
                "run a sweep into it first (client.run(sweep, out=...) or `zlab run`)",
            )
        df = pd.read_parquet(parquet)
        # The run directory is where the file is now, not where it was written (it may have moved).
        df.attrs["run_dir"] = str(parquet.parent)
        return df, parquet.parent
    raise ValidationError("source", type(source).__name__, "a run directory, a RunResult or a results DataFrame")


def load_results(source: Any) -> pd.DataFrame:
    """The results table with the gallery's picks merged in (`favourite`, `rating` columns)."""
    df, root = open_results(source)
    return with_picks(df, root)


def recorded_axes(axes: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A sweep's `axes`, then every other column the directory's ledger `rows` recorded (another sweep's
    axes, e.g. `size`): the columns of a table of every cell the directory has."""
    recorded = (name for row in rows for name in json.loads(row["params"]) if name not in RESULT_COLUMNS)
    return list(dict.fromkeys([*axes, *recorded]))


def write_results(df: pd.DataFrame, run_dir: str | os.PathLike[str]) -> Path:
    """Write `df` as ``run_dir/results.parquet`` atomically (picks stay in picks.json, not here)."""
    path = Path(run_dir) / "results.parquet"
    tmp = path.with_suffix(".parquet.part")
    df.drop(columns=[c for c in ("favourite", "rating") if c in df.columns]).to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- picks: favourites and ratings


def read_picks(run_dir: str | os.PathLike[str] | None) -> dict[str, dict[str, Any]]:
    """``{key: {"favourite": bool, "rating": int}}`` from ``run_dir/picks.json`` ({} when there is none)."""
    if run_dir is None:
        return {}
    try:
        data = json.loads((Path(run_dir) / PICKS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}
    picks = data.get("picks", {}) if isinstance(data, dict) else {}
    return {str(k): _clean_pick(v) for k, v in picks.items() if isinstance(v, dict)}


def _clean_pick(pick: Mapping[str, Any]) -> dict[str, Any]:
    rating = pick.get("rating") or 0
    rating = int(rating) if isinstance(rating, int | float) and 0 <= rating <= 5 else 0
    return {"favourite": bool(pick.get("favourite")), "rating": rating}


def set_pick(
    run_dir: str | os.PathLike[str], key: str, *, favourite: bool | None = None, rating: int | None = None
) -> dict[str, dict[str, Any]]:
    """Change one cell's pick and write picks.json atomically (a crash leaves the old file or the new one,
    never half of one); returns all picks. A pick with no star and no rating is removed.

    The read, the change and the write happen under an OS lock on the directory's picks, so two galleries
    (two kernels, or two threads) picking at once each change only their own cell and keep every other pick."""
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 5):
        raise ValidationError("rating", rating, "an integer from 0 (none) to 5")
    with _picks_locked(Path(run_dir)):
        return _change_pick(Path(run_dir), key, favourite, rating)


def _change_pick(run_dir: Path, key: str, favourite: bool | None, rating: int | None) -> dict[str, dict[str, Any]]:
    picks = read_picks(run_dir)
    pick = picks.get(key, {"favourite": False, "rating": 0})
    if favourite is not None:
        pick["favourite"] = bool(favourite)
    if rating is not None:
        pick["rating"] = rating
    if pick["favourite"] or pick["rating"]:
        picks[key] = pick
    else:
        picks.pop(key, None)
    body = json.dumps({"version": 1, "picks": dict(sorted(picks.items()))}, indent=1)
    write_atomic(run_dir / PICKS_FILE, body.encode())
    return picks


@contextlib.contextmanager
def _picks_locked(run_dir: Path) -> Iterator[None]:
    """Hold the directory's picks lock (blocking: a change takes milliseconds). `flock` excludes other
    processes and other open handles in this one alike, and the OS drops it when a process dies."""
    path = run_dir / PICKS_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: lock the first byte (msvcrt retries for ~10 s, then raises)
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def with_picks(df: pd.DataFrame, run_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """A copy of `df` with `favourite` (bool) and `rating` (0-5, 0 = unrated) from the run's picks.json."""
    picks = read_picks(run_dir if run_dir is not None else run_dir_of(df))
    keys = df["key"] if "key" in df.columns else pd.Series([None] * len(df), index=df.index)
    out = df.copy()
    out["favourite"] = [bool(picks.get(k, {}).get("favourite")) for k in keys]
    out["rating"] = [int(picks.get(k, {}).get("rating", 0)) for k in keys]
    return out
