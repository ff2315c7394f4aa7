"""The local server's HTTP face: a Starlette app speaking RunComfy's queue protocol.

Routes (shapes, codes and quirks as in `runcomfy-api.md`):

    POST /v1/models/{model_id}              submit → 200 {request_id, status_url, result_url, cancel_url}
    GET  /v1/requests/{id}/status           → 200 {request_id, status, queue_position?, status_url, result_url}
    GET  /v1/requests/{id}/result           → 200 in every state (succeeded / in_queue / failed / ...)
    POST /v1/requests/{id}/cancel           → 202 {request_id, status, outcome}
    GET  /files/{id}/image.png              the output PNG, without auth (like a CDN); .jpg / .webp too
    GET  /{seg}=/{seg}=/output/{id}_output.png   the `redirect_files` quirk's CDN-shaped URL → 302
    GET  /redirect/{id}/{name}              the second hop → 302 to /files/...

Protocol variants (`quirks.Quirks`) and faults (`faults.Faults`) are switched live; the decisions
are pure functions in those modules, applied here. Request ids are URL-quoted in every URL built.

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
import base64
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from zlab.core.request import MODEL_ID, SIZE_RANGE, Request, input_problems
from zlab.errors import ValidationError
from zlab.server import dialect as dl
from zlab.server import quirks as q
from zlab.server import synthetic
from zlab.server.faults import (
    CallFault,
    decide_call,
    decide_file,
    decide_job,
    file_expired,
    not_yet_visible,
    odd_request_id,
)
from zlab.server.quirks import Quirks
from zlab.server.responses import RAW_SEND, DroppedResponse, error, from_answer, trickled
from zlab.server.responses import Refused as _Refused
from zlab.server.scheduler import Job, new_request_id
from zlab.server.state import MAX_BODY, ServerConfig, ServerState, token_hash

OUTPUT_NAME = "image.png"
FILE_NAMES = frozenset(f"image.{ext}" for ext in q.EXTENSIONS.values())
_DRAIN_LIMIT = 16 << 20  # read (and discard) this much of an oversized body so the client sees the 413
__all__ = ["MAX_BODY", "DroppedResponse", "ServerConfig", "ServerState", "create_app", "error", "token_hash"]


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


def _quoted(request_id: str) -> str:
    quoted = quote(request_id, safe="")  # ids are opaque: `:`, `?`, `#`, `%`, space all get quoted
    return quoted.replace(".", "%2E") if set(request_id) == {"."} else quoted  # `..` is not "parent"


def _urls(base: str, request_id: str) -> dict[str, str]:
    root = f"{base}v1/requests/{_quoted(request_id)}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result", "cancel_url": f"{root}/cancel"}


def status_body(job: Job, position: int | None, base: str, quirks: Quirks = q.NO_QUIRKS) -> dict[str, Any]:
    """The /status answer: a failed job says `completed` here, as on RunComfy (`failed` with `status_failed`)."""
    urls = _urls(base, job.request_id)
    body: dict[str, Any] = {"request_id": job.request_id, "status": q.status_word(quirks, job.state)}
    body |= q.position_field(quirks, job.state, position)
    if job.state == "failed" and quirks.status_failed:
        body["error"] = q.STATUS_FAILED_ERROR
    return q.success(quirks, body | {"status_url": urls["status_url"], "result_url": urls["result_url"]})


def output_url(base: str, job: Job, quirks: Quirks) -> str:
    """Where a finished job's file is: on this host, or CDN-shaped on a second host name (`redirect_files`)."""
    ext = q.EXTENSIONS[quirks.file_format]
    if not quirks.redirect_files:
        return f"{base}files/{_quoted(job.request_id)}/image.{ext}"
    scheme, _, rest = base.partition("://")
    host, colon, port = rest.rstrip("/").rpartition(":")
    other = f"{scheme}://{q.second_host(host)}{colon}{port}/"
    digest = hashlib.sha256(job.request_id.encode()).digest()
    seg1, seg2 = (base64.urlsafe_b64encode(part).decode().replace("=", "%3D") for part in (digest[:5], digest[5:15]))
    return f"{other}{seg1}/{seg2}/output/{_quoted(job.request_id)}_output.{ext}"


