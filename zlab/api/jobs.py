"""A job's whole life, in one place: submit → follow → collect → download → decode → timings.

This is zlab's one money path. `AsyncClient.generate`, `Job.download` and the sweep runner all go
through `run_job`: `send` (the only code that POSTs a job) → `wait` (follow it by id) → `collect`
(fetch and check its image) → a bounded cancel at the deadline → timings. The runner adds only its
ledger, progress and tracks, through `Hooks`.

- `send` runs the POST and the caller's record of the request id as one shielded task: an
  interrupt cannot fall between "the service accepted it" and "zlab wrote that down".
- `wait` follows a job by id until it ends, with a deadline; a 404 on a fresh job is waited out
  for a grace period (a service may be eventually consistent), never taken as "gone" at once.
- `collect` downloads the first output, proves it is an image, and keeps it even when the service
  rendered another size (the note says so): a paid image is never thrown away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from zlab import errors
from zlab.api.download import Downloader
from zlab.api.follow import follow
from zlab.api.http import API
from zlab.core.polling import Pacer, Track
from zlab.core.protocol import CancelOutcome, Outcome, Status
from zlab.core.request import Request

NOT_FOUND_GRACE_S = 60.0  # a fresh job's id may 404 for a while on an eventually consistent service
NOT_FOUND_RETRY_S = 1.0
RECORD_WAITS_S = (0.2, 0.5, 1.0, 2.0, 4.0)  # a failed record of a request id is tried again after each
CANCEL_SETTLE_S = 5.0  # how long a cancel the service took but has not done yet is followed
CANCEL_DEADLINE_S = 8.0  # a clean-up cancel (at a deadline, or after Ctrl-C) never holds an exit longer


@dataclasses.dataclass(frozen=True, eq=False)
class Generation:
    """One finished image: the picture, what asked for it, how long it took and what it cost."""

    request: Request | dict[str, Any]
    request_id: str
    url: str
    data: bytes = dataclasses.field(repr=False)
    image: Image.Image = dataclasses.field(repr=False)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    queue_s: float | None = None
    run_s: float | None = None
    cost_usd: float | None = None  # the service's own figure, when it gave one
    suffix: str = ".png"  # the file type, from the bytes: ".png", ".jpg" or ".webp"
    note: str | None = None  # e.g. the service rendered another size than was asked
    backend: dict[str, Any] | None = None  # a local server's facts about the render (model, versions, device)
    outputs: int = 1  # how many images the result held; the first is this one

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image as the service rendered it."""
        return self.image.size

    def save(self, path: str | Path) -> Path:
        """Write the image bytes exactly as downloaded (no re-encoding)."""
        from zlab.api.download import write_atomic

        target = Path(path)
        write_atomic(target, self.data)
        return target

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        return f"<Generation {self.request_id} {self.image.width}x{self.image.height}>"


async def send(
    api: API,
    model: str,
    payload: dict[str, Any],
    *,
    on_send: Callable[[], None] | None = None,
    on_accepted: Callable[[str], None] | None = None,
    on_unsent: Callable[[], None] | None = None,
    inflight: set[asyncio.Task[Any]] | None = None,
) -> str:
    """POST one job and record its id, shielded as one step; returns the request id.

    `on_send` runs right before the body leaves (the moment it may be billed), `on_accepted` with the
    id as soon as it is known, `on_unsent` when an attempt was refused before any job existed (a 429).
    `inflight` collects the shielded task so a caller that is interrupted
    can wait for the record to be written. Raises `SubmitUnknownError` when the job may exist but its
    id is unknown; it is never resent here.
    """

    async def post_and_record() -> str:
        submitted = await api.submit(model, payload, on_send=on_send, on_unsent=on_unsent)
        if on_accepted is not None:
            await _record(on_accepted, submitted.request_id)
        return submitted.request_id

    task = asyncio.ensure_future(post_and_record())
    if inflight is not None:
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    return await asyncio.shield(task)


