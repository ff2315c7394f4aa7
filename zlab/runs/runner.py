"""Runs a sweep: the ledger, the concurrency, progress, resume and a clean stop around the one money path.

Each cell's job goes through `zlab.api.jobs` (`send`, `wait`, `collect`), exactly as `Client.generate`'s
does; what to do with each cell, and where it goes after each event, is decided by the pure
`zlab.core.runplan`. This module adds the run directory (one writer at a time, its ledger written before
each POST leaves), the shared cache, progress, the summary, and the stop on Ctrl-C: jobs still queued
at the server are cancelled (nothing billed) and running ones stay recorded, so a rerun collects them.
No cell's trouble stops the sweep: a failed job, a lost download or a full disk is recorded on that
cell; only a refused token or an empty balance stops the sending (accepted jobs are still collected).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Unpack

from zlab import errors
from zlab.api import jobs
from zlab.api.loop import say as _say
from zlab.core import runplan
from zlab.core.concurrency import Concurrency, Limiter, parse_concurrency
from zlab.core.config import cache_root
from zlab.core.polling import Track
from zlab.core.pricing import final_cost
from zlab.core.runplan import Action, Next, Stop
from zlab.core.status import BarState, CellState, bar_finished, bar_state, bar_state_at_service, is_paid
from zlab.runs import resume
from zlab.runs.ledger import Cache, CellFields, LedgerRow, RunDir, intact_image, now_iso, results_frame
from zlab.runs.progress import Progress
from zlab.runs.result import RunResult, paid_for
from zlab.runs.sweep import SECONDS_PER_IMAGE, Cell, Sweep
from zlab.runs.tables import recorded_axes

if TYPE_CHECKING:
    from PIL import Image

    from zlab.api.download import Downloader
    from zlab.api.http import API
    from zlab.core.polling import Pacer
    from zlab.core.pricing import Pricing


class Service(Protocol):
    """What a run needs of its client (`zlab.AsyncClient` is one): the API, downloads, the shared pacer, prices."""

    api: API
    downloads: Downloader
    pacer: Pacer
    model: str

    @property
    def identity(self) -> str: ...

    @property
    def builtin(self) -> bool: ...

    async def pricing(self) -> Pricing: ...


CANCEL_DEADLINE_S = jobs.CANCEL_DEADLINE_S
# A cell's facts the shared cache keeps beside its image, and copies into the ledger of a run that reuses it.
_CACHED = ("request_id", "image_url", "submitted_at", "finished_at", "queue_s", "run_s", "base_url", "image_width",
           "image_height", "note")  # fmt: skip


async def run_sweep(
    client: Service,
    sweep: Sweep,
    out: str | Path,
    *,
    concurrency: int | str = "auto",
    budget: float | None = None,
    dry_run: bool = False,
    progress: bool = True,
    retry_unknown: bool = False,
    resend_lost: bool = False,
    cache: bool | str | Path = True,
    cell_timeout: float = 1800.0,
    on_image: Callable[[Path, Path, Image.Image], None] | None = None,
    echo: Callable[[str], None] | None = None,
    wait: float = 0.0,
    on_interrupt: Literal["raise", "return"] = "raise",
) -> RunResult:
    """Run (or resume) `sweep` into the run directory `out`. See the module docstring for guarantees.

    `cell_timeout` counts from each cell's submit (a job still queued then is cancelled); `wait` is how
    long to wait for another run that holds the directory; `on_interrupt="return"` ends an interrupted
    run with its result (`interrupted=True`) instead of re-raising the cancellation.
    """
    say = echo or _say
    concurrency = parse_concurrency(concurrency)  # "auto": what runs at the service + as many queued
    if not isinstance(cell_timeout, int | float) or not (0 < cell_timeout < math.inf):
        raise errors.ValidationError("cell_timeout", cell_timeout, "a number of seconds > 0")
    runplan.check_budget(0.0, budget, 0)  # a budget that is no number fails here, before anything
    started = time.monotonic()
    learned = client.pacer.estimate(sweep.base.megapixels)  # what this client has seen, else a working guess
    seconds = learned.seconds if learned is not None else SECONDS_PER_IMAGE
    if dry_run:
        price = await client.pricing()
        estimate = sweep.estimate(concurrency, pricing=price, seconds_per_image=seconds)
        say(f"zlab: plan: {estimate} at {price} (dry run: nothing sent)")
        plan = sweep.plan(concurrency, pricing=price).assign(status="planned")
        return RunResult(plan, Path(out), {"planned": len(plan)}, 0.0, estimate, {})

    fresh = not Path(out).exists()  # a run refused by its budget leaves no directory it made behind
    run = RunDir(out, wait_s=wait)
    refused = False
    try:
        sweep = resume.seeded(run, sweep)
        cells = sweep.cells()
        ledger = run.ledger
        ledger.add((c.key, c.index, c.row(), None) for c in cells)  # costs below, once the price is known
        if recovered := ledger.recover():
            say(f"zlab: {recovered} cell(s) were being submitted when the last run stopped; their outcome is unknown")
        rows = {row["key"]: row for row in ledger.rows()}
        shared = _open_cache(client, cache)
        broken: list[str] = []
        actions = {
            c.key: runplan.decide(
                resume.view(run, rows[c.key], shared, broken), identity=client.identity, retry_unknown=retry_unknown,
                resend_lost=resend_lost,
            )
            for c in cells
        }  # fmt: skip
        keys = {c.key for c in cells}
        orphans = [
            resume.orphan(row) for row in rows.values() if row["key"] not in keys and row["status"] == "accepted"
        ]
        collectable = [c for c in orphans if c is not None and rows[c.key]["origin"] == client.identity]
        to_send = [c for c in cells if actions[c.key] == "send"]
        unpriced = [c for c in cells if rows[c.key]["cost_usd"] is None]
        # The price is asked only when something is new or to be sent: a finished sweep's rerun sends nothing.
        pricing = await client.pricing() if to_send or unpriced else None
        if pricing is not None and unpriced:
            ledger.set_costs((c.key, pricing.cost(c.request)) for c in unpriced)
        estimate = sweep.estimate(concurrency, pricing=pricing, seconds_per_image=seconds, cells=to_send)
        refused = True  # until the budget allows the run
        runplan.check_budget(estimate.cost_usd, budget, len(to_send))
        refused = False
        with contextlib.suppress(OSError):  # for people only; resume does not need it
            run.write_spec(sweep.to_dict())
        tally = collections.Counter(actions.values())
        say(
            f"zlab: plan: {len(cells)} cells, {tally['done']} already done, {tally['reuse']} found in the run "
            f"directory, {tally['cache']} from the cache, {tally['collect']} to collect"
            + (f", {tally['hold'] + tally['elsewhere']} held" if tally["hold"] + tally["elsewhere"] else "")
            + f", to send: {estimate}"
            + (f" at {pricing}" if pricing is not None and to_send else "")
        )
        calls_before = collections.Counter(client.api.calls)
        words_before = {word: set(ids) for word, ids in client.api.unknown_words.items()}
        state = _RunState(client, run, sweep, concurrency, cell_timeout, shared)
        state.on_image = on_image
        state.progress = Progress(len(cells), tally["done"], progress)
        interrupted = False
        try:
            await state.run_all([(c, actions[c.key]) for c in cells] + [(c, "collect") for c in collectable])
        except (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await state.stop(say)
        finally:
            state.progress.close()
        every = ledger.rows()
        final = [r for r in every if r["key"] in keys]  # this sweep's cells: its view of the directory
        every = [r for r in every if r["key"] in keys or r["status"] != "planned"]  # others' unsent: no result
        columns = [*sweep.axes, *sweep.derived_columns]
        df = results_frame(final, extra_columns=columns)
        df.attrs["run_dir"] = str(run.root)
        try:  # results.parquet holds every cell the ledger has (other sweeps', reruns'): it never shrinks
            run.write_results(results_frame(every, extra_columns=recorded_axes(columns, every)))
        except OSError as exc:
            say(f"zlab: could not write {run.results}: {exc}; the ledger keeps every result, rerun to write it")
        counts = dict(collections.Counter(df["status"]))
        calls = dict(collections.Counter(client.api.calls) - calls_before)
        notes = resume.notes(rows, keys, client.identity, collectable, actions)
        notes += resume.integrity_notes(broken, actions, state.bad_cache)
        for word, ids in client.api.unknown_words.items():
            if new_ids := ids - words_before.get(word, set()):
                notes.append(
                    f"the service said {word!r} for {len(new_ids)} job(s), a status zlab does not know: "
                    "followed as still going, within the normal bounds"
                )
        reasons = runplan.tally_reasons((r["status"], r["reason"]) for r in final)
        result = RunResult(
            df, run.root, counts, time.monotonic() - started, estimate, calls, interrupted, state.stopped, reasons,
            tuple(notes), tuple(state.paid), paid_for(every),
        )  # fmt: skip
        say(result.summary())
        if interrupted and on_interrupt == "raise":  # end cancelled, as asyncio expects
            raise asyncio.CancelledError
        return result
    finally:
        run.close()
        if refused and fresh:
            shutil.rmtree(run.root, ignore_errors=True)


def _open_cache(client: Service, cache: bool | str | Path) -> Cache | None:
    if cache is False:
        return None
    root = cache_root() if cache is True else Path(cache)
    # The auto-started local server's port changes every time; its synthetic images do not.
    identity = "zlab-local-synthetic" if client.builtin else client.api.base_url
    return Cache(root, f"{identity}|{client.model}")


class _RunState:
    """The moving parts of one run (kept together so each step stays short)."""

    def __init__(
        self,
        client: Service,
        run: RunDir,
        sweep: Sweep,
        concurrency: Concurrency,
        cell_timeout: float,
        cache: Cache | None,
    ) -> None:
        self.client, self.api, self.run, self.sweep = client, client.api, run, sweep
        self.ledger = run.ledger
        self.slots = Limiter(concurrency, self._at_service)  # woken by each phase change the pacer sees
        self.cell_timeout, self.cache = cell_timeout, cache
        self.on_image: Callable[[Path, Path, Image.Image], None] | None = None
        self.progress = Progress(0, 0, False)
        self.endpoint = jobs.Endpoint(client.api, client.downloads, client.pacer)
        self.tracks: dict[str, Track] = {}
        self.ids: dict[str, str] = {}  # request ids heard in this run, kept even if the ledger could not take them
        self.bad_cache = 0
        self.inflight: set[asyncio.Task[Any]] = set()
        self.stopped: Stop | None = None
        self.shown: dict[str, BarState] = {}
        self.paid: list[tuple[float, str]] = []  # (cost, its source) of each image generated in this run
        self.sweep_json = json.dumps(sweep.to_dict(), default=str)

    def _show(self, key: str, state: BarState, finished: bool = False) -> None:
        """Move one cell's place on the progress bar (each cell is counted in exactly one state)."""
        self.progress.move(self.shown.get(key), state, finished)
        self.shown[key] = state

    async def run_all(self, work: list[tuple[Cell, Action]]) -> None:
        # Cells already accepted go first: they are running at the server and only need collecting.
        work = sorted(work, key=lambda item: item[1] != "collect")
        for cell, action in work:
            if action not in ("done", "hold", "elsewhere"):
                self._show(cell.key, "waiting")
        watcher = asyncio.ensure_future(self._watch_phases())
        self.client.pacer.listeners.append(self.slots.wake)
        try:
            async with asyncio.TaskGroup() as group:
                for cell, action in work:
                    if action not in ("done", "hold", "elsewhere"):
                        group.create_task(self.cell(cell, action))
        finally:
            watcher.cancel()
            self.client.pacer.listeners.remove(self.slots.wake)

    def _at_service(self) -> tuple[int, int, int]:
        """This run's jobs running at the service, being collected, and running past their expected end."""
        now, tracks = time.monotonic(), self.tracks.values()
        overdue = sum(self.client.pacer.overdue(t, now) for t in tracks)
        return sum(t.phase == "running" for t in tracks) - overdue, sum(t.phase == "finished" for t in tracks), overdue

    async def _watch_phases(self) -> None:
        """Show each accepted job as queued or running at the server, as its poller last saw it."""
        while True:
            await asyncio.sleep(0.25)
            for key, track in list(self.tracks.items()):
                shown, seen = self.shown.get(key), bar_state_at_service(track.phase)
                if shown in ("queued", "running") and seen is not None and seen != shown:
                    self._show(key, seen)

    async def cell(self, cell: Cell, action: Action) -> None:
        try:
            if action == "reuse":
                self._reuse(cell)
            elif action == "cache" and self._from_cache(cell):
                return
            elif action == "collect":
                row = self.ledger.get(cell.key)
                if row is None:
                    raise LookupError(f"the ledger holds no cell {cell.key}")
                async with self.slots:
                    again = await self._job(cell, row["request_id"], grace_until=resume.grace(row))
                if again:  # found cancelled at the server: nothing was billed, so it is sent again
                    await self._send(cell, resends=1)
            elif action in ("send", "cache"):
                await self._send(cell)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a local failure (disk full, cache, ledger): recorded on the cell, sweep goes on
            self._local_error(cell.key, exc)

    async def _send(self, cell: Cell, resends: int = 0) -> None:
        """Send (and, if found cancelled at the server, send once more), then follow and collect."""
        while not self.stopped:
            async with self.slots:
                if self.stopped:
                    return
                again = await self._job(cell, None, resends=resends)
            if not again:
                return
            resends += 1

    async def _job(
        self, cell: Cell, request_id: str | None, *, resends: int = 0, grace_until: float | None = None
    ) -> bool:
        """One cell's job through the one job path (`jobs.run_job`: a new one when `request_id` is None), with
        this run's ledger, progress and tracks as its hooks; True when it was found cancelled (send it again).

        The deadline counts from the submit (a job resumed from an earlier run: from now)."""
        key = cell.key
        identity, base_url = self.client.identity, self.api.base_url

        def sending() -> None:
            self.ledger.mark_submitting(key, base_url, identity)  # committed at the wire, before the body leaves
            self.ids.pop(key, None)

        def accepted(new_id: str) -> None:
            self.ids[key] = new_id  # kept in memory first: a failed write below is tried again
            self.ledger.update(key, status="accepted", request_id=new_id)

        def unsent() -> None:  # refused before any job existed: a crash now costs nothing
            self.ledger.update(key, status="planned")

        def following(track: Track) -> None:
            self.tracks[key] = track
            self._show(key, "queued")

        if request_id is not None:
            self.ids[key] = request_id
        hooks = jobs.Hooks(sending, accepted, unsent, following, self.inflight)
        try:
            result = await jobs.run_job(
                self.endpoint, self.client.model, cell.request, timeout=self.cell_timeout, hooks=hooks,
                request_id=request_id, grace_until=grace_until,
            )  # fmt: skip
            if isinstance(result, jobs.Generation):
                await self._save(cell, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if key not in self.ids:  # never accepted: the submit's failure
                self._apply(key, runplan.after_submit_error(exc))
            else:
                self._apply(key, runplan.after_collect_error(exc, self._collect_attempts(key)))
            return False
        finally:
            self.tracks.pop(key, None)
        if isinstance(result, jobs.TimedOut):
            cancelled = result.cancel == "cancelled"
            self._apply(key, runplan.after_collect_error(result.error, 0, timed_out_cancelled=cancelled))
        elif isinstance(result, jobs.Ended):
            nxt = runplan.after_outcome(result.outcome.phase, result.outcome.error, resends)
            finished = result.outcome.finished_at
            self._apply(key, nxt, finished_at=finished.isoformat() if finished else now_iso(),
                        queue_s=result.queue_s, run_s=result.run_s)  # fmt: skip
            return nxt.state == "planned"
        return False

    async def _save(self, cell: Cell, gen: jobs.Generation) -> None:
        key = cell.key
        metadata = {
            "zlab:request": cell.request.canonical_json(self.client.model),
            "zlab:sweep": self.sweep_json,
            "zlab:request_id": gen.request_id,
        }
        path = await asyncio.to_thread(self.run.save_image, key, gen.data, gen.suffix, metadata)
        if self.on_image is not None:  # e.g. the client caches the thumbnail of the image it has decoded already
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.on_image, self.run.root, self.run.root / path, gen.image)
        row = self.ledger.get(key)
        estimate = (row["cost_usd"] if row is not None else None) or 0.0
        cost, source = final_cost(gen.cost_usd, estimate)
        width, height = gen.size
        fields: CellFields = {
            "image_path": path, "image_url": gen.url, "cost_usd": cost, "cost_source": source,
            "image_width": width, "image_height": height, "note": gen.note,
            "backend": json.dumps(gen.backend) if gen.backend else None,
            "finished_at": gen.finished_at.isoformat() if gen.finished_at else now_iso(),
            "queue_s": gen.queue_s, "run_s": gen.run_s,
        }  # fmt: skip
        self._apply(key, Next("succeeded"), **fields)
        self.paid.append((cost, source))
        if self.cache is not None:
            saved = self.ledger.get(key)
            info = {k: saved.get(k) for k in _CACHED} if saved is not None else {}
            with contextlib.suppress(OSError):  # a convenience: a full or read-only cache never fails a cell
                await asyncio.to_thread(self.cache.put, key, self.run.root / path, info)

    def _reuse(self, cell: Cell) -> None:
        path = self.run.existing_image(cell.key)
        assert path is not None
        self._apply(
            cell.key, Next("succeeded", "found in the run directory"), reused=True,
            image_path=str(path.relative_to(self.run.root)),
        )  # fmt: skip

    def _from_cache(self, cell: Cell) -> bool:
        found = self.cache.lookup(cell.key) if self.cache else None
        if found is None or self.cache is None:
            return False
        source, info = found
        if not intact_image(source):  # cut short or damaged in the cache: never counted as done
            self.bad_cache += 1
            self.cache.forget(cell.key)
            return False
        target = self.run.image_file(cell.key, source.suffix)
        self.cache.copy_to(source, target)
        self._apply(cell.key, Next("succeeded"), reused=True, **_cached_fields(info, target.relative_to(self.run.root)))
        return True

    def _collect_attempts(self, key: str) -> int:
        """Failed tries so far at collecting this cell's paid job."""
        row = self.ledger.get(key)
        return (row["collect_attempts"] or 0) if row is not None else 0

    def _apply(self, key: str, nxt: Next, *, reused: bool = False, **fields: Unpack[CellFields]) -> None:
        """Record where a cell went; stop sending when the token or the balance says so (`reused`: its
        image came from the directory or the cache, shown apart from the generated ones)."""
        if nxt.count_attempt:
            fields["collect_attempts"] = self._collect_attempts(key) + 1
        if key in self.ids and nxt.state != "planned":  # repairs a request id the ledger could not take at once
            fields.setdefault("request_id", self.ids[key])
        fields["status"], fields["reason"], fields["error"] = nxt.state, nxt.reason, nxt.error
        self.ledger.update(key, **fields)
        if nxt.stop and not self.stopped:
            self.stopped = nxt.stop
        shown = bar_state(nxt.state, reused=reused)
        self._show(key, shown, finished=bar_finished(shown))

    def _local_error(self, key: str, exc: Exception) -> None:
        """Something on this machine failed (not the job): say so on the cell, keep the sweep going."""
        message = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            row = self.ledger.get(key)
            paid = row is not None and is_paid(row["status"])
            request_id = self.ids.get(key) or (row["request_id"] if row is not None else None)
            # A job with a known id is collected again; one whose submit may have left without its id being
            # heard is `unknown` (never sent again on its own); nothing was sent otherwise.
            state: CellState = ("accepted" if request_id else "unknown") if paid else "failed"
            then = {"accepted": "; the paid job is collected again", "unknown": "; its submit outcome is unknown"}
            self.ledger.update(
                key, status=state, reason=f"local error ({type(exc).__name__})",
                error=f"{message}; fix it and rerun" + then.get(state, ""),
            )  # fmt: skip
        self._show(key, "failed", finished=True)

    async def stop(self, say: Callable[[str], None]) -> None:
        """After an interrupt: let in-flight submits record their ids, then cancel what is still queued."""
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=CANCEL_DEADLINE_S)
        identity = self.client.identity
        open_jobs = [
            r for r in self.ledger.rows() if r["status"] == "accepted" and r["request_id"] and r["origin"] == identity
        ]

        async def cancel(row: LedgerRow) -> bool:
            request_id = row["request_id"]
            if request_id is None or await jobs.cancel_bounded(self.api, request_id) != "cancelled":
                return False
            self.ledger.update(
                row["key"], status="cancelled", reason="cancelled by you (Ctrl-C) while queued",
                error="cancelled by the user (Ctrl-C) while queued: not billed; a rerun sends it again",
            )  # fmt: skip
            return True

        outcomes = await asyncio.gather(*(cancel(r) for r in open_jobs), return_exceptions=True)
        cancelled = sum(1 for o in outcomes if o is True)
        say(
            f"zlab: interrupted: {cancelled} queued job(s) cancelled, {len(open_jobs) - cancelled} running job(s) "
            "recorded; run the same command again to collect them"
        )


def _cached_fields(info: Mapping[str, Any], image_path: Path) -> CellFields:
    """A cell whose image was copied from the shared cache to `image_path` (relative to the run directory):
    the entry's facts (`_CACHED`, as `_RunState._save` put them there) as ledger columns, at no cost."""
    return CellFields(
        cached=1, cost_usd=0.0, cost_source="estimate", image_path=str(image_path),
        request_id=info.get("request_id"), image_url=info.get("image_url"), submitted_at=info.get("submitted_at"),
        finished_at=info.get("finished_at"), queue_s=info.get("queue_s"), run_s=info.get("run_s"),
        base_url=info.get("base_url"), image_width=info.get("image_width"), image_height=info.get("image_height"),
        note=info.get("note"),
    )  # fmt: skip
