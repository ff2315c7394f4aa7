"""The local server's HTTP face: a Starlette app speaking RunComfy's queue protocol.

Routes (shapes, codes and quirks as in `runcomfy-api.md`):

    POST /v1/models/{model_id}              submit → 200 {request_id, status_url, result_url, cancel_url}
    GET  /v1/requests/{id}/status           → 200 {request_id, status, queue_position?, status_url, result_url}
    GET  /v1/requests/{id}/result           → 200 in every state (succeeded / in_queue / failed / ...)
    POST /v1/requests/{id}/cancel           → 202 {request_id, status, outcome}
    GET  /files/{id}/image.png              the output PNG, without auth (like a CDN)

Errors are `{"error_code", "error_message", "detail"?}`: 401/400004 bad token, 403/403001 another
token's job, 404/400001 unknown model, 404/404001 unknown or expired id, 422/422 schema violation
(detail: `[{"loc": ["body", "loras", 0, "scale"], "msg", "type"}]`), 400/400 malformed JSON,
413/413 body over 1 MiB, 429/429 and 5xx from fault injection. Codes not documented by RunComfy
reuse the HTTP status. `queue_position` counts the jobs ahead (0: next to start).

The app keeps no token: only SHA-256 hashes of accepted tokens, and each job remembers the hash of
the token that submitted it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from zlab.errors import ValidationError
from zlab.request import MODEL_ID, SIZE_RANGE, Request, input_problems
from zlab.server import synthetic
from zlab.server.backend import Renderer
from zlab.server.faults import NO_FAULTS, CallFault, Dice, DropMode, Faults, decide_call, decide_file, decide_job
from zlab.server.scheduler import Job, Latency, Scheduler, Stats

MAX_BODY = 1 << 20
OUTPUT_NAME = "image.png"
_DRAIN_LIMIT = 16 << 20  # read (and discard) this much of an oversized body so the client sees the 413
_RAW_SEND = "zlab.raw_send"


def token_hash(token: str) -> str:
    """What the server keeps of a token: enough to recognise it, useless to replay."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The server's fixed settings. Build with `ServerConfig.make(tokens=...)` to hash tokens."""

    token_hashes: frozenset[str] = frozenset()  # empty: no auth (any or no bearer token is accepted)
    capacity: int = 4
    latency: Latency = dataclasses.field(default_factory=Latency)
    expire_after: float | None = None
    max_body: int = MAX_BODY
    cache_bytes: int = 256 << 20
    renderer: Renderer | None = None  # None: synthetic images (see zlab.server.backend)

    @classmethod
    def make(cls, tokens: Iterable[str | None] = (), latency: str | float | Latency = 0.0, **kw: Any) -> ServerConfig:
        """Settings from plain values: tokens are hashed at once (None and "" are skipped)."""
        hashes = frozenset(token_hash(t) for t in tokens if t)
        return cls(token_hashes=hashes, latency=Latency.parse(latency), **kw)