async def _record(on_accepted: Callable[[str], None], request_id: str) -> None:
    """Write the id down, trying again while the record fails (e.g. another process holds the ledger's
    write lock). The job is paid for whatever happens: if every try fails, the id is still returned (the
    caller keeps it in memory and follows the job) and the submit is never sent again."""
    for wait_s in (*RECORD_WAITS_S, None):
        try:
            on_accepted(request_id)
            return
        except Exception:
            if wait_s is None:
                return
            await asyncio.sleep(wait_s)


async def wait(
    api: API,
    request_id: str,
    track: Track,
    pacer: Pacer,
    *,
    deadline: float,
    grace_until: float | None = None,
) -> Outcome:
    """Follow a job until it ends; its /result Outcome (succeeded, failed or cancelled).

    Raises WaitTimeout at `deadline` (monotonic). Until the service has once answered for the job, a
    404 before `grace_until` (monotonic; default: a minute after the submit) means "not visible yet"
    and is asked again; after that, a 404 means the id expired or vanished.
    """
    grace = grace_until if grace_until is not None else track.submitted + NOT_FOUND_GRACE_S
    watched = _Seen(api)
    while True:
        try:
            return await follow(watched, request_id, track, pacer, deadline=deadline)  # type: ignore[arg-type]
        except errors.NotFoundError:
            now = time.monotonic()
            if watched.seen or now >= grace or now + NOT_FOUND_RETRY_S >= deadline:
                raise
            await asyncio.sleep(NOT_FOUND_RETRY_S)


class _Seen:
    """The API's read calls, noting whether the service ever answered for the job (then a 404 is real)."""

    def __init__(self, api: API) -> None:
        self.api, self.seen = api, False
        self.retry = api.retry

    async def status(self, request_id: str) -> Status:
        answer = await self.api.status(request_id)
        self.seen = True
        return answer

    async def result(self, request_id: str) -> Outcome:
        answer = await self.api.result(request_id)
        self.seen = True
        return answer


async def collect(downloads: Downloader, request: Request | dict[str, Any], request_id: str, outcome: Outcome,
                  track: Track | None = None) -> Generation:  # fmt: skip
    """Download and check the first output of a succeeded job; a different size is kept, with a note."""
    got = await downloads.get(outcome.outputs[0])
    notes = []
    if isinstance(request, Request) and got.size != (request.width, request.height):
        width, height = got.size
        notes.append(
            f"the service rendered {width}×{height} for a {request.width}×{request.height} request "
            "(it snaps sizes); the image is kept as rendered"
        )
    if len(outcome.outputs) > 1:
        notes.append(f"the result held {len(outcome.outputs)} images; the first is kept")
    note = "; ".join(notes) or None
    queue_s, run_s = timings(outcome, track)
    return Generation(
        request,
        request_id,
        got.url,
        got.data,
        got.image,
        outcome.created_at,
        outcome.finished_at,
        queue_s,
        run_s,
        outcome.cost_usd,
        got.suffix,
        note,
        outcome.backend,
        len(outcome.outputs),
    )


def timings(outcome: Outcome, track: Track | None) -> tuple[float | None, float | None]:
    """Seconds queued and running: queue time as the caller saw it, run time from the server's span."""
    span = None
    if outcome.created_at and outcome.finished_at:
        span = max(0.0, (outcome.finished_at - outcome.created_at).total_seconds())
    if track is None:
        return None, span
    queue_s = max(0.0, track.started - track.submitted) if track.started is not None else 0.0
    return queue_s, None if span is None else max(0.0, span - queue_s)


def failure_of(request_id: str, outcome: Outcome) -> errors.ZlabError | None:
    """The exception a finished-but-not-succeeded outcome stands for (None for a success)."""
    if outcome.phase == "failed":
        return errors.JobFailed(
            f"request {request_id} failed on the server: {outcome.error}", request_id=request_id, detail=outcome.error
        )
    if outcome.phase == "cancelled":
        return errors.JobCancelled(f"request {request_id} was cancelled", request_id=request_id)
    return None


