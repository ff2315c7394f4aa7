"""What a run finds in its directory when it starts (or resumes): the seeds already drawn, each cell's
view for `zlab.core.runplan.decide` (an image counts only if it decodes), accepted jobs of cells no longer in
the sweep, and the summary's notes about what was found. Used by `zlab.runs.runner`.
"""

from __future__ import annotations

import collections
import json
import time

import pandas as pd

from zlab import errors
from zlab.api import jobs
from zlab.core import runplan
from zlab.core.runplan import Action, CellView
from zlab.core.table import request_from_row
from zlab.runs.ledger import Cache, LedgerRow, RunDir, intact_image
from zlab.runs.sweep import Cell, Sweep


def seeded(run: RunDir, sweep: Sweep) -> Sweep:
    """Seeds drawn for `-1` belong to the directory's slots and are drawn once, forever: editing the sweep
    (or running another one here and coming back) never redraws a seed a cell already used."""
    stored = run.ledger.seeds()
    if not stored:  # a directory from zlab 0.1 kept its draws in sweep.json only
        spec = run.read_spec() or {}
        if spec.get("fingerprint") == sweep.fingerprint:
            stored = [int(s) for s in spec.get("seed_draws", [])]
    needed = len(sweep.seed_draws)
    draws = [*stored[:needed], *sweep.seed_draws[len(stored) : needed]]
    run.ledger.keep_seeds(draws)
    return sweep.with_seed_draws(draws) if draws != list(sweep.seed_draws) else sweep


def view(run: RunDir, row: LedgerRow, cache: Cache | None, broken: list[str]) -> CellView:
    """What `decide` needs of one cell; an image counts only if it decodes (a cut-short file is noted in
    `broken` and fetched again by request id, or rendered again)."""
    state = row["status"]
    path = row["image_path"]
    has_image = False
    if state == "succeeded" and path and (run.root / path).is_file():
        has_image = intact_image(run.root / path)
        if not has_image:
            broken.append(row["key"])
    if not has_image:
        has_image = run.existing_image(row["key"]) is not None
    cached = cache is not None and not has_image and cache.lookup(row["key"]) is not None
    return CellView(state, has_image, cached, row.get("origin") or row.get("base_url"), bool(row.get("request_id")))


def integrity_notes(broken: list[str], actions: dict[str, Action], bad_cache: int) -> list[str]:
    notes = []
    refetch = sum(1 for key in broken if actions.get(key) == "collect")
    if refetch:
        notes.append(f"{refetch} image(s) in the run directory did not decode: fetched again by request id")
    if len(broken) > refetch:
        notes.append(f"{len(broken) - refetch} image(s) in the run directory did not decode: rendered again")
    if bad_cache:
        notes.append(f"{bad_cache} image(s) in the shared cache did not decode: not used, rendered again")
    return notes


def orphan(row: LedgerRow) -> Cell | None:
    """A cell of an earlier sweep in this directory whose job was accepted: still collected, never dropped."""
    try:
        request = request_from_row(json.loads(row["params"]))
    except (errors.ValidationError, KeyError, TypeError):
        return None
    return Cell(row["idx"] or 0, request, {}) if request.key == row["key"] else None


def notes(
    rows: dict[str, LedgerRow], keys: set[str], identity: str, orphans: list[Cell], actions: dict[str, Action]
) -> list[str]:
    notes = []
    elsewhere = collections.Counter(
        rows[k].get("origin") or rows[k].get("base_url") for k, action in actions.items() if action == "elsewhere"
    )
    for origin, n in elsewhere.items():
        notes.append(
            f"{n} accepted job(s) belong to the API at {origin}, not {identity}: set ZLAB_BASE_URL={origin} "
            "(with its token) and run the same command again to collect them; they were not resent"
        )
    if orphans:
        notes.append(f"collected {len(orphans)} accepted job(s) of cells no longer in this sweep (kept in the ledger)")
    others = [
        r for k, r in rows.items() if k not in keys and r["status"] == "accepted" and r["origin"] != runplan.BUILTIN
    ]
    if len(others) > len(orphans):
        notes.append(
            f"{len(others) - len(orphans)} accepted job(s) of cells no longer in this sweep belong to another API; "
            "they stay in the ledger"
        )
    return notes


def grace(row: LedgerRow) -> float:
    """Until when a 404 for a job accepted in an earlier run still means "not visible yet" (monotonic).

    A job an earlier run already failed to collect has had its chance to become visible: a 404 now is real
    (so a rerun does not wait out a minute for each expired id)."""
    if row["collect_attempts"]:
        return time.monotonic()
    try:
        accepted = pd.Timestamp(row["submitted_at"]).timestamp()
    except (TypeError, ValueError):
        return time.monotonic()
    return time.monotonic() + max(0.0, jobs.NOT_FOUND_GRACE_S - (time.time() - accepted))
