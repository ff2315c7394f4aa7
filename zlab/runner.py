"""Runs a sweep: concurrent jobs, adaptive polling, progress, resume, and a clean stop on Ctrl-C.

Every cell goes through the ledger (`zlab.store`): recorded before its submit is sent, its request id
recorded the moment it is known (the submit-and-record step is shielded from cancellation, so Ctrl-C
cannot split them), its image written atomically before it counts as done. On Ctrl-C the jobs still
queued at the server are cancelled (nothing billed) and running ones stay recorded, so a rerun
collects them. A failed cell never stops the sweep; its error is recorded and a rerun sends it again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from zlab import errors
from zlab.download import decode_image, fetch, image_suffix
from zlab.follow import Signal, follow
from zlab.polling import Track
from zlab.protocol import Outcome
from zlab.sheet.thumbs import prime
from zlab.store import OPEN_STATES, Cache, RunDir, now_iso, results_frame
from zlab.sweep import SECONDS_PER_IMAGE, Cell, Estimate, Sweep

if TYPE_CHECKING:
    from zlab.client import AsyncClient

CANCEL_DEADLINE_S = 8.0
THUMB_WIDTH = 256  # contact_sheet's default cell width


@dataclasses.dataclass
class RunResult:
    """What a run left behind: the results DataFrame (also in `out/results.parquet`) and its tallies."""

    df: pd.DataFrame
    out: Path
    counts: dict[str, int]
    elapsed_s: float
    estimate: Estimate
    calls: dict[str, int]
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and self.counts.get("succeeded", 0) == len(self.df)

    def summary(self) -> str:
        tallies = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        calls = sum(self.calls.values())
        stop = " (interrupted: rerun to resume)" if self.interrupted else ""
        line = (
            f"zlab: {len(self.df)} cells: {tallies} in {self.elapsed_s:.1f} s, {calls} API calls, "
            f"≈${self.estimate.cost_usd:.2f} estimated; results in {self.out}{stop}"
        )
        if unknown := self.counts.get("unknown"):
            line += (
                f"\nzlab: {unknown} cell(s) have an unknown submit outcome (they may have been billed): "
                "rerun with --retry-unknown (retry_unknown=True) to send them again"
            )
        return line

    def __repr__(self) -> str:
        return f"<RunResult {self.summary()}>"


def default_cache_dir() -> Path:
    base = os.environ.get("ZLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "zlab"
    )
    return Path(base)


class _Progress:
    """Counts by state, shown with tqdm (a widget in notebooks, a text bar in terminals)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.bar = None
        if enabled and not os.environ.get("ZLAB_REPORT"):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", desc="zlab", file=sys.stderr, dynamic_ncols=True)

    def move(self, old: str | None, new: str, finished: bool = False) -> None:
        if old:
            self.counts[old] -= 1
        self.counts[new] += 1
        if self.bar is not None:
            shown = {k: v for k, v in self.counts.items() if v and k in ("succeeded", "failed", "queued", "running")}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1) if finished else self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def run_sweep(
    client: AsyncClient,
    sweep: Sweep,
    out: str | Path,
    *,
    concurrency: int = 8,
    budget: float | None = None,
    dry_run: bool = False,
    progress: bool = True,
    retry_unknown: bool = False,
    cache: bool | str | Path = True,
    cell_timeout: float = 1800.0,
    sheet: bool = True,
    echo: Callable[[str], None] | None = None,
) -> RunResult:
    """Run (or resume) `sweep` into the run directory `out`. See the module docstring for guarantees."""
    say = echo or (lambda line: print(line, file=sys.stderr))
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 256:
        raise errors.ValidationError("concurrency", concurrency, "an integer from 1 to 256")
    started = time.monotonic()
    price = client.settings.price_per_mp
    seconds = client.pacer.run_s or SECONDS_PER_IMAGE
    if dry_run:
        estimate = sweep.estimate(concurrency, price_per_mp=price, seconds_per_image=seconds)
        say(f"zlab: plan: {estimate} (dry run: nothing sent)")
        plan = sweep.plan(concurrency, price_per_mp=price).assign(status="planned")
        return RunResult(plan, Path(out), {"planned": len(plan)}, 0.0, estimate, {})

    run = RunDir(out)
    try:
        sweep = _reuse_seed_draws(run, sweep)
        cells = sweep.cells()
        ledger = run.ledger
        ledger.add((c.key, c.index, c.row(), c.request.megapixels * price) for c in cells)
        if recovered := ledger.recover():
            say(f"zlab: {recovered} cell(s) were being submitted when the last run stopped; their outcome is unknown")
        run.write_spec(sweep.to_dict())
        rows = {row["key"]: row for row in ledger.rows()}
        if retry_unknown:
            for key in [k for k, r in rows.items() if r["status"] == "unknown"]:
                ledger.update(key, status="planned")
                rows[key]["status"] = "planned"
        todo = [c for c in cells if not _finished(run, rows[c.key])]
        shared = _open_cache(client, cache)
        unsent = [c for c in todo if rows[c.key]["status"] in OPEN_STATES]
        to_pay = [c for c in unsent if shared is None or shared.lookup(c.key) is None]
        estimate = sweep.estimate(concurrency, price_per_mp=price, seconds_per_image=seconds, cells=to_pay)
        say(
            f"zlab: plan: {len(cells)} cells, {len(cells) - len(todo)} already done, "
            f"{len(unsent) - len(to_pay)} from the cache, {len(todo) - len(unsent)} to collect, to send: {estimate}"
        )
        if budget is not None and estimate.cost_usd > budget:
            raise errors.BudgetExceeded(
                f"the sweep is estimated at ${estimate.cost_usd:.2f} for {len(to_pay)} new images, over the "
                f"budget of ${budget:.2f}: shrink the sweep or raise --budget",
                estimate_usd=estimate.cost_usd,
                budget_usd=budget,
            )
        calls_before = collections.Counter(client.api.calls)
        state = _RunState(
            client,
            run,
            sweep,
            concurrency,
            cell_timeout,
            shared,
            _Progress(len(cells), len(cells) - len(todo), progress),
        )
        waiting = {c.key for c in todo}
        for cell in cells:
            status = rows[cell.key]["status"]
            shown = ("running" if status == "accepted" else "queued") if cell.key in waiting else status
            state.progress.counts[shown] += 1
        interrupted = False
        try:
            await state.run_all(todo, rows)
        except (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await state.stop(say)
        finally:
            state.progress.close()
        keys = {c.key for c in cells}  # this sweep's cells only, even if the directory saw others before
        df = results_frame([r for r in ledger.rows() if r["key"] in keys], extra_columns=list(sweep.axes))
        df.attrs["run_dir"] = str(run.root)
        run.write_results(df)
        counts = dict(collections.Counter(df["status"]))
        calls = dict(collections.Counter(client.api.calls) - calls_before)
        result = RunResult(df, run.root, counts, time.monotonic() - started, estimate, calls, interrupted)
        say(result.summary())
        if interrupted:  # end cancelled, as asyncio expects; asyncio.run turns it into KeyboardInterrupt
            raise asyncio.CancelledError
        if sheet and sweep.sheet and counts.get("succeeded"):
            _draw_sheet(run, df, sweep.sheet, say)
        return result
    finally:
        run.close()


def _reuse_seed_draws(run: RunDir, sweep: Sweep) -> Sweep:
    stored = run.read_spec()
    if (
        stored
        and stored.get("fingerprint") == sweep.fingerprint
        and len(stored.get("seed_draws", [])) == len(sweep.seed_draws)
    ):
        return sweep.with_seed_draws(stored["seed_draws"])
    return sweep


def _finished(run: RunDir, row: dict[str, Any]) -> bool:
    if row["status"] != "succeeded":
        return row["status"] == "unknown"  # not resent unless asked (it may have been paid for)
    return bool(row["image_path"]) and (run.root / row["image_path"]).is_file()


def _open_cache(client: AsyncClient, cache: bool | str | Path) -> Cache | None:
    if cache is False:
        return None
    root = default_cache_dir() if cache is True else Path(cache)
    # The auto-started local server's port changes every time; its synthetic images do not.
    identity = "zlab-local-synthetic" if client._server is not None else client.base_url
    return Cache(root, f"{identity}|{client.model}")


def _draw_sheet(run: RunDir, df: pd.DataFrame, spec: dict[str, Any], say: Callable[[str], None]) -> None:
    try:
        from zlab.sheet import contact_sheet

        paths = contact_sheet(df, root=run.root, **spec).save(run.root / "sheet.png")
        say(f"zlab: contact sheet: {', '.join(str(p) for p in paths)}")
    except (errors.ZlabError, TypeError) as exc:
        say(f"zlab: no contact sheet drawn: {exc}")


class _RunState:
    """The moving parts of one run (kept together so each step stays short)."""

    def __init__(
        self,
        client: AsyncClient,
        run: RunDir,
        sweep: Sweep,
        concurrency: int,
        cell_timeout: float,
        cache: Cache | None,
        progress: _Progress,
    ) -> None:
        self.client, self.api, self.run, self.sweep = client, client.api, run, sweep
        self.ledger = run.ledger
        self.slots = asyncio.Semaphore(concurrency)
        self.cell_timeout, self.cache, self.progress = cell_timeout, cache, progress
        self.signal = Signal()
        self.tracks: dict[str, Track] = {}
        self.submits: set[asyncio.Task[Any]] = set()

    def running_starts(self) -> list[float]:
        return [t.started for t in self.tracks.values() if t.phase == "running" and t.started is not None]

    async def run_all(self, todo: list[Cell], rows: dict[str, dict[str, Any]]) -> None:
        # Cells already accepted go first: they are running at the server and only need collecting.
        todo = sorted(todo, key=lambda c: rows[c.key]["status"] != "accepted")
        async with asyncio.TaskGroup() as group:
            for cell in todo:
                group.create_task(self.cell(cell, rows[cell.key]))

    async def cell(self, cell: Cell, row: dict[str, Any]) -> None:
        key, status = cell.key, row["status"]
        if status in OPEN_STATES and self._from_cache(cell):
            return
        async with self.slots:
            request_id = row["request_id"] if status in ("accepted", "succeeded") else None
            if request_id is None:
                request_id = await self._submit(cell)
                if request_id is None:
                    return
            outcome = await self._follow(key, request_id, fresh=status != "accepted")
        if outcome is not None:
            await self._finish(cell, request_id, outcome)

    def _from_cache(self, cell: Cell) -> bool:
        found = self.cache.lookup(cell.key) if self.cache else None
        if found is None or self.cache is None:
            return False
        source, info = found
        target = self.run.image_file(cell.key, source.suffix)
        self.cache.copy_to(source, target)
        self.ledger.update(
            cell.key,
            status="succeeded",
            cached=1,
            cost_usd=0.0,
            error=None,
            image_path=str(target.relative_to(self.run.root)),
            **{
                k: info.get(k)
                for k in ("request_id", "image_url", "submitted_at", "finished_at", "queue_s", "run_s", "base_url")
            },
        )
        self.progress.move("queued", "succeeded", finished=True)
        return True

    async def _submit(self, cell: Cell) -> str | None:
        """Record, send, record: shielded, so an interrupt cannot fall between the answer and the record."""
        key = cell.key
        self.ledger.mark_submitting(key, self.api.base_url)

        async def send_and_record() -> str:
            submitted = await self.api.submit(self.client.model, cell.request.to_input())
            self.ledger.update(key, status="accepted", request_id=submitted.request_id)
            return submitted.request_id

        task = asyncio.ensure_future(send_and_record())
        self.submits.add(task)
        task.add_done_callback(self.submits.discard)
        self.tracks[key] = Track(time.monotonic())
        try:
            request_id = await asyncio.shield(task)
        except errors.SubmitUnknownError as exc:
            self._record(key, "queued", "unknown", str(exc))
            return None
        except errors.ZlabError as exc:
            self._record(key, "queued", "failed", str(exc))
            return None
        self.tracks[key].submitted = time.monotonic()
        return request_id

    async def _follow(self, key: str, request_id: str, fresh: bool) -> Outcome | None:
        track = self.tracks.setdefault(key, Track(time.monotonic()))
        if fresh:
            self.progress.move("queued", "running")
        try:
            return await follow(
                self.api,
                request_id,
                track,
                self.client.pacer,
                deadline=time.monotonic() + self.cell_timeout,
                running_starts=self.running_starts,
                signal=self.signal,
            )
        except errors.NotFoundError as exc:  # the id expired or vanished: its result cannot be collected
            self.tracks.pop(key, None)
            self._record(key, "running", "failed", f"{exc}; a rerun sends this cell again")
        except errors.ZlabError as exc:  # still accepted: a rerun polls it again, never resubmits
            self.tracks.pop(key, None)
            self.ledger.update(key, error=f"not collected yet: {exc}")
            self.progress.move("running", "pending", finished=True)
        return None

    async def _finish(self, cell: Cell, request_id: str, outcome: Outcome) -> None:
        key = cell.key
        track = self.tracks.pop(key, None)
        times: dict[str, Any] = {"finished_at": outcome.finished_at.isoformat() if outcome.finished_at else now_iso()}
        if track is not None:
            queue_s = max(0.0, (track.started or track.submitted) - track.submitted)
            span = (
                (outcome.finished_at - outcome.created_at).total_seconds()
                if outcome.created_at and outcome.finished_at
                else None
            )
            times.update(queue_s=queue_s, run_s=None if span is None else max(0.0, span - queue_s))
        if outcome.phase == "failed":
            self._record(
                key, "running", "failed", "the job failed on the server: " + json.dumps(outcome.error), **times
            )
            return
        if outcome.phase == "cancelled":
            self._record(key, "running", "cancelled", "the job was cancelled", **times)
            return
        url = outcome.outputs[0]
        try:
            data = await fetch(self.api.http, url, retry=self.api.retry)
            image = decode_image(data, expected_size=(cell.request.width, cell.request.height), url=url)
        except errors.DownloadError as exc:
            final = "failed" if not exc.transient else "accepted"  # transient: a rerun collects it again
            self._record(key, "running", final, str(exc), image_url=url)
            return
        metadata = {
            "zlab:request": cell.request.canonical_json(self.client.model),
            "zlab:sweep": json.dumps(self.sweep.to_dict(), default=str),
            "zlab:request_id": request_id,
        }
        path = await asyncio.to_thread(self.run.save_image, key, data, image_suffix(data), metadata)
        # The image is decoded already (to check it): cache its thumbnail now, so the first sheet is fast.
        await asyncio.to_thread(prime, self.run.root / path, image, THUMB_WIDTH, self.run.root)
        self._record(key, "running", "succeeded", None, image_path=path, image_url=url, **times)
        if self.cache is not None:
            row = self.ledger.get(key) or {}
            await asyncio.to_thread(
                self.cache.put,
                key,
                self.run.root / path,
                {
                    k: row.get(k)
                    for k in ("request_id", "image_url", "submitted_at", "finished_at", "queue_s", "run_s", "base_url")
                },
            )

    def _record(self, key: str, shown: str, status: str, error: str | None, **fields: Any) -> None:
        self.ledger.update(key, status=status, error=error, **fields)
        self.progress.move(shown, "pending" if status == "accepted" else status, finished=True)

    async def stop(self, say: Callable[[str], None]) -> None:
        """After an interrupt: let in-flight submits record their ids, then cancel what is still queued."""
        if self.submits:
            await asyncio.wait(self.submits, timeout=CANCEL_DEADLINE_S)
        open_jobs = [r for r in self.ledger.rows() if r["status"] == "accepted" and r["request_id"]]

        async def cancel(row: dict[str, Any]) -> bool:
            try:
                outcome = await self.api.cancel(row["request_id"])
            except errors.ZlabError:
                return False
            if outcome == "cancelled":
                self.ledger.update(row["key"], status="cancelled", error="cancelled by the user (Ctrl-C) while queued")
            return outcome == "cancelled"

        done, _ = await asyncio.wait(
            [asyncio.ensure_future(cancel(r)) for r in open_jobs] or [asyncio.ensure_future(asyncio.sleep(0))],
            timeout=CANCEL_DEADLINE_S,
        )
        cancelled = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result() is True)
        say(
            f"zlab: interrupted: {cancelled} queued job(s) cancelled, {len(open_jobs) - cancelled} running job(s) "
            "recorded; run the same command again to collect them"
        )