async def cancel(api: API, request_id: str, *, settle_s: float = CANCEL_SETTLE_S) -> CancelOutcome:
    """Cancel if still queued (free). When the answer does not say (an empty 202, "requested"), /status
    decides, asked again with a growing wait for up to `settle_s`: a cancel may take effect a moment later."""
    outcome = await api.cancel(request_id)
    if outcome != "unknown":
        return outcome
    until, wait_s = time.monotonic() + settle_s, 0.1
    while True:
        status = await api.status(request_id)
        if status.phase == "cancelled":
            return "cancelled"
        if status.terminal:
            return "not_cancellable"
        if time.monotonic() + wait_s > until:
            return "unknown"
        await asyncio.sleep(wait_s)
        wait_s = min(wait_s * 2, 1.0)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """What a job needs to be followed and collected: the API that accepted it, the downloader (which never
    sends the token) and the pacer that has learned this API's run times."""

    api: API
    downloads: Downloader
    pacer: Pacer


@dataclasses.dataclass(frozen=True)
class Job:
    """A submitted job (async handle). Obtain from `AsyncClient.submit`; `Client.submit` wraps it."""

    request_id: str
    request: Request | dict[str, Any] | None
    model: str
    _endpoint: Endpoint = dataclasses.field(repr=False, compare=False)
    _track: Track = dataclasses.field(repr=False, compare=False, default_factory=lambda: new_track(None))

    async def status(self) -> Status:
        """The current state (one /status call)."""
        return await self._endpoint.api.status(self.request_id)

    async def result(self) -> Outcome:
        """The /result answer now: outputs if finished, else the current phase."""
        return await self._endpoint.api.result(self.request_id)

    async def cancel(self) -> CancelOutcome:
        """Cancel if still queued; returns `cancelled`, `not_cancellable` or `unknown`. Twice is harmless."""
        return await cancel(self._endpoint.api, self.request_id)

    async def wait(self, timeout: float = 600.0) -> Outcome:
        """Wait until the job ends (adaptive polling); raise JobFailed / JobCancelled / WaitTimeout."""
        endpoint = self._endpoint
        deadline = time.monotonic() + timeout
        outcome = await wait(endpoint.api, self.request_id, self._track, endpoint.pacer, deadline=deadline)
        failure = failure_of(self.request_id, outcome)
        if failure is not None:
            raise failure
        return outcome

    async def download(self, timeout: float = 600.0) -> Generation:
        """Wait, then download and check the first output image; `timeout` covers both (from now)."""
        endpoint, request = self._endpoint, self.request or {}
        result = await run_job(endpoint, self.model, request, timeout=timeout, request_id=self.request_id,
                               track=self._track, cancel_on_timeout=False)  # fmt: skip
        if isinstance(result, Generation):
            return result
        failure = failure_of(self.request_id, result.outcome) if isinstance(result, Ended) else result.error
        assert failure is not None
        raise failure


@dataclasses.dataclass
class Hooks:
    """What a caller adds around a job's one path (the runner: its ledger, progress and tracks); all optional."""

    on_send: Callable[[], None] | None = None  # right before the body leaves, after any pause: it may be billed
    on_accepted: Callable[[str], None] | None = None  # the request id, as soon as it is known
    on_unsent: Callable[[], None] | None = None  # an attempt refused before any job existed (a 429)
    on_follow: Callable[[Track], None] | None = None  # following starts (e.g. show the job as queued)
    inflight: set[asyncio.Task[Any]] | None = None  # the shielded submit, for a caller that is interrupted


@dataclasses.dataclass(frozen=True)
class Ended:
    """A job that ended at the server without an image: failed or cancelled (with its timings)."""

    request_id: str
    outcome: Outcome
    queue_s: float | None
    run_s: float | None


