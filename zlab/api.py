"""The async HTTP layer for the four RunComfy endpoints: auth, retries, error mapping.

`API` is deliberately thin: it sends, classifies the fault, asks `zlab.retry` what to do, and
hands bodies to `zlab.protocol`. A 429 pauses every caller sharing this `API` (not just the one
that saw it), so a sweep of hundreds of cells backs off as one instead of hammering the service.
The pause lives in the transport (`_Gate`), right at the wire: it closes the moment a 429 arrives
and holds every later API call, including ones already waiting for a connection.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any
from urllib.parse import quote

import httpx

from zlab import errors, protocol
from zlab.config import Secret
from zlab.retry import Fault, RetryPolicy, backoff_s, should_retry

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=60.0)


class _Gate(httpx.AsyncBaseTransport):
    """Holds calls to the API while a pause runs; a 429 with Retry-After starts one as it passes."""

    def __init__(self, inner: httpx.AsyncBaseTransport, base_url: str) -> None:
        self.inner, self.base_url = inner, base_url
        self.closed_until = 0.0  # monotonic time

    def close_for(self, seconds: float) -> None:
        self.closed_until = max(self.closed_until, time.monotonic() + seconds)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(self.base_url):  # output files live elsewhere (a CDN): not held
            while (delay := self.closed_until - time.monotonic()) > 0:
                await asyncio.sleep(delay)
        response = await self.inner.handle_async_request(request)
        if response.status_code == 429:
            retry_after = protocol.parse_retry_after(response.headers.get("Retry-After"))
            if retry_after:
                self.close_for(retry_after)
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
        self._token = token
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._gate = _Gate(transport or httpx.AsyncHTTPTransport(limits=limits), self.base_url)
        # No auth on the client itself: the header is added per call, so output downloads never carry it.
        self._http = httpx.AsyncClient(transport=self._gate, timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:
        return f"<API {self.base_url} token={'set' if self._token else 'none'}>"

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, model: str, payload: dict[str, Any]) -> protocol.Submitted:
        url = f"{self.base_url}/v1/models/{quote(model, safe='/')}"
        body = await self._call("submit", "POST", url, json_body=payload)
        return protocol.parse_submitted(body, self.base_url)

    async def status(self, request_id: str) -> protocol.Status:
        body = await self._call("status", "GET", self._url(request_id, "status"), request_id=request_id)
        return protocol.parse_status(body, request_id)

    async def result(self, request_id: str) -> protocol.Outcome:
        body = await self._call("result", "GET", self._url(request_id, "result"), request_id=request_id)
        return protocol.parse_outcome(body, request_id)

    async def cancel(self, request_id: str) -> str:
        """Ask to cancel; returns the outcome (`cancelled` or `not_cancellable`)."""
        body = await self._call("cancel", "POST", self._url(request_id, "cancel"), request_id=request_id)
        return str(body.get("outcome") or body.get("status") or "unknown")

    def _url(self, request_id: str, what: str) -> str:
        return f"{self.base_url}/v1/requests/{quote(protocol.check_request_id(request_id), safe='')}/{what}"

    async def _call(
        self, name: str, method: str, url: str, *, json_body: Any = None, request_id: str | None = None
    ) -> dict[str, Any]:
        is_submit = name == "submit"
        deadline = time.monotonic() + self.retry.deadline_s
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        attempt = 0
        while True:
            attempt += 1
            self.calls[name] += 1
            fault: Fault | None
            failure: errors.ZlabError
            retry_after: float | None = None
            try:
                response = await self._http.request(method, url, json=json_body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                fault, failure = "connect", errors.TransportError(f"could not connect to {self.base_url}: {exc}")
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                fault, failure = "lost", self._lost(name, exc, request_id)
            else:
                body = _json_or_none(response)
                error = protocol.error_from_answer(
                    response.status_code, body, request_id=request_id, retry_after=response.headers.get("Retry-After")
                )
                if error is None:
                    if not isinstance(body, dict):
                        raise errors.ProtocolError(f"{name} answered HTTP {response.status_code} with no JSON object")
                    return body
                fault, failure = _fault_of(response.status_code, error), error
                if isinstance(error, errors.RateLimitedError):
                    retry_after = error.retry_after
            if fault is None or not should_retry(fault, is_submit=is_submit) or attempt >= self.retry.attempts:
                raise failure
            wait = backoff_s(self.retry, attempt, fault, retry_after)
            if time.monotonic() + wait > deadline:
                raise failure
            if fault == "rate_limited":  # everyone sharing this API waits, not only this caller
                self._gate.close_for(wait)
            await asyncio.sleep(wait)

    def _lost(self, name: str, exc: Exception, request_id: str | None) -> errors.TransportError:
        if name == "submit":
            return errors.SubmitUnknownError(
                f"the submit was sent but its answer was lost ({type(exc).__name__}): the job may exist and be "
                "billed; zlab will not resend it on its own (a sweep records the cell as 'unknown')"
            )
        return errors.TransportError(f"{name} for request {request_id} failed: {type(exc).__name__}: {exc}")


def _fault_of(status_code: int, error: errors.APIError) -> Fault | None:
    """Which passing fault an error answer is, or None when retrying cannot help (auth, balance, input)."""
    by_code: dict[int, Fault] = {
        429: "rate_limited",
        500: "server_error",
        503: "unavailable",
        502: "gateway",
        504: "gateway",
    }
    if status_code in by_code:
        return by_code[status_code]
    # An `error_code` body with HTTP 200: the service answered and did not do the work; retry unless
    # the code says retrying cannot help.
    if status_code < 400 and type(error) in (errors.APIError, errors.ServerError):
        return "server_error"
    return None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