class ServerState:
    """What the app shares with its owner: config, scheduler, stats, image cache, current faults."""

    def __init__(self, config: ServerConfig, faults: Faults = NO_FAULTS) -> None:
        self.config, self.stats = config, Stats()
        self.scheduler = Scheduler(
            self.stats, config.capacity, config.latency, config.expire_after, renderer=config.renderer
        )
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zlab-render")
        self.images = synthetic.ImageCache(self._executor, config.cache_bytes)
        self._lock = threading.Lock()
        self.set_faults(faults)

    @property
    def faults(self) -> Faults:
        """The fault settings in force now."""
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Switch faults now (from any thread); the dice restart from `faults.seed`."""
        with self._lock:
            self._faults, self._dice = faults, Dice(faults.seed)

    def draw(self) -> float:
        """The next uniform draw in [0, 1) from the current dice."""
        with self._lock:
            dice = self._dice
        return dice.draw()

    def close(self) -> None:
        """Stop timers and the render threads (the server has stopped)."""
        self.scheduler.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.config.renderer is not None:
            self.config.renderer.close()


class _Refused(Exception):
    """Stop handling a call and answer `response` (auth, lookups, body checks, injected faults)."""

    def __init__(self, response: Response) -> None:
        self.response = response


def error(status: int, code: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> Response:
    """An error answer in RunComfy's shape: `{"error_code", "error_message", "detail"?}`."""
    body: dict[str, Any] = {"error_code": code, "error_message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


class DroppedResponse(Response):
    """Not an answer: cut the connection, with no response (`close`) or after half of `body` (`truncate`).

    Needs uvicorn: the cut goes through the transport behind uvicorn's own `send`, which the
    outermost layer (`_App`) leaves in the scope, because Starlette's middleware wraps `send`.
    """

    def __init__(self, mode: DropMode, body: bytes) -> None:
        super().__init__(body, media_type="application/json")
        self.mode = mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_send = scope[_RAW_SEND]
        cycle = getattr(raw_send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise RuntimeError("dropping a connection needs uvicorn (run the app with LocalServer or serve)")
        if self.mode == "truncate":
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
            await raw_send({"type": "http.response.start", "status": 200, "headers": headers})
            await raw_send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
        transport.close()
        # Let uvicorn see the disconnect before we return, or it would answer 500 on the dead connection.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while not getattr(cycle, "disconnected", True) and loop.time() < deadline:
            await asyncio.sleep(0.001)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def field_loc(field: str, payload: Any) -> list[str | int]:
    """A ValidationError's field as a 422 `loc`: "loras[0].scale" → ["body", "loras", 0, "scale"]."""
    if field == "body":
        return ["body"]
    if isinstance(payload, dict) and field in payload:  # an unknown key may itself contain "." or "["
        return ["body", field]
    parts = re.findall(r"\[(\d+)\]|([^.\[\]]+)", field)
    return ["body", *(int(index) if index else name for index, name in parts)]


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _urls(base: str, request_id: str) -> dict[str, str]:
    root = f"{base}v1/requests/{request_id}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result", "cancel_url": f"{root}/cancel"}


def status_body(job: Job, position: int | None, base: str) -> dict[str, Any]:
    """The /status answer: a failed job says `completed` here, as on RunComfy."""
    urls = _urls(base, job.request_id)
    body: dict[str, Any] = {"request_id": job.request_id, "status": job.wire_status}
    if position is not None:
        body["queue_position"] = position
    return body | {"status_url": urls["status_url"], "result_url": urls["result_url"]}


def result_body(job: Job, base: str) -> dict[str, Any]:
    """The /result answer: `succeeded` with the output URL, `failed` with an error, or the current state."""
    body: dict[str, Any] = {"request_id": job.request_id, "status": job.state}
    if job.state == "succeeded":
        url = f"{base}files/{job.request_id}/{OUTPUT_NAME}"
        if job.bad_output == "non_http_url":
            url = "file:///etc/passwd"
        body["output"] = {"image": url}
        body["created_at"], body["finished_at"] = _iso(job.created_at), _iso(job.finished_at)
    elif job.state == "failed":
        message = job.error or "the synthetic backend failed this job (injected)"
        body["error"] = {"code": "generation_failed", "message": message}
    return body


def _state(request: HTTPRequest) -> ServerState:
    return request.app.state.zlab


def _authorize(request: HTTPRequest, state: ServerState) -> str | None:
    """The caller's token hash, None when the server needs no token; refuses a missing or wrong token."""
    accepted = state.config.token_hashes
    if not accepted:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    digest = token_hash(token) if scheme.lower() == "bearer" and token else ""
    if not digest or not any(hmac.compare_digest(digest, known) for known in accepted):
        message = "missing, expired or revoked token: send 'Authorization: Bearer <token>' with an accepted token"
        raise _Refused(error(401, 400004, message, headers={"WWW-Authenticate": "Bearer"}))
    return digest


def _fault(state: ServerState, endpoint: str) -> CallFault | None:
    """Draw this call's fault; answer at once (by raising) for the ones that replace the answer."""
    faults = state.faults
    fault = decide_call(faults, endpoint, state.draw())
    retry_after = {"Retry-After": f"{faults.retry_after:g}"}
    answers = {
        "rate_limited": (429, 429, "rate limited (injected); wait Retry-After seconds", retry_after),
        "rate_limited_bare": (429, 429, "rate limited (injected); back off and retry", None),
        "server_error": (500, 500, "internal server error (injected); retry later", None),
        "unavailable": (503, 503, "service unavailable (injected); retry later", None),
        "error_body": (200, 500001, "internal error reported with HTTP 200 (injected); retry later", None),
    }
    if fault in answers:
        status, code, message, headers = answers[fault]
        state.stats.count_fault(fault)
        raise _Refused(error(status, code, message, headers=headers))
    if fault == "drop_submit_before":
        state.stats.count_fault(fault)
        raise _Refused(DroppedResponse(faults.drop_mode, b'{"error_code": 500, "error_message": "dropped"}'))
    return fault


def _job(request: HTTPRequest, state: ServerState, owner: str | None) -> Job:
    request_id = request.path_params["request_id"]
    job = state.scheduler.get(request_id)
    if job is None:
        message = f"no request {_short(request_id, 40)!r}: unknown, deleted or expired; check the request id"
        raise _Refused(error(404, 404001, message))
    if owner is not None and job.token_hash != owner:
        raise _Refused(error(403, 403001, "this request belongs to another user; use the token that submitted it"))
    return job


async def _read_body(request: HTTPRequest, limit: int) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > _DRAIN_LIMIT:
                break
    except ClientDisconnect:  # nobody is left to read the answer; just do not log it as a crash
        raise _Refused(error(400, 400, "the client disconnected before sending the whole body")) from None
    if size > limit:
        raise _Refused(error(413, 413, f"the body is over {limit} bytes; send only the model's input fields"))
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_input(body: bytes) -> Request:
    """The validated request in `body`, or a 400 (not JSON) / 422 (not the schema) refusal."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        message = f"the body is not valid JSON ({_short(str(exc))}); send a JSON object"
        raise _Refused(error(400, 400, message)) from None
    try:
        problems = input_problems(payload)
        if not problems:
            return Request.from_input(payload)
    except ValidationError as exc:
        problems = [exc]
    except Exception:  # input_problems should catch everything; never let odd input become a 500
        problems = [ValidationError("body", "…", "a JSON object with the model's input fields")]
    detail = [
        {"loc": field_loc(p.field, payload), "msg": f"expected {p.allowed}", "type": "value_error"} for p in problems
    ]
    summary = "; ".join(f"{p.field}: expected {p.allowed}" for p in problems[:3])
    raise _Refused(error(422, 422, f"the input does not match the model's schema: {summary}", detail=detail))


async def _submit(request: HTTPRequest) -> Response:
    state = _state(request)
    state.stats.count_call("submit")
    owner = _authorize(request, state)
    model_id = request.path_params["model_id"]
    if model_id != MODEL_ID:
        raise _Refused(error(404, 400001, f"unknown model {_short(model_id, 60)!r}; this server serves {MODEL_ID}"))
    body = await _read_body(request, state.config.max_body)
    fault = _fault(state, "submit")
    generation = _parse_input(body)
    faults = state.faults
    will_fail = decide_job(faults, state.draw())
    job = state.scheduler.submit(generation, owner, will_fail=will_fail, bad_output=faults.bad_output)
    answer = {"request_id": job.request_id, **_urls(str(request.base_url), job.request_id)}
    if fault == "drop_submit_after":
        state.stats.count_fault(fault)
        return DroppedResponse(faults.drop_mode, json.dumps(answer).encode())
    return JSONResponse(answer)


def _maybe_drop(state: ServerState, fault: CallFault | None, response: Response) -> Response:
    if fault != "drop_poll":
        return response
    state.stats.count_fault(fault)
    return DroppedResponse(state.faults.drop_mode, bytes(response.body))


def _request_call(request: HTTPRequest, endpoint: str) -> tuple[ServerState, CallFault | None, Job]:
    """The common start of /status, /result and /cancel: count, authorize, draw a fault, find the job."""
    state = _state(request)
    state.stats.count_call(endpoint)
    owner = _authorize(request, state)
    fault = _fault(state, endpoint)
    return state, fault, _job(request, state, owner)


async def _status(request: HTTPRequest) -> Response:
    state, fault, job = _request_call(request, "status")
    body = status_body(job, state.scheduler.queue_position(job), str(request.base_url))
    return _maybe_drop(state, fault, JSONResponse(body))


async def _result(request: HTTPRequest) -> Response:
    state, fault, job = _request_call(request, "result")
    return _maybe_drop(state, fault, JSONResponse(result_body(job, str(request.base_url))))


async def _cancel(request: HTTPRequest) -> Response:
    state, fault, job = _request_call(request, "cancel")
    outcome = state.scheduler.cancel(job)
    body = {"request_id": job.request_id, "status": job.wire_status, "outcome": outcome}
    return _maybe_drop(state, fault, JSONResponse(body, status_code=202))


def _other_size(size: int) -> int:
    """A size still inside the schema's range but clearly not `size` (for the `wrong_size` fault)."""
    return size // 2 if size // 2 >= SIZE_RANGE[0] else size * 2


async def _output_file(request: HTTPRequest) -> Response:
    state = _state(request)
    state.stats.count_call("file")
    job = state.scheduler.get(request.path_params["request_id"])
    if job is None or job.state != "succeeded" or request.path_params["name"] != OUTPUT_NAME:
        return error(404, 404001, "no such file: unknown, unfinished or expired request")
    faults = state.faults
    fault = decide_file(faults, state.draw())
    if faults.file_delay:
        await asyncio.sleep(faults.file_delay)
    if fault is not None:
        state.stats.count_fault(fault)
        status_code = {"file_error": 500, "file_unavailable": 503, "file_missing": 404}[fault]
        return error(status_code, status_code, f"output file unavailable (injected {fault}); retry later")
    kind, gen = job.bad_output, job.request
    if job.output is not None and kind is None:  # a Renderer made this job's image
        return Response(job.output.data, media_type=job.output.media_type)
    if kind == "wrong_type":
        return Response(synthetic.WRONG_TYPE_HTML, media_type="text/html; charset=utf-8")
    if kind == "bomb":
        return Response(synthetic.bomb_png(), media_type="image/png")
    if kind == "wrong_size":
        gen = gen.replace(width=_other_size(gen.width), height=_other_size(gen.height))
    png = await state.images.get((job.request_id, kind == "wrong_size"), functools.partial(synthetic.render_png, gen))
    if kind == "truncated":
        return Response(png[: len(png) // 2], media_type="image/png")
    if kind == "oversized":  # streamed with no Content-Length: only a client-side size cap stops it
        return StreamingResponse(synthetic.oversized_png_chunks(png, faults.oversized_bytes), media_type="image/png")
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})


async def _http_error(request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.status_code, f"{exc.detail}: {request.method} {_short(request.url.path)}")


async def _refused(request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return exc.response


async def _internal(request: HTTPRequest, exc: Exception) -> Response:
    return error(500, 500, "internal server error (a bug in the local server); retry, and report it if it persists")


class _App(Starlette):
    """Starlette, plus uvicorn's own `send` in the scope so `DroppedResponse` can cut the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(state: ServerState) -> Starlette:
    """The ASGI app for `state`; serve it with uvicorn (as `LocalServer` and `serve` do)."""
    routes = [
        Route("/v1/models/{model_id:path}", _submit, methods=["POST"]),
        Route("/v1/requests/{request_id}/status", _status, methods=["GET"]),
        Route("/v1/requests/{request_id}/result", _result, methods=["GET"]),
        Route("/v1/requests/{request_id}/cancel", _cancel, methods=["POST"]),
        Route("/files/{request_id}/{name}", _output_file, methods=["GET"]),
    ]
    handlers = {_Refused: _refused, HTTPException: _http_error, Exception: _internal}
    app = _App(routes=routes, exception_handlers=handlers)
    app.state.zlab = state
    return app
