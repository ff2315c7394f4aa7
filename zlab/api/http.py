"""The async HTTP layer for the RunComfy endpoints: auth, retries, deadlines, error mapping.

`API` is deliberately thin: it sends, classifies the fault, asks `zlab.core.retry` what to do, and
hands bodies to `zlab.core.protocol`. A 429 pauses every caller sharing this `API` (not just the one
that saw it), so a sweep of hundreds of cells backs off as one instead of hammering the service;
the pause is capped, and a longer Retry-After fails the call with a message saying how long the
service asked for. Every exchange has a total deadline (body included), so a trickling answer cannot
hold a call. Output files are not fetched here: `zlab.api.download` has its own client, without the token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from zlab import errors
from zlab.core import protocol
from zlab.core.config import Secret
from zlab.core.retry import SUBMIT_SAFE, Fault, RetryPolicy, backoff_s, should_retry

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=60.0)
PRICE_TIMEOUT_S = 10.0
ON_SEND = "zlab.on_send"  # a request extension: called by the gate right before the request leaves


@functools.cache
def tls() -> ssl.SSLContext:
    """The TLS context every client of this process shares: reading the CA bundle costs ~40 ms each time,
    and every `AsyncClient` has two HTTP clients (the API's and the downloads')."""
    return httpx.create_ssl_context()


class _Pause:
    """A pause every API call waits out before it is sent (set by a 429), shared by all callers."""

    def __init__(self) -> None:
        self.until = 0.0  # monotonic time

    def extend(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while (delay := self.until - time.monotonic()) > 0:
            await asyncio.sleep(delay)


class _Gate(httpx.AsyncBaseTransport):
    """Starts the pause the moment a 429 with a (bounded) Retry-After passes, right at the wire, and holds
    calls already waiting for a connection: no call leaves before the service said it may."""

    def __init__(self, inner: httpx.AsyncBaseTransport, pause: _Pause, max_wait_s: float) -> None:
        self.inner, self.pause, self.max_wait_s = inner, pause, max_wait_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self.pause.wait()
        on_send = request.extensions.get(ON_SEND)
        if on_send is not None:  # at the wire, after every pause: from here on the job may exist
            on_send()
        response = await self.inner.handle_async_request(request)
        if response.status_code == 429:
            retry_after = protocol.parse_retry_after(response.headers.get("Retry-After"))
            if retry_after and retry_after <= self.max_wait_s:
                self.pause.extend(retry_after)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class API:
    """Calls the service at `base_url`; every call has a deadline; the token never leaves the header."""

    def __init__(
        self,
        base_url: str,
        token: Secret | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        max_connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.calls: collections.Counter[str] = collections.Counter()  # per endpoint, for benchmarks
        # Status words zlab does not know, and the jobs that said them (followed as still going; the run
        # summary names each word once).
        self.unknown_words: dict[str, set[str]] = {}
        self._token = token
        self._pause = _Pause()
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # No auth on the client itself: the header is added per call. Redirects are not followed: an
        # API answer that redirects elsewhere must not carry the token there.
        inner = transport or httpx.AsyncHTTPTransport(verify=tls(), limits=limits)
        gate = _Gate(inner, self._pause, retry.max_retry_after_s)
        self._http = httpx.AsyncClient(transport=gate, timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:
        return f"<API {self.base_url} token={'set' if self._token else 'none'}>"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        model: str,
        payload: dict[str, Any],
        *,
        on_send: Callable[[], None] | None = None,
        on_unsent: Callable[[], None] | None = None,
    ) -> protocol.Submitted:
        """POST one job. `on_send` runs right before each attempt leaves (after any 429 pause), so a
        caller can record "this may now be billed" exactly when it becomes true; `on_unsent` runs when an
        attempt's answer proves no job was created (a 429, a connection never made), before any pause.

        Raises `SubmitUnknownError` when the job may exist but its id is not known (never resent here).
        """
        url = f"{self.base_url}/v1/models/{quote(model, safe='/')}"
        body = await self._call("submit", "POST", url, json_body=payload, on_send=on_send, on_unsent=on_unsent)
        try:
            return protocol.parse_submitted(body, self.base_url)
        except errors.ProtocolError as exc:
            raise errors.SubmitUnknownError(
                f"the service accepted the submit but its answer holds no usable request id ({exc}); the job may "
                "exist and be billed: zlab will not resend it on its own"
            ) from None

    async def status(self, request_id: str) -> protocol.Status:
        """/status; an unknown status word is a phase still going (noted in `unknown_words`)."""
        try:
            body = await self._call("status", "GET", self._url(request_id, "status"), request_id=request_id)
        except errors.NotReady:
            return protocol.Status("queued")
        status = protocol.parse_status(body, request_id)
        self._note(status.word, request_id)
        return status

    async def result(self, request_id: str) -> protocol.Outcome:
        """/result, asking for the cost too; "not ready" in any form (HTTP 200 in_queue/in_progress, an
        error with code 400005 or a `detail` saying so) comes back as an unfinished Outcome, and a failed
        job reported only as an HTTP error (a 422, a 500 naming the failure) as a failed one."""
        url = self._url(request_id, "result") + "?include_cost=true"
        try:
            body = await self._call("result", "GET", url, request_id=request_id, read_error=protocol.failed_result)
        except errors.NotReady:
            return protocol.not_ready(request_id)
        if isinstance(body, protocol.Outcome):
            return body
        outcome = protocol.parse_outcome(body, request_id)
        self._note(outcome.word, request_id)
        return outcome

    def _note(self, word: str | None, request_id: str) -> None:
        if word is not None and (word in self.unknown_words or len(self.unknown_words) < 32):
            self.unknown_words.setdefault(word, set()).add(request_id)

    async def cancel(self, request_id: str) -> protocol.CancelOutcome:
        """Ask to cancel; `cancelled`, `not_cancellable`, or `unknown` (e.g. an empty 202: ask /status)."""
        body = await self._call("cancel", "POST", self._url(request_id, "cancel"), request_id=request_id, empty_ok=True)
        return protocol.parse_cancel(body)

    async def price(self, model: str) -> protocol.Price | None:
        """The service's own price for `model`, or None if it does not say (never raises, never waits long)."""
        url = f"{self.base_url}/v1/models/{quote(model, safe='/')}"
        headers = self._headers()
        try:
            async with asyncio.timeout(PRICE_TIMEOUT_S):
                response = await self._http.get(url, headers=headers)
        except (httpx.HTTPError, TimeoutError):
            return None
        self.calls["price"] += 1
        body = _json_or_none(response)
        return None if protocol.is_error(response.status_code, body) else protocol.parse_price(body)

    def _url(self, request_id: str, what: str) -> str:
        return f"{self.base_url}/v1/requests/{protocol.quote_id(request_id)}/{what}"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        return headers

    async def _call(
        self,
        name: str,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        request_id: str | None = None,
        on_send: Callable[[], None] | None = None,
        empty_ok: bool = False,
        read_error: Callable[[int, Any], Any] | None = None,
        on_unsent: Callable[[], None] | None = None,
    ) -> Any:
        """One call with its retries. For a submit, once the body may have left, every failure but a 429 or
        a connection never made is a `SubmitUnknownError` (never resent here), whatever raised it."""
        is_submit = name == "submit"
        try:
            hooks = (on_send, on_unsent)
            return await self._attempts(name, method, url, json_body, request_id, hooks, empty_ok, read_error)
        except _NotSent as exc:  # the caller's record failed before anything left: its own error, as is
            raise exc.cause from None
        except (errors.ZlabError, asyncio.CancelledError):
            raise
        except Exception as exc:  # anything else (a parser's RecursionError, a library bug) after sending
            if is_submit:
                raise self._lost(name, exc, request_id) from exc
            raise errors.TransportError(f"{name} for request {request_id} failed: {type(exc).__name__}") from exc

    async def _attempts(
        self,
        name: str,
        method: str,
        url: str,
        json_body: Any,
        request_id: str | None,
        hooks: tuple[Callable[[], None] | None, Callable[[], None] | None],
        empty_ok: bool,
        read_error: Callable[[int, Any], Any] | None,
    ) -> Any:
        is_submit = name == "submit"
        on_send, on_unsent = hooks
        deadline = time.monotonic() + self.retry.total_s(is_submit)
        headers = self._headers()
        attempt = 0
        while True:
            attempt += 1
            await self._pause.wait()
            self.calls[name] += 1
            fault: Fault | None
            failure: errors.ZlabError
            retry_after: float | None = None
            extensions = {ON_SEND: _guarded(on_send)} if on_send is not None else {}
            try:
                async with asyncio.timeout(self.retry.exchange_s(is_submit)):
                    response = await self._http.request(
                        method, url, json=json_body, headers=headers, extensions=extensions
                    )
            except _NotSent:  # recording "submitting" failed: nothing left, nothing may be billed
                raise
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                fault, failure = "connect", errors.TransportError(f"could not connect to {self.base_url}: {exc}")
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, TimeoutError) as exc:
                fault, failure = "lost", self._lost(name, exc, request_id)
            else:
                body = _json_or_none(response)
                if (
                    is_submit
                    and response.is_success
                    and isinstance(body, dict)
                    and body.get("request_id") not in (None, "")
                ):
                    return body  # a 2xx naming a request id: the job exists, whatever else the body says
                if read_error is not None and (read := read_error(response.status_code, body)) is not None:
                    return read
                error = protocol.error_from_answer(
                    response.status_code, body, request_id=request_id, retry_after=response.headers.get("Retry-After")
                )
                if error is None:
                    if isinstance(body, dict) or (empty_ok and not response.content.strip()):
                        return body
                    # A 2xx whose body cannot be read: for a submit the job may exist (unknown outcome).
                    fault = "lost"
                    unreadable = ValueError(f"HTTP {response.status_code} with no JSON object")
                    failure = self._lost(name, unreadable, request_id)
                else:
                    fault, failure = _fault_of(response.status_code, error), error
                    if isinstance(error, errors.RateLimitedError):
                        retry_after = error.retry_after
                    if is_submit and fault is not None and not should_retry(fault, is_submit=True):
                        failure = self._unknown(error)
            if is_submit and fault in SUBMIT_SAFE and on_unsent is not None:
                with contextlib.suppress(Exception):  # only a record: failing leaves the cell "maybe sent" (safe)
                    on_unsent()
            if fault is None or not should_retry(fault, is_submit=is_submit) or attempt >= self.retry.attempts:
                raise failure
            if retry_after is not None and retry_after > self.retry.max_retry_after_s:
                raise errors.RateLimitedError(
                    f"the service asked zlab to wait {retry_after:.0f} s before calling again (Retry-After), longer "
                    f"than zlab waits ({self.retry.max_retry_after_s:.0f} s): try again later",
                    retry_after=retry_after,
                    status_code=429,
                    request_id=request_id,
                )
            wait = backoff_s(self.retry, attempt, fault, retry_after)
            if time.monotonic() + wait > deadline:
                raise failure
            if fault == "rate_limited":  # everyone sharing this API waits, not only this caller
                self._pause.extend(wait)
            else:
                await asyncio.sleep(wait)

    def _lost(self, name: str, exc: Exception, request_id: str | None) -> errors.TransportError:
        if name == "submit":
            return errors.SubmitUnknownError(
                f"the submit was sent but its answer was lost ({type(exc).__name__}): the job may exist and be "
                "billed; zlab will not resend it on its own (a sweep records the cell as 'unknown')"
            )
        return errors.TransportError(f"{name} for request {request_id} failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def _unknown(error: errors.APIError) -> errors.SubmitUnknownError:
        return errors.SubmitUnknownError(
            f"the submit's answer was an error after the body was sent ({error}): the job may exist and be billed; "
            "zlab will not resend it on its own (a sweep records the cell as 'unknown')"
        )


def _fault_of(status_code: int, error: errors.APIError) -> Fault | None:
    """Which passing fault an error answer is, or None when retrying cannot help (auth, balance, input)."""
    if isinstance(error, errors.RateLimitedError):
        return "rate_limited"
    by_status: dict[int, Fault] = {500: "server_error", 503: "unavailable", 502: "gateway", 504: "gateway"}
    if status_code in by_status:
        return by_status[status_code]
    if isinstance(error, errors.ServerError):  # another 5xx, or a 5xxxxx code with HTTP 200
        return "server_error"
    return None


class _NotSent(Exception):
    """The caller's "about to send" record failed at the wire: the request was not sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _guarded(on_send: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        try:
            on_send()
        except Exception as exc:
            raise _NotSent(exc) from exc

    return call


def _json_or_none(response: httpx.Response) -> Any:
    """The body as JSON, or None for anything Python's parser refuses (not JSON, bad UTF-8, nesting too
    deep for the parser, a number too long to convert)."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return None