def result_body(job: Job, base: str, quirks: Quirks = q.NO_QUIRKS, with_cost: bool = False) -> dict[str, Any]:
    """The /result answer: `succeeded` with the output URL, `failed` with an error, or the current state."""
    body: dict[str, Any] = {"request_id": job.request_id, "status": q.result_word(quirks, job.state)}
    if job.state == "succeeded":
        url = output_url(base, job, quirks)
        if job.bad_output == "non_http_url":
            url = "file:///etc/passwd"
        body["output"] = q.output_value(quirks, url)
        body["created_at"], body["finished_at"] = _iso(job.created_at), _iso(job.finished_at)
        if job.output is not None and job.output.info:  # a real backend says how it made the image
            body["backend"] = dict(job.output.info)
        if with_cost and quirks.price is not None:
            body["cost"], body["model_id"] = quirks.price, MODEL_ID
    elif job.state == "failed":
        default = q.STATUS_FAILED_ERROR if quirks.status_failed else "the synthetic backend failed this job (injected)"
        body["error"] = q.failure_error(quirks, job.error or default)
    return q.success(quirks, body)


async def _model_info(request: HTTPRequest) -> Response:
    """GET /v1/models/{id}: the model's price, as RunComfy's CLI reads it (only with the `price` quirk)."""
    state = _state(request)
    state.stats.count_call("price")
    _authorize(request, state)
    price = state.quirks.price
    if request.path_params["model_id"] != MODEL_ID or price is None:
        raise _Refused(error(404, 400001, "no price published for this model here"))
    note = "zlab's local server: nothing is billed" if price == 0 else "zlab's local server: a made-up price (quirk)"
    body = {"model_id": MODEL_ID, "base_price_usd": price, "price_unit": "image", "pricing_note": note}
    return JSONResponse(q.success(state.quirks, body))


def _state(request: HTTPRequest) -> ServerState:
    return request.app.state.zlab


def _quirk_call(state: ServerState, endpoint: str) -> None:
    """A load balancer's 503 page or a rate limiter's 429 in front of the service (`html_503`, `rate_limit*`)."""
    quirks = state.quirks
    if not (quirks.html_503 or quirks.rate_limit or quirks.rate_limit_bare):
        return
    kind = q.decide_call(quirks, endpoint, state.quirk_draw())
    if kind is None:
        return
    state.stats.count_fault(kind)
    if kind == "html_503":
        raise _Refused(from_answer(q.html_503()))
    headers = {"Retry-After": f"{state.faults.retry_after:g}"} if kind == "rate_limited" else None
    raise _Refused(error(429, 429, "rate limited; back off and retry", headers=headers))


def _authorize(request: HTTPRequest, state: ServerState) -> str | None:
    """The caller's token hash, None when the server needs no token; refuses a missing or wrong token."""
    accepted = state.config.token_hashes
    if not accepted:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    digest = token_hash(token) if scheme.lower() == "bearer" and token else ""
    if not digest or not any(hmac.compare_digest(digest, known) for known in accepted):
        raise _Refused(from_answer(q.refused_token(state.quirks)))
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
    job.polls += 1
    if not_yet_visible(state.faults, job.polls, asyncio.get_running_loop().time() - job.created_mono):
        state.stats.count_fault("eventual_404")
        raise _Refused(error(404, 404001, f"no request {_short(request_id, 40)!r} (not visible yet: injected)"))
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
    _quirk_call(state, "submit")
    owner = _authorize(request, state)
    model_id = request.path_params["model_id"]
    if model_id != MODEL_ID:
        raise _Refused(error(404, 400001, f"unknown model {_short(model_id, 60)!r}; this server serves {MODEL_ID}"))
    body = await _read_body(request, state.config.max_body)
    fault = _fault(state, "submit")
    generation = _parse_input(body)
    quirks, faults = state.quirks, state.faults
    broke = q.balance_refusal(quirks, state.accepted)
    if broke is not None:
        raise _Refused(from_answer(broke))
    will_fail = decide_job(faults, state.draw())
    width, height = q.snapped(quirks, generation.width, generation.height)
    rendered = generation.replace(width=width, height=height) if quirks.snap > 1 else None
    request_id = odd_request_id(faults.odd_ids, new_request_id()) if faults.odd_ids else None
    if state.dialect is not None:
        request_id = dl.new_id(state.dialect)
    job = state.scheduler.submit(
        generation, owner, will_fail=will_fail, bad_output=faults.bad_output, request_id=request_id, render_as=rendered
    )
    state.accepted += 1
    answer = q.success(quirks, {"request_id": job.request_id, **_urls(str(request.base_url), job.request_id)})
    if state.dialect is not None:
        answer = dl.with_success_code(state.dialect, answer)
    if fault == "drop_submit_after":
        state.stats.count_fault(fault)
        return DroppedResponse(faults.drop_mode, json.dumps(answer).encode())
    if quirks.submit_5xx_after_accept and state.quirk_draw() < quirks.submit_5xx_after_accept:
        state.stats.count_fault("submit_5xx_after_accept")
        state.gateway_turn += 1
        return from_answer(q.gateway_error(state.gateway_turn - 1))
    return JSONResponse(answer)