@dataclasses.dataclass(frozen=True)
class TimedOut:
    """A job still unfinished at its deadline, and what the bounded cancel that followed achieved."""

    request_id: str
    error: errors.WaitTimeout
    cancel: CancelOutcome | str


def new_track(request: Request | dict[str, Any] | None) -> Track:
    """The poller's record of one job (the one place a Track is made)."""
    megapixels = request.megapixels if isinstance(request, Request) else None
    return Track(time.monotonic(), megapixels=megapixels)


async def submit(
    api: API, model: str, request: Request | dict[str, Any], track: Track, hooks: Hooks | None = None
) -> str:
    """Send `request` once, dating it on `track` (`sent` as the body leaves, `submitted` when the id is
    known): the one submit that `run_job` and `AsyncClient.submit` share. Returns the request id."""
    hooks = hooks or Hooks()
    payload = request.to_input() if isinstance(request, Request) else dict(request)

    def sending() -> None:
        track.sent = time.monotonic()
        if hooks.on_send is not None:
            hooks.on_send()

    def accepted(new_id: str) -> None:
        track.submitted = time.monotonic()
        if hooks.on_accepted is not None:
            hooks.on_accepted(new_id)

    return await send(
        api, model, payload, on_send=sending, on_accepted=accepted, on_unsent=hooks.on_unsent, inflight=hooks.inflight
    )


async def run_job(
    endpoint: Endpoint,
    model: str,
    request: Request | dict[str, Any],
    *,
    timeout: float,
    hooks: Hooks | None = None,
    request_id: str | None = None,
    track: Track | None = None,
    grace_until: float | None = None,
    cancel_on_timeout: bool = True,
) -> Generation | Ended | TimedOut:
    """A job's one path: send (unless `request_id` names one sent earlier) → follow → collect, all within
    `timeout` seconds from the submit (or from now, for a job sent earlier), a still-queued job cancelled at the
    deadline (bounded). Used by `AsyncClient.generate`, `Job.download` and the sweep runner alike.

    Returns the image, an `Ended` job (failed or cancelled at the server) or a `TimedOut` one. Errors before the
    id is known are the submit's (`hooks.on_accepted` says when it is); after that, a collection's.
    """
    hooks = hooks or Hooks()
    track = track or new_track(request)
    start = time.monotonic()  # a job sent earlier: its deadline counts from now
    if request_id is None:
        request_id = await submit(endpoint.api, model, request, track, hooks)
        start = track.submitted  # a job sent here: its deadline counts from its submit
    if hooks.on_follow is not None:
        hooks.on_follow(track)
    deadline = start + timeout
    try:
        outcome = await wait(
            endpoint.api, request_id, track, endpoint.pacer, deadline=deadline, grace_until=grace_until
        )
    except errors.WaitTimeout as exc:
        if not cancel_on_timeout:
            raise
        return TimedOut(request_id, exc, await cancel_bounded(endpoint.api, request_id))
    if outcome.phase != "succeeded":
        return Ended(request_id, outcome, *timings(outcome, track))
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
            return await collect(endpoint.downloads, request, request_id, outcome, track)
    except TimeoutError:
        raise errors.DownloadError(
            f"request {request_id} finished but its image did not arrive within the {timeout:g} s deadline",
            url=outcome.outputs[0][:200] if outcome.outputs else None,
            transient=True,
        ) from None


async def cancel_bounded(api: API, request_id: str, seconds: float = CANCEL_DEADLINE_S) -> CancelOutcome | str:
    """A clean-up cancel that must not hang an exit: its outcome, or `unknown (why)`."""
    try:
        async with asyncio.timeout(seconds):
            return await cancel(api, request_id)
    except (errors.ZlabError, TimeoutError) as exc:
        return f"unknown ({type(exc).__name__})"
