"""`AsyncClient` (the one async core) and `Client` (its sync facade, safe inside Jupyter).

>>> import zlab
>>> client = zlab.Client()            # no token: starts the built-in local server and says so
>>> gen = client.generate(zlab.Request("a red fox", seed=1))
>>> gen.image.size
(1024, 1536)
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from zlab import errors
from zlab.api import jobs
from zlab.api import loop as _loop
from zlab.api.download import Downloader
from zlab.api.http import API, DEFAULT_TIMEOUT
from zlab.api.jobs import Endpoint, Generation, Job
from zlab.api.loop import in_notebook
from zlab.api.loop import say as _say
from zlab.core.config import LocalSettings, Secret, Settings, environment, is_loopback, resolve_settings
from zlab.core.polling import Pacer
from zlab.core.pricing import Pricing, resolve_pricing
from zlab.core.protocol import CancelOutcome, Outcome, Status
from zlab.core.request import MODEL_ID, Request, is_local_path
from zlab.core.retry import RetryPolicy

if TYPE_CHECKING:
    from zlab.runs.result import RunResult
    from zlab.runs.sweep import Sweep


class AsyncClient:
    """Talks to RunComfy (or the built-in local server) with `await`.

    Configuration is read here, when the client is built: `token` → RUNCOMFY_TOKEN → RUNCOMFY_API_KEY;
    `base_url` → ZLAB_BASE_URL → RunComfy. With neither a token nor a base URL, it starts the built-in
    local server on 127.0.0.1 (synthetic images) and prints one line saying so.
    """

    def __init__(
        self,
        token: str | Secret | None = None,
        base_url: str | None = None,
        *,
        model: str = MODEL_ID,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        price_per_mp: float | None = None,
        price_per_image: float | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.settings: Settings = resolve_settings(
            token, base_url, price_per_mp=price_per_mp, price_per_image=price_per_image
        )
        self.model = model
        self.pacer = Pacer()
        self.cache_dir = cache_dir
        self._server: Any = None
        self._pricing: Pricing | None = None
        base = self.settings.base_url
        if base is None:
            base = self._start_local_server()
        self.api = API(base, self.settings.token, transport=transport, timeout=timeout, retry=retry)
        # Its own client (output files never see the token), retried with this client's policy (five tries).
        self.downloads = Downloader(transport=transport, retry=dataclasses.replace(retry, attempts=5))
        self.endpoint = Endpoint(self.api, self.downloads, self.pacer)

    @property
    def base_url(self) -> str:
        """The API this client talks to (the built-in server's loopback URL when it started one)."""
        return self.api.base_url

    @property
    def builtin(self) -> bool:
        """Whether this client started the built-in local server (nothing is billed; it dies with the client)."""
        return self._server is not None

    @property
    def identity(self) -> str:
        """Names the API that accepts this client's jobs; a job is only ever asked about where it was accepted.
        The built-in server's port changes every time, so it has one name of its own."""
        return "zlab-builtin" if self.builtin else self.base_url

    async def pricing(self) -> Pricing:
        """What an image costs here: the service's own price (`GET /v1/models/{id}`) when it answers,
        else ZLAB_PRICE_PER_IMAGE, else ZLAB_PRICE_PER_MP (a peer's per-megapixel price). Asked once."""
        if self._pricing is None and self.builtin:
            self._pricing = Pricing(0.0, None, "the built-in server bills nothing")
        if self._pricing is None:
            self._pricing = resolve_pricing(await self.api.price(self.model), self.settings)
        return self._pricing

    def check_request(self, request: Request | dict[str, Any]) -> None:
        """Refuse, before anything is sent, what this API cannot do: a LoRA file on this machine can only be
        read by a local server (`zlab serve --backend diffusers`), never by RunComfy."""
        if not isinstance(request, Request) or is_loopback(self.base_url):
            return
        for index, lora in enumerate(request.loras):
            if is_local_path(lora.path):
                raise errors.ValidationError(
                    f"loras[{index}].path",
                    lora.path,
                    "a Hugging Face repo id or an https:// URL that the service can download",
                    "A file on this machine cannot be read by RunComfy: upload it (e.g. to Hugging Face) and use its "
                    "repo id or URL, or run the sweep on your own GPU with `zlab serve --backend diffusers`.",
                )

    def __repr__(self) -> str:
        where = "local server" if self._server is not None else "RunComfy" if "runcomfy" in self.base_url else "server"
        return f"<AsyncClient {where} {self.base_url} model={self.model}>"

    def _start_local_server(self) -> str:
        from zlab.server import LocalServer

        local = LocalSettings.from_env()
        renderer, images = None, "synthetic images"
        if local.backend == "diffusers":  # Z-Image Turbo on this machine: ZLAB_MODEL, ZLAB_DEVICE, ZLAB_DTYPE
            from zlab.server import diffusers_backend as db

            renderer = db.load_renderer(db.DiffusersSettings.from_env(environment()))
            facts = renderer.describe()
            images = f"Z-Image Turbo from {facts['model']} on {facts['devices']}"
        self._server = LocalServer(latency=local.latency, capacity=local.capacity, renderer=renderer)
        self._server.start()
        # With a token, only ZLAB_BASE_URL=local (or base_url="local") leads here: say so, not "no token".
        why = "ZLAB_BASE_URL=local" if self.settings.token is not None else "no RUNCOMFY_TOKEN set"
        _say(f"zlab: {why}; using the built-in local server at {self._server.base_url} ({images}, nothing is billed)")
        return str(self._server.base_url)

    async def submit(self, request: Request | dict[str, Any], *, model: str | None = None) -> Job:
        """Send one job; returns its handle as soon as the service accepts it (never resent blindly)."""
        model = self._model_for(request, model)
        track = jobs.new_track(request)
        request_id = await jobs.submit(self.api, model, request, track)
        return Job(request_id, request, model, self.endpoint, track)

    def _model_for(self, request: Request | dict[str, Any], model: str | None) -> str:
        """The model to send `request` to, after the checks that refuse it before anything is sent."""
        model = model or self.model
        if isinstance(request, Request) and model != MODEL_ID:
            raise errors.ConfigError(f"zlab.Request is the schema of {MODEL_ID}; pass a dict for model {model!r}")
        self.check_request(request)
        return model

    def job(self, request_id: str, request: Request | dict[str, Any] | None = None) -> Job:
        """A handle for a job submitted earlier (e.g. by a run that was interrupted)."""
        return Job(request_id, request, self.model, self.endpoint)

    async def status(self, request_id: str) -> Status:
        """The current state of a job by its request id (one /status call)."""
        return await self.api.status(request_id)

    async def generate(self, request: Request | dict[str, Any], *, timeout: float = 600.0) -> Generation:
        """Submit, wait and download: the image and its metadata, all within `timeout` seconds.

        If `timeout` passes first, a still-queued job is cancelled (nothing is billed); a running one
        finishes on the server and `WaitTimeout.request_id` lets you collect it with `client.job(id)`.
        A download that fails after the job succeeded says how to collect it again (it is paid for).
        Interrupted (Ctrl-C), it says what was paid and how to collect it by request id.
        """
        if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
            raise errors.ValidationError("timeout", timeout, "a number of seconds > 0")
        model = self._model_for(request, None)
        sending: set[asyncio.Task[Any]] = set()
        ids: list[str] = []
        hooks = jobs.Hooks(on_accepted=ids.append, inflight=sending)
        try:
            result = await jobs.run_job(self.endpoint, model, request, timeout=timeout, hooks=hooks)
        except asyncio.CancelledError:  # interrupted: a queued job is cancelled (free), a running one reported
            if not ids:
                _say(await _interrupted_while_sending(sending))
                raise
            outcome = await jobs.cancel_bounded(self.api, ids[0])
            _say(interrupted_message(ids[0], outcome))
            raise
        except (errors.DownloadError, errors.ProtocolError, errors.TransportError) as exc:
            if not ids:  # nothing was accepted (or its id is unknown): the error as it is
                raise
            raise exc.extended(
                f"The job succeeded and is paid for: collect it again with "
                f"client.job({ids[0]!r}).download() (or `zlab generate --collect {ids[0]} --out FILE`)"
            ) from exc
        if isinstance(result, jobs.TimedOut):
            raise errors.WaitTimeout(
                f"request {result.request_id} did not finish within {timeout:g}s; cancel outcome: {result.cancel}. "
                f"If it was running, collect it later with client.job({result.request_id!r}).download() "
                f"(or `zlab generate --collect {result.request_id} --out FILE`)",
                request_id=result.request_id,
            )
        if isinstance(result, jobs.Ended):
            failure = jobs.failure_of(result.request_id, result.outcome)
            assert failure is not None
            raise failure
        return result

    async def run(self, sweep: Sweep, out: str | Path, *, sheet: bool = True, **options: Any) -> RunResult:
        """Run a sweep into a run directory (resumable); see `zlab.runs.runner.run_sweep` for options.

        With `sheet` (the default) and a sweep that names one, the contact sheet is drawn to DIR/sheet.png
        once the run ends; thumbnails are cached as images arrive, so that first sheet is fast. In a notebook
        the kernel's interrupt ends an awaited run with its summary and returns the interrupted result
        (`.interrupted`), like `Client.run`."""
        from zlab.runs.runner import run_sweep

        options.setdefault("on_image", _prime_thumbnail)
        if in_notebook():  # `await ac.run(...)`: the kernel's interrupt ends with the summary, no traceback
            options.setdefault("on_interrupt", "return")
        result = await run_sweep(self, sweep, out, **options)
        if sheet and sweep.sheet and result.counts.get("succeeded") and not result.interrupted:
            await asyncio.to_thread(_draw_sheet, result, sweep.sheet, options.get("echo") or _say)
        return result

    async def find_scale(self, spec: Any, out: str | Path, **options: Any) -> Any:
        """Find each LoRA's onset, saturation and overcook with few images (see `zlab.strength.driver`).

        `spec` is a `ScaleSpec`, a mapping of its file keys, or a YAML file path; options: budget, concurrency."""
        from zlab.strength.driver import ScaleSpec, find_scale

        if not isinstance(spec, ScaleSpec):
            spec = ScaleSpec.from_dict(spec) if isinstance(spec, dict) else ScaleSpec.from_file(spec)
        return await find_scale(self, spec, out, **options)

    async def aclose(self) -> None:
        """Close the HTTP clients and stop the built-in server if this client started it."""
        await self.api.aclose()
        await self.downloads.aclose()
        if self._server is not None:
            self._server.stop()
            self._server = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncJob:
    """A submitted job, with blocking methods (from `Client.submit`)."""

    def __init__(self, job: Job) -> None:
        self._job = job

    request_id = property(lambda self: self._job.request_id)
    request = property(lambda self: self._job.request)

    def status(self) -> Status:
        return _loop.run_sync(self._job.status())

    def result(self) -> Outcome:
        return _loop.run_sync(self._job.result())

    def wait(self, timeout: float = 600.0) -> Outcome:
        return _loop.run_sync(self._job.wait(timeout))

    def cancel(self) -> CancelOutcome:
        return _loop.run_sync(self._job.cancel())

    def download(self, timeout: float = 600.0) -> Generation:
        return _loop.run_sync(self._job.download(timeout))

    def __repr__(self) -> str:
        return f"<Job {self._job.request_id}>"


class Client:
    """The blocking face of `AsyncClient`: same arguments, same behaviour, no `await`.

    It runs the async core on one background event-loop thread, so it works in scripts and in
    Jupyter alike. Ctrl-C during `run` cancels queued jobs and keeps the rest resumable.
    """

    def __init__(self, token: str | Secret | None = None, base_url: str | None = None, **options: Any) -> None:
        self.aclient = AsyncClient(token, base_url, **options)

    @property
    def base_url(self) -> str:
        """The API this client talks to (the built-in server's loopback URL when it started one)."""
        return self.aclient.base_url

    @property
    def settings(self) -> Settings:
        """Where the API is, the token (hidden) and the fallback prices, as read when the client was built."""
        return self.aclient.settings

    def __repr__(self) -> str:
        return repr(self.aclient).replace("AsyncClient", "Client", 1)

    def submit(self, request: Request | dict[str, Any], *, model: str | None = None) -> SyncJob:
        """Send one job; its handle as soon as the service accepts it (see `AsyncClient.submit`)."""
        return SyncJob(_loop.run_sync(self.aclient.submit(request, model=model)))

    def job(self, request_id: str, request: Request | dict[str, Any] | None = None) -> SyncJob:
        """A handle for a job submitted earlier, by its request id (e.g. to collect it)."""
        return SyncJob(self.aclient.job(request_id, request))

    def generate(self, request: Request | dict[str, Any], *, timeout: float = 600.0) -> Generation:
        """Submit, wait and download: the image and its metadata (see `AsyncClient.generate`)."""
        return _loop.run_sync(self.aclient.generate(request, timeout=timeout))

    def pricing(self) -> Pricing:
        """What an image costs here (see `AsyncClient.pricing`): pass it to `Sweep.plan(pricing=…)`."""
        return _loop.run_sync(self.aclient.pricing())

    def run(self, sweep: Sweep, out: str | Path, **options: Any) -> RunResult:
        """Run a sweep into a run directory (resumable); see `zlab.runs.runner.run_sweep` for options.

        In a notebook, Ctrl-C (the kernel's interrupt) ends with the run's one-line summary and returns the
        interrupted result (`.interrupted`), with no traceback; elsewhere it raises KeyboardInterrupt."""
        quiet = in_notebook()
        if quiet:
            options.setdefault("on_interrupt", "return")
        return _loop.run_sync(self.aclient.run(sweep, out, **options), result_on_interrupt=quiet)

    def find_scale(self, spec: Any, out: str | Path, **options: Any) -> Any:
        """Find each LoRA's onset, saturation and overcook (see `AsyncClient.find_scale`); resumable in `out`."""
        return _loop.run_sync(self.aclient.find_scale(spec, out, **options))

    def close(self) -> None:
        """Close the client (and the built-in server it started, if any)."""
        _loop.run_sync(self.aclient.aclose())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def interrupted_message(request_id: str, cancel_outcome: str) -> str:
    """What an interrupted `generate` says: what was paid, and how to collect it by its request id."""
    if cancel_outcome == "cancelled":
        return f"zlab: interrupted; request {request_id} was cancelled while still queued: nothing is billed"
    return (
        f"zlab: interrupted; request {request_id} was accepted and is (or may be) billed (cancel: {cancel_outcome}). "
        f"Collect its image with `zlab generate --collect {request_id} --out FILE` or "
        f"client.job({request_id!r}).download(); sending the same command again would pay for a new job"
    )


async def _interrupted_while_sending(sending: set[asyncio.Task[Any]]) -> str:
    """Ctrl-C during a submit: the shielded send finishes recording; say whether a job was accepted, and its id."""
    if sending:
        done, _ = await asyncio.wait(sending, timeout=8.0)
        for task in done:
            if not task.cancelled() and task.exception() is None:
                return interrupted_message(str(task.result()), "not asked")
    return (
        "zlab: interrupted while sending the submit: if the service accepted it, the job is billed but zlab never "
        "heard its request id; nothing was sent again"
    )


def _prime_thumbnail(run_dir: Path, path: Path, image: Any) -> None:
    """The image is decoded already (it was checked): cache its sheet-sized thumbnail now."""
    from zlab.sheet.thumbs import THUMB_WIDTH, prime

    prime(path, image, THUMB_WIDTH, run_dir)


def _draw_sheet(result: RunResult, spec: dict[str, Any], say: Any) -> None:
    """DIR/sheet.png as the sweep file asks; a sheet that cannot be drawn is said, never fails the run."""
    from zlab.sheet import contact_sheet

    try:
        paths = contact_sheet(result.df, root=result.out, **spec).save(result.out / "sheet.png")
        say(f"zlab: contact sheet: {', '.join(str(p) for p in paths)}")
    except (errors.ZlabError, TypeError, OSError) as exc:
        say(f"zlab: no contact sheet drawn: {exc}")