def _json(state: ServerState, endpoint: str, body: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer, trickled one byte at a time when the `trickle` fault covers `endpoint`."""
    faults = state.faults
    if faults.trickle and endpoint in faults.trickle_on:
        state.stats.count_fault("trickle")
        return trickled(bytes(JSONResponse(body).body), faults.trickle, "application/json", status)
    return JSONResponse(body, status_code=status)


def _maybe_drop(state: ServerState, fault: CallFault | None, response: Response) -> Response:
    if fault != "drop_poll":
        return response
    state.stats.count_fault(fault)
    return DroppedResponse(state.faults.drop_mode, bytes(getattr(response, "body", b"")))


def _request_call(request: HTTPRequest, endpoint: str) -> tuple[ServerState, CallFault | None, Job]:
    """The common start of /status, /result and /cancel: count, authorize, draw a fault, find the job."""
    state = _state(request)
    state.stats.count_call(endpoint)
    _quirk_call(state, endpoint)
    owner = _authorize(request, state)
    fault = _fault(state, endpoint)
    return state, fault, _job(request, state, owner)


def _reply(state: ServerState, endpoint: str, reply: dl.Reply) -> Response:
    status, body = reply
    return Response(status_code=status) if body is None else _json(state, endpoint, body, status)


async def _status(request: HTTPRequest) -> Response:
    state, fault, job = _request_call(request, "status")
    if state.dialect is not None:
        position = state.scheduler.queue_position(job)
        return _maybe_drop(state, fault, _reply(state, "status", dl.status_answer(state.dialect, job.request_id,
                                                                                   job.state, position)))  # fmt: skip
    body = status_body(job, state.scheduler.queue_position(job), str(request.base_url), state.quirks)
    return _maybe_drop(state, fault, _json(state, "status", body))


async def _result(request: HTTPRequest) -> Response:
    state, fault, job = _request_call(request, "result")
    if state.dialect is not None:
        since = None if job.finished_mono is None else time.monotonic() - job.finished_mono
        reply = await dl.result_reply(state, job, output_url(str(request.base_url), job, state.quirks), since)
        return _maybe_drop(state, fault, _reply(state, "result", reply))
    early = q.not_ready(state.quirks, job.state)
    if early is not None:
        return _maybe_drop(state, fault, from_answer(early))
    with_cost = request.query_params.get("include_cost", "").lower() == "true"
    body = result_body(job, str(request.base_url), state.quirks, with_cost)
    return _maybe_drop(state, fault, _json(state, "result", body))


async def _cancel(request: HTTPRequest) -> Response:
    state, fault, job = _request_call(request, "cancel")
    if state.dialect is not None:
        return _maybe_drop(state, fault, _reply(state, "cancel", dl.cancel_reply(state, job)))
    quirks = state.quirks
    outcome = state.scheduler.cancel(job)
    if quirks.cancel_empty:
        return _maybe_drop(state, fault, Response(status_code=202))
    body = {
        "request_id": job.request_id,
        "status": q.status_word(quirks, job.state),
        "outcome": q.cancelled_word(quirks, outcome),
    }
    return _maybe_drop(state, fault, JSONResponse(q.success(quirks, body), status_code=202))


def _other_size(size: int) -> int:
    """A size still inside the schema's range but clearly not `size` (for the `wrong_size` fault)."""
    return size // 2 if size // 2 >= SIZE_RANGE[0] else size * 2


def _file_job(request: HTTPRequest, state: ServerState, route: str, request_id: str) -> Job:
    """The start of every file-host route: count, note a token sent where none belongs, find a live file."""
    state.stats.count_call(route)
    if "authorization" in request.headers:  # file hosts are not the API: a client must never send its token here
        state.stats.count_file_auth()
    job = state.scheduler.get(request_id)
    if job is None or job.state != "succeeded":
        raise _Refused(error(404, 404001, "no such file: unknown, unfinished or expired request"))
    if job.finished_mono is not None and file_expired(state.faults, time.monotonic() - job.finished_mono):
        state.stats.count_fault("file_expired")
        raise _Refused(error(404, 404, "the output URL has expired (injected); fetch the result again later"))
    return job


def _primary_base(request: HTTPRequest) -> str:
    """This server's base URL on the API's host name (undoing `second_host`)."""
    url = request.base_url
    return str(url.replace(hostname=q.second_host(url.hostname or "127.0.0.1")))


async def _cdn_file(request: HTTPRequest) -> Response:
    """The `redirect_files` URL, `/<seg>=/<seg>=/output/<id>_output.<ext>`: the first of two redirects."""
    request_id, _, ext = request.path_params["name"].rpartition("_output.")
    job = _file_job(request, _state(request), "file_redirect", request_id)
    location = f"{_primary_base(request)}redirect/{_quoted(job.request_id)}/image.{ext}"
    return RedirectResponse(location, status_code=302)


async def _redirect_hop(request: HTTPRequest) -> Response:
    """The second redirect, to the file itself (also the other half of the `redirect_loop` fault)."""
    job = _file_job(request, _state(request), "file_redirect", request.path_params["request_id"])
    location = f"{request.base_url}files/{_quoted(job.request_id)}/{request.path_params['name']}"
    return RedirectResponse(location, status_code=302)


async def _output_file(request: HTTPRequest) -> Response:
    state = _state(request)
    job = _file_job(request, state, "file", request.path_params["request_id"])
    name = request.path_params["name"]
    if name not in FILE_NAMES:
        return error(404, 404001, "no such file: unknown, unfinished or expired request")
    faults, quirks = state.faults, state.quirks
    fault = decide_file(faults, state.draw())
    if faults.file_delay:
        await asyncio.sleep(faults.file_delay)
    if fault is not None:
        state.stats.count_fault(fault)
        status_code = {"file_error": 500, "file_unavailable": 503, "file_missing": 404}[fault]
        return error(status_code, status_code, f"output file unavailable (injected {fault}); retry later")
    if faults.file_problem is not None:  # decided now, not at submit: clearing the fault heals this same job
        state.stats.count_fault(faults.file_problem)
        if faults.file_problem == "redirect_loop":
            return RedirectResponse(f"{request.base_url}redirect/{_quoted(job.request_id)}/{name}", status_code=302)
        if faults.file_problem == "html_200":
            return Response(synthetic.WRONG_TYPE_HTML, media_type="text/html; charset=utf-8")
        return Response(b"", media_type=q.media_type(quirks))
    kind, gen = job.bad_output, job.request
    if job.output is not None and kind is None:  # a Renderer made this job's image
        generic = quirks.generic_content_type
        return Response(job.output.data, media_type=q.media_type(quirks) if generic else job.output.media_type)
    if kind == "wrong_type":
        return Response(synthetic.WRONG_TYPE_HTML, media_type="text/html; charset=utf-8")
    if kind == "bomb":
        return Response(synthetic.bomb_png(), media_type="image/png")
    if kind == "wrong_size":
        gen = gen.replace(width=_other_size(gen.width), height=_other_size(gen.height))
    fmt = _FORMATS[name] if kind is None else "png"  # the malformed outputs are all PNG-based
    key = (job.request_id, kind == "wrong_size", fmt)
    data = await state.images.get(key, functools.partial(synthetic.render_bytes, gen, fmt))
    if kind == "truncated":
        return Response(data[: len(data) // 2], media_type="image/png")
    if kind == "oversized":  # streamed with no Content-Length: only a client-side size cap stops it
        return StreamingResponse(synthetic.oversized_png_chunks(data, faults.oversized_bytes), media_type="image/png")
    media = q.media_type(dataclasses.replace(quirks, file_format=fmt))
    if faults.trickle and "file" in faults.trickle_on:
        state.stats.count_fault("trickle")
        return trickled(data, faults.trickle, media)
    return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


_FORMATS: dict[str, q.FileFormat] = {f"image.{ext}": fmt for fmt, ext in q.EXTENSIONS.items()}


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
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(state: ServerState) -> Starlette:
    """The ASGI app for `state`; serve it with uvicorn (as `LocalServer` and `serve` do)."""
    routes = [
        Route("/v1/models/{model_id:path}", _submit, methods=["POST"]),
        Route("/v1/models/{model_id:path}", _model_info, methods=["GET"]),
        Route("/v1/requests/{request_id}/status", _status, methods=["GET"]),
        Route("/v1/requests/{request_id}/result", _result, methods=["GET"]),
        Route("/v1/requests/{request_id}/cancel", _cancel, methods=["POST"]),
        Route("/files/{request_id}/{name}", _output_file, methods=["GET"]),
        Route("/redirect/{request_id}/{name}", _redirect_hop, methods=["GET"]),
        Route("/{seg1}/{seg2}/output/{name}", _cdn_file, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.started()
        yield

    handlers = {_Refused: _refused, HTTPException: _http_error, Exception: _internal}
    app = _App(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.zlab = state
    return app
